"""Event-based MR sequences for the isochromat simulator, and 2D Cartesian imaging builders.

A sequence is a list of blocks played back to back, as in Pulseq: each block holds at most one
RF pulse, one gradient per axis and one ADC, and lasts ``duration`` seconds. Units: seconds,
T/m, RF waveforms as ``gamma * B1`` in rad/s, phases in rad, frequencies in Hz.

Timing conventions (Pulseq's):

- ADC sample ``k`` of an event with delay ``d`` and dwell ``dt`` is taken ``d + (k + 1/2) dt``
  after its block starts.
- A waveform sample ``i`` on raster ``dt`` covers ``[delay + i dt, delay + (i + 1) dt)``.
- A one-sample RF waveform is a hard pulse: the simulator applies it as an instantaneous
  rotation ``Rz(phi) Rx(a) Rz(-phi)`` at its centre (a = |waveform| x duration).

k-space ordering: the builders take one readout per phase-encoding line, sample ``x`` of the
readout at ``kx = (x - nx/2) / fov_x`` and line ``y`` at ``ky = (y - ny/2) / fov_y``, so
``bloch.to_kspace`` gives the centred ``(x, y, coils)`` layout that ``tasks.mr.fft.ifft2c``
expects. ``Sequence.lines`` records the line of each ADC event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tasks.errors import InputError

GAMMA_HZ = 42.577478518e6
"""Proton gyromagnetic ratio over 2 pi, Hz/T."""
GAMMA = 2 * math.pi * GAMMA_HZ
"""Proton gyromagnetic ratio, rad/s/T."""

# Pulseq's default rasters (seconds); the builders put every event on them.
GRAD_RASTER = 1e-5
RF_RASTER = 1e-6
ADC_RASTER = 1e-7
BLOCK_RASTER = 1e-5

MAX_MATRIX = 4096
"""Most voxels, readout samples or lines along one side: twice the finest clinical 2D matrix."""
MAX_DUMMY_SCANS = 10_000
"""Most dummy TRs: 50 s at TR 5 ms, 25 T1s of white matter, past any steady state."""

RF_SPOIL_INCREMENT = math.radians(117.0)
"""Quadratic RF-spoiling phase increment (Zur et al. 1991)."""


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class RF:
    """An RF pulse: a complex waveform on a raster, piecewise constant."""

    waveform: np.ndarray
    """``gamma * B1`` in rad/s, complex, shape (n,); one sample means a hard pulse."""
    raster: float
    """Duration of each waveform sample, s."""
    delay: float = 0.0
    """Start after the block starts, s."""
    phase: float = 0.0
    """Phase offset added to the waveform's phase, rad (0 puts B1 along +x)."""
    freq_offset: float = 0.0
    """Frequency offset, Hz; the phase advances as ``2 pi f (t - delay)``."""

    def __post_init__(self) -> None:
        waveform = np.atleast_1d(np.asarray(self.waveform, dtype=np.complex128))
        if waveform.ndim != 1 or waveform.size == 0 or not np.all(np.isfinite(waveform)):
            raise InputError(f"RF waveform has shape {waveform.shape}; expected finite (n >= 1,)")
        if not self.raster > 0 or not self.delay >= 0:
            raise InputError(
                f"RF raster={self.raster}, delay={self.delay}; expected raster > 0, delay >= 0"
            )
        object.__setattr__(self, "waveform", waveform)

    @classmethod
    def hard(
        cls, flip: float, phase: float = 0.0, duration: float = 1e-4, delay: float = 0.0
    ) -> RF:
        """A rectangular pulse: ``flip`` rad about ``(cos phase, sin phase, 0)``."""
        if not duration > 0:
            raise InputError(f"hard pulse duration={duration}; expected > 0 s")
        return cls(waveform=np.array([flip / duration]), raster=duration, delay=delay, phase=phase)

    @property
    def is_hard(self) -> bool:
        """Whether the simulator applies this pulse as one instantaneous rotation."""
        return self.waveform.size == 1 and self.freq_offset == 0

    @property
    def flip(self) -> float:
        """Flip angle of a hard pulse (or the area of a shaped one), rad."""
        return float(abs(self.waveform.sum()) * self.raster)

    @property
    def duration(self) -> float:
        """Delay plus waveform length, s."""
        return self.delay + self.waveform.size * self.raster


@dataclass(frozen=True, kw_only=True, slots=True)
class Trapezoid:
    """A trapezoidal gradient on one axis."""

    amplitude: float
    """Flat-top amplitude, T/m."""
    rise: float
    """Ramp-up time, s."""
    flat: float
    """Flat-top time, s."""
    fall: float
    """Ramp-down time, s."""
    delay: float = 0.0
    """Start after the block starts, s."""

    def __post_init__(self) -> None:
        if min(self.rise, self.flat, self.fall, self.delay) < 0:
            raise InputError(f"trapezoid {self}; expected non-negative times")

    @property
    def duration(self) -> float:
        """Delay plus ramps and flat top, s."""
        return self.delay + self.rise + self.flat + self.fall

    @property
    def area(self) -> float:
        """Gradient moment, T s/m."""
        return self.amplitude * (self.rise / 2 + self.flat + self.fall / 2)

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """Piecewise-linear breakpoints: times (s) and amplitudes (T/m)."""
        t0 = self.delay
        times = np.array([0, self.rise, self.rise + self.flat, self.rise + self.flat + self.fall])
        return t0 + times, np.array([0.0, self.amplitude, self.amplitude, 0.0])


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Waveform:
    """An arbitrary gradient on one axis, sampled at raster centres, linear in between."""

    samples: np.ndarray
    """Amplitude at ``delay + (i + 1/2) raster``, T/m, shape (n,); held over the end halves."""
    raster: float = GRAD_RASTER
    """Sample spacing, s."""
    delay: float = 0.0
    """Start after the block starts, s."""

    def __post_init__(self) -> None:
        samples = np.atleast_1d(np.asarray(self.samples, dtype=np.float64))
        if samples.ndim != 1 or samples.size == 0 or not np.all(np.isfinite(samples)):
            raise InputError(f"gradient waveform has shape {samples.shape}; expected finite (n,)")
        if not self.raster > 0 or not self.delay >= 0:
            raise InputError(
                f"gradient raster={self.raster}, delay={self.delay}; expected > 0 and >= 0"
            )
        object.__setattr__(self, "samples", samples)

    @property
    def duration(self) -> float:
        """Delay plus ``n`` rasters, s."""
        return self.delay + self.samples.size * self.raster

    @property
    def area(self) -> float:
        """Gradient moment, T s/m (``raster * sum(samples)``)."""
        return float(self.samples.sum() * self.raster)

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """Piecewise-linear breakpoints: times (s) and amplitudes (T/m)."""
        n = self.samples.size
        centres = self.delay + (np.arange(n) + 0.5) * self.raster
        times = np.concatenate([[self.delay], centres, [self.delay + n * self.raster]])
        values = np.concatenate([self.samples[:1], self.samples, self.samples[-1:]])
        return times, values


Gradient = Trapezoid | Waveform


@dataclass(frozen=True, kw_only=True, slots=True)
class ADC:
    """An ADC event: ``samples`` points ``dwell`` apart."""

    samples: int
    """Number of samples."""
    dwell: float
    """Sample spacing, s."""
    delay: float = 0.0
    """Start of the first dwell interval after the block starts, s."""
    phase: float = 0.0
    """Receiver phase, rad: the sampled magnetisation is multiplied by ``exp(-i phase)``."""
    freq_offset: float = 0.0
    """Receiver frequency offset, Hz: demodulation by ``exp(-2 pi i f (t - delay))``."""

    def __post_init__(self) -> None:
        if self.samples < 1 or not self.dwell > 0 or not self.delay >= 0:
            raise InputError(
                f"ADC samples={self.samples}, dwell={self.dwell}, delay={self.delay}; "
                "expected samples >= 1, dwell > 0, delay >= 0"
            )

    @property
    def duration(self) -> float:
        """Delay plus ``samples * dwell``, s."""
        return self.delay + self.samples * self.dwell

    def times(self) -> np.ndarray:
        """Sample times after the block starts, s, shape (samples,)."""
        return self.delay + (np.arange(self.samples) + 0.5) * self.dwell


@dataclass(frozen=True, kw_only=True, slots=True)
class Block:
    """One sequence block; with no events it is a delay."""

    duration: float | None = None
    """Block length, s; None takes the longest event."""
    rf: RF | None = None
    """RF pulse, if any."""
    gx: Gradient | None = None
    """Readout-axis gradient, if any."""
    gy: Gradient | None = None
    """Phase-encoding-axis gradient, if any."""
    gz: Gradient | None = None
    """Slice-axis gradient, if any."""
    adc: ADC | None = None
    """ADC event, if any."""
    spoil: bool = False
    """Ideal spoiling: the transverse magnetisation is set to zero at the end of the block."""

    def __post_init__(self) -> None:
        longest = max((event.duration for event in self.events()), default=0.0)
        if self.duration is None:
            object.__setattr__(self, "duration", longest)
        elif not self.duration >= longest - 1e-12:
            raise InputError(
                f"block duration={self.duration} s is shorter than its events ({longest} s)"
            )

    def events(self) -> list[RF | Gradient | ADC]:
        """The events present, RF first."""
        return [e for e in (self.rf, self.gx, self.gy, self.gz, self.adc) if e is not None]

    @property
    def gradients(self) -> tuple[Gradient | None, Gradient | None, Gradient | None]:
        """``(gx, gy, gz)``."""
        return self.gx, self.gy, self.gz


@dataclass(kw_only=True, slots=True, eq=False)
class Sequence:
    """A pulse sequence and how its ADC samples map to Cartesian k-space."""

    blocks: list[Block]
    """The blocks, in playing order."""
    fov: tuple[float, float, float] | None = None
    """Field of view ``(x, y, slice thickness)``, m."""
    matrix: tuple[int, int] | None = None
    """Cartesian matrix ``(nx, ny)``: readout samples and phase-encoding lines."""
    lines: tuple[int, ...] | None = None
    """Phase-encoding line of each ADC event, in order; None means in order 0, 1, ..."""
    name: str = "sequence"
    """Short name written to ``.seq`` files."""
    parameters: dict[str, float | str] = field(default_factory=dict)
    """Protocol values for headers and logs (``te``, ``tr``, ``ti`` in s, ``flip_deg``,
    ``spoil``)."""

    @property
    def adc_events(self) -> list[ADC]:
        """ADC events in order."""
        return [b.adc for b in self.blocks if b.adc is not None]

    @property
    def adc_samples(self) -> int:
        """Total ADC samples, the simulator's ``Nadc``."""
        return sum(adc.samples for adc in self.adc_events)

    @property
    def duration(self) -> float:
        """Total length, s."""
        return float(sum(b.duration for b in self.blocks))  # type: ignore[misc]

    @property
    def dwell(self) -> float | None:
        """The first ADC event's dwell, s."""
        events = self.adc_events
        return events[0].dwell if events else None


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Gradient hardware limits used to time the builders' trapezoids."""

    max_grad: float = 30e-3
    """Largest gradient amplitude, T/m."""
    max_slew: float = 150.0
    """Largest slew rate, T/m/s."""


# --- builders -------------------------------------------------------------------------------


def rf_spoil_phases(count: int, increment: float = RF_SPOIL_INCREMENT) -> np.ndarray:
    """Quadratic RF-spoiling phases ``phi_n = increment * n (n + 1) / 2`` mod 2 pi, rad."""
    n = np.arange(count, dtype=np.float64)
    return np.mod(increment * n * (n + 1) / 2, 2 * np.pi)


def gre(
    *,
    fov: tuple[float, float] = (0.256, 0.256),
    matrix: tuple[int, int] = (64, 64),
    tr: float = 10e-3,
    te: float = 4e-3,
    flip_deg: float = 15.0,
    dwell: float = 10e-6,
    spoil: Literal["rf", "ideal", "none"] = "rf",
    spoiler_cycles: float = 4.0,
    dummy_scans: int = 0,
    rf_duration: float = 1e-4,
    thickness: float = 5e-3,
    limits: Limits = Limits(),
) -> Sequence:
    """2D Cartesian gradient echo, one line per TR.

    Args:
        fov: Field of view ``(x, y)``, m.
        matrix: ``(nx, ny)`` readout samples and phase-encoding lines.
        tr: Repetition time, s.
        te: Echo time from the pulse centre to the k-space centre sample, s.
        flip_deg: Flip angle, degrees.
        dwell: ADC dwell, s.
        spoil: ``"rf"``: quadratic 117-degree RF spoiling (ADC phase follows) plus a
            readout-axis spoiler of ``spoiler_cycles`` per voxel; ``"ideal"``: transverse
            magnetisation zeroed at the end of each TR (no Pulseq form); ``"none"``.
        spoiler_cycles: Spoiler moment in cycles across one voxel.
        dummy_scans: TRs without ADC played first, to approach the steady state.
        rf_duration: Hard pulse length, s.
        thickness: Slice thickness recorded in ``fov``, m.
        limits: Gradient limits.
    """
    plan = _Plan.make(fov, matrix, dwell, tr, rf_duration, thickness, limits)
    flip = _flip(flip_deg)
    if spoil not in ("rf", "ideal", "none"):
        raise InputError(f"spoil={spoil!r}; expected 'rf', 'ideal' or 'none'")
    total = dummy_scans + plan.ny
    phases = rf_spoil_phases(total) if spoil == "rf" else np.zeros(total)
    spoiler = spoiler_cycles / (GAMMA_HZ * plan.fov[0] / plan.nx) if spoil == "rf" else 0.0
    blocks: list[Block] = []
    for n, line in enumerate(_schedule(dummy_scans, plan.ny)):
        blocks.append(Block(rf=RF.hard(flip, phases[n], rf_duration)))
        blocks += plan.encode(
            start=rf_duration,
            echo=rf_duration / 2 + te,
            line=line,
            phase=phases[n],
            spoiler=spoiler,
            ideal=spoil == "ideal",
        )
    return plan.sequence(blocks, "gre", te=te, flip_deg=flip_deg, spoil=spoil)


def bssfp(
    *,
    fov: tuple[float, float] = (0.256, 0.256),
    matrix: tuple[int, int] = (64, 64),
    tr: float = 8e-3,
    flip_deg: float = 30.0,
    dwell: float = 10e-6,
    dummy_scans: int = 0,
    rf_duration: float = 1e-4,
    thickness: float = 5e-3,
    limits: Limits = Limits(),
) -> Sequence:
    """2D Cartesian balanced SSFP: RF phase alternating 0/180 degrees, TE = TR/2.

    Every gradient moment is rewound within the TR. Arguments as in ``gre``.
    """
    plan = _Plan.make(fov, matrix, dwell, tr, rf_duration, thickness, limits)
    flip = _flip(flip_deg)
    blocks: list[Block] = []
    te = tr / 2
    for n, line in enumerate(_schedule(dummy_scans, plan.ny)):
        phase = math.pi * (n % 2)
        blocks.append(Block(rf=RF.hard(flip, phase, rf_duration)))
        echo = rf_duration / 2 + te
        blocks += plan.encode(start=rf_duration, echo=echo, line=line, phase=phase, balanced=True)
    return plan.sequence(blocks, "bssfp", te=te, flip_deg=flip_deg)


def spin_echo(
    *,
    fov: tuple[float, float] = (0.256, 0.256),
    matrix: tuple[int, int] = (64, 64),
    tr: float = 500e-3,
    te: float = 20e-3,
    dwell: float = 10e-6,
    spoil: Literal["ideal", "gradient", "none"] = "gradient",
    spoiler_cycles: float = 4.0,
    dummy_scans: int = 0,
    rf_duration: float = 1e-4,
    thickness: float = 5e-3,
    limits: Limits = Limits(),
) -> Sequence:
    """2D Cartesian spin echo: 90x - TE/2 - 180y - TE/2 - echo, one line per TR.

    The readout prephaser and phase encoding follow the 180; ``spoil`` acts at the end of the
    TR (``"gradient"``: a readout-axis spoiler). Other arguments as in ``gre``.
    """
    plan = _Plan.make(fov, matrix, dwell, tr, rf_duration, thickness, limits)
    _check_spoil(spoil)
    gap = _on_raster(te / 2 - rf_duration, BLOCK_RASTER, "te / 2 - rf_duration")
    if gap < 0:
        raise InputError(f"te={te} s; expected at least {2 * rf_duration} s (two pulse lengths)")
    spoiler = spoiler_cycles / (GAMMA_HZ * plan.fov[0] / plan.nx) if spoil == "gradient" else 0.0
    blocks: list[Block] = []
    for line in _schedule(dummy_scans, plan.ny):
        blocks.append(Block(rf=RF.hard(math.pi / 2, 0.0, rf_duration)))
        if gap > 0:
            blocks.append(Block(duration=gap))
        blocks.append(Block(rf=RF.hard(math.pi, math.pi / 2, rf_duration)))
        start = rf_duration + gap + rf_duration
        echo = rf_duration / 2 + te
        blocks += plan.encode(
            start=start, echo=echo, line=line, phase=0.0, spoiler=spoiler, ideal=spoil == "ideal"
        )
    return plan.sequence(blocks, "spin_echo", te=te, flip_deg=90.0, spoil=spoil)


def inversion_recovery(
    *,
    fov: tuple[float, float] = (0.256, 0.256),
    matrix: tuple[int, int] = (64, 64),
    tr: float = 3.0,
    ti: float = 0.3,
    te: float = 4e-3,
    flip_deg: float = 90.0,
    dwell: float = 10e-6,
    spoil: Literal["ideal", "gradient", "none"] = "gradient",
    spoiler_cycles: float = 4.0,
    dummy_scans: int = 0,
    rf_duration: float = 1e-4,
    thickness: float = 5e-3,
    limits: Limits = Limits(),
) -> Sequence:
    """2D Cartesian inversion recovery: 180x - TI - excitation - gradient-echo readout per TR.

    TI runs from the inversion centre to the excitation centre; TE from the excitation centre
    to the k-space centre; TR from one inversion to the next. A readout-axis spoiler follows the
    inversion, and ``spoil`` acts at the end of the TR. Other arguments as in ``gre``.
    """
    plan = _Plan.make(fov, matrix, dwell, tr, rf_duration, thickness, limits)
    flip = _flip(flip_deg)
    _check_spoil(spoil)
    wait = _on_raster(ti - rf_duration, BLOCK_RASTER, "ti - rf_duration")
    voxel_cycle = 1 / (GAMMA_HZ * plan.fov[0] / plan.nx)
    crusher = _trapezoid(spoiler_cycles * voxel_cycle, limits) if spoiler_cycles > 0 else None
    if wait < 0 or (crusher is not None and wait < crusher.duration):
        least = rf_duration + (crusher.duration if crusher else 0.0)
        raise InputError(f"ti={ti} s; expected at least {least:.6g} s (pulse plus spoiler)")
    spoiler = spoiler_cycles * voxel_cycle if spoil == "gradient" else 0.0
    blocks: list[Block] = []
    for line in _schedule(dummy_scans, plan.ny):
        blocks.append(Block(rf=RF.hard(math.pi, 0.0, rf_duration)))
        if wait > 0:
            blocks.append(Block(duration=wait, gx=crusher))
        blocks.append(Block(rf=RF.hard(flip, 0.0, rf_duration)))
        start = rf_duration + wait + rf_duration
        echo = rf_duration + wait + rf_duration / 2 + te
        blocks += plan.encode(
            start=start, echo=echo, line=line, phase=0.0, spoiler=spoiler, ideal=spoil == "ideal"
        )
    return plan.sequence(blocks, "inversion_recovery", te=te, ti=ti, flip_deg=flip_deg, spoil=spoil)


# --- builder internals ----------------------------------------------------------------------


def _schedule(dummy_scans: int, ny: int) -> list[int | None]:
    if not 0 <= dummy_scans <= MAX_DUMMY_SCANS:
        raise InputError(f"dummy_scans={dummy_scans}; expected 0 to {MAX_DUMMY_SCANS}")
    return [None] * dummy_scans + list(range(ny))


def _check_spoil(spoil: str) -> None:
    if spoil not in ("ideal", "gradient", "none"):
        raise InputError(f"spoil={spoil!r}; expected 'ideal', 'gradient' or 'none'")


def _flip(flip_deg: float) -> float:
    if not 0 < flip_deg <= 180:
        raise InputError(f"flip_deg={flip_deg}; expected 0 < flip_deg <= 180")
    return math.radians(flip_deg)


def _on_raster(value: float, raster: float, what: str) -> float:
    """``value`` snapped to ``raster``; InputError if it is not on it (within 1 ns)."""
    units = round(value / raster)
    if abs(units * raster - value) > 1e-9:
        raise InputError(f"{what}={value} s is not a multiple of {raster} s")
    return units * raster


def _ceil(value: float, raster: float) -> float:
    return math.ceil(value / raster - 1e-9) * raster


def _floor(value: float, raster: float) -> float:
    return math.floor(value / raster + 1e-9) * raster


def _trapezoid_timing(area: float, limits: Limits) -> tuple[float, float]:
    """Shortest (rise, flat) on the gradient raster for a moment ``|area|`` (T s/m)."""
    area = abs(area)
    rise = _ceil(limits.max_grad / limits.max_slew, GRAD_RASTER)
    if area <= limits.max_grad * rise:  # triangle (or short trapezoid)
        rise = max(_ceil(math.sqrt(area / limits.max_slew), GRAD_RASTER), GRAD_RASTER)
        return rise, 0.0
    return rise, _ceil(area / limits.max_grad - rise, GRAD_RASTER)


def _trapezoid(area: float, limits: Limits, timing: tuple[float, float] | None = None) -> Trapezoid:
    rise, flat = timing or _trapezoid_timing(area, limits)
    return Trapezoid(amplitude=area / (rise + flat), rise=rise, flat=flat, fall=rise)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Geometry and timing shared by the builders."""

    fov: tuple[float, float, float]
    nx: int
    ny: int
    dwell: float
    tr: float
    rf_duration: float
    limits: Limits
    readout: float  # readout amplitude, T/m

    @classmethod
    def make(
        cls,
        fov: tuple[float, float],
        matrix: tuple[int, int],
        dwell: float,
        tr: float,
        rf_duration: float,
        thickness: float,
        limits: Limits,
    ) -> _Plan:
        if len(fov) != 2 or min(fov) <= 0:
            raise InputError(f"fov={fov}; expected (x, y) in m, both > 0")
        if len(matrix) != 2 or not 1 <= min(matrix) <= max(matrix) <= MAX_MATRIX:
            raise InputError(f"matrix={matrix}; expected (nx, ny), both 1 to {MAX_MATRIX}")
        if not dwell > 0:
            raise InputError(f"dwell={dwell}; expected > 0 s")
        _on_raster(dwell, ADC_RASTER, "dwell")
        _on_raster(tr, BLOCK_RASTER, "tr")
        _on_raster(rf_duration, BLOCK_RASTER, "rf_duration")
        readout = 1 / (GAMMA_HZ * fov[0] * dwell)
        if readout > limits.max_grad:
            raise InputError(
                f"fov x={fov[0]} m with dwell={dwell} s needs a {readout * 1e3:.3g} mT/m readout; "
                f"expected at most max_grad={limits.max_grad * 1e3:.3g} mT/m (longer dwell or fov)"
            )
        full = (float(fov[0]), float(fov[1]), float(thickness))
        return cls(full, int(matrix[0]), int(matrix[1]), dwell, tr, rf_duration, limits, readout)

    def phase_area(self, line: int | None) -> float:
        """Phase-encoding moment of ``line`` (T s/m): ``ky = (line - ny/2) / fov_y``."""
        if line is None:
            return 0.0
        return (line - self.ny // 2) / (GAMMA_HZ * self.fov[1])

    def encode(
        self,
        *,
        start: float,
        echo: float,
        line: int | None,
        phase: float,
        spoiler: float = 0.0,
        balanced: bool = False,
        ideal: bool = False,
    ) -> list[Block]:
        """Prephasing, readout and closing blocks from ``start`` to the end of the TR.

        Times are from the TR start; ``echo`` is when sample ``nx/2`` (k-space centre) is
        taken. The closing block rewinds the phase encoding, then either rewinds the readout
        (``balanced``) or plays a readout-axis ``spoiler`` moment (T s/m), and fills to TR;
        ``ideal`` zeroes the transverse magnetisation at its end.
        """
        g, nx, dwell, limits = self.readout, self.nx, self.dwell, self.limits
        rise = _ceil(g / limits.max_slew, GRAD_RASTER)
        before_echo = (nx // 2 + 0.5) * dwell
        ro_start = _floor(echo - before_echo - rise, BLOCK_RASTER)
        adc_delay = round((echo - before_echo - ro_start) / ADC_RASTER) * ADC_RASTER
        flat = _ceil(adc_delay - rise + nx * dwell, GRAD_RASTER)
        readout = Trapezoid(amplitude=g, rise=rise, flat=flat, fall=rise)
        prephase = -g * (adc_delay + before_echo - rise / 2)
        ky = self.phase_area(line)
        timing = _trapezoid_timing(max(abs(prephase), abs(self.phase_area(0))), limits)
        gx_pre = _trapezoid(prephase, limits, timing)
        if (short := gx_pre.duration - (ro_start - start)) > 1e-12:
            raise InputError(
                f"echo time is {short:.6g} s too short for this matrix, fov and dwell "
                "(prephasing does not fit); expected a longer te"
            )
        gy_pre = _trapezoid(ky, limits, timing) if ky else None
        pre = Block(duration=ro_start - start, gx=gx_pre, gy=gy_pre)
        adc = None if line is None else ADC(samples=nx, dwell=dwell, delay=adc_delay, phase=phase)
        ro = Block(gx=readout, adc=adc)
        closing = -(prephase + readout.area) if balanced else spoiler
        timing = _trapezoid_timing(max(abs(closing), abs(self.phase_area(0))), limits)
        gx_end = _trapezoid(closing, limits, timing) if closing else None
        gy_end = _trapezoid(-ky, limits, timing) if ky else None
        end = ro_start + ro.duration  # type: ignore[operator]
        rest = round((self.tr - end) / BLOCK_RASTER) * BLOCK_RASTER
        need = 2 * timing[0] + timing[1] if gx_end or gy_end else 0.0
        if rest < need - 1e-12:
            raise InputError(f"tr={self.tr} s is too short; expected at least {end + need:.6g} s")
        return [pre, ro, Block(duration=rest, gx=gx_end, gy=gy_end, spoil=ideal)]

    def sequence(self, blocks: list[Block], name: str, **parameters: object) -> Sequence:
        """Wrap ``blocks`` with this plan's geometry and protocol ``parameters``."""
        values = {"tr": self.tr, **parameters}
        return Sequence(
            blocks=blocks,
            fov=self.fov,
            matrix=(self.nx, self.ny),
            lines=tuple(range(self.ny)),
            name=name,
            parameters=values,  # type: ignore[arg-type]
        )
