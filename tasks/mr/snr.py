"""SNR maps of one slice: analytic (AC), multiple replicas (MR), pseudo replicas (PMR, CR).

The methods and names follow MR Optimum (``mrotools/snr.py``; primer section 4). Units are
per-component (Kellman & McVeigh): ``|signal| / std`` of one real noise component, provided the
``noise_cov`` given is the covariance *as sampled in the signal* (see
``noise.signal_noise_covariance``; ``convention`` below does not rescale it).

Everything runs on prewhitened data, so the pseudo-noise of PMR and CR is white: ``CN(0, I)``
added directly in the reconstruction's input domain (coil images, or SENSE/GRAPPA aliased
images), which the orthonormal FFT makes identical in distribution to MR Optimum's
``Psi^(1/2) w`` added to un-whitened k-space and whitened again. Replicas are reconstructed
``batch`` at a time and reduced with Welford's running moments, so memory does not grow with the
replica count. Replica ``i`` draws its noise from its own generator, ``SFC64`` seeded with child
``i`` of ``SeedSequence(seed)`` (``spawn``), so the replicas of a batch are drawn and
reconstructed in parallel threads (NumPy's generators and large-array kernels release the GIL)
and the maps depend only on ``seed``: not on ``batch`` or on the number of threads. The normals
are float32 for complex64 data (float64 for complex128), as the data's own precision.

``SnrSpec.device`` picks where this one code path computes (``tasks.mr.arrays``): NumPy on the
CPU (``"cpu"``, the default), or torch on the GPU (``"cuda"``; ``"torch-cpu"`` runs the same
torch code on the CPU, for tests). Every device runs AC, MR, PMR and CR with RSS, B1 and SENSE;
GRAPPA runs on the CPU only (``arrays.DEVICE_RECONS``). The torch maps equal the NumPy maps up
to rounding, except that PMR/CR draw their pseudo-noise with torch's generator: other numbers
from the same distribution, from the same ``SeedSequence`` children.

``SnrSpec.convention`` picks between MR Optimum's exact semantics and corrected ones:

- ``"mroptimum"``: the PMR/CR numerator is the *last* pseudo-replica (what MR Optimum's
  reconstructor holds after its loop; complex for B1/SENSE in CR, so its imaginary noise enters
  CR's local std); CR has no ``sqrt(N/(N-1))`` correction; MR takes coil maps from replica 0; the
  ``threshold`` mask compares MR Optimum's unnormalised-iFFT reference (orthonormal RSS /
  ``sqrt(Nx Ny)``).
- ``"physical"``: the PMR/CR numerator is the noise-free reconstruction; CR's local std of
  ``|I_last| - mean_r |I_r|`` is scaled by ``sqrt(N/(N-1))`` (the last replica is part of the
  mean); MR takes coil maps from the replicas' mean; the ``threshold`` mask uses the orthonormal
  RSS.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tasks.errors import InputError
from tasks.mr.arrays import DEVICES, NumpyArrays, TorchArrays, arrays_for, device_problem
from tasks.mr.coils import acl_region, clean_mask, coil_mask
from tasks.mr.noise import prewhitening_matrix
from tasks.mr.recon import rss, sense_unmixing, zero_filled_images

RECONS = ("rss", "b1", "sense", "grappa")
SENSITIVITIES = ("inner", "inneracl", "espirit")
MASKS = ("no", "reference", "threshold", "percentage", "percentagemean", "espirit")
METHODS = ("ac", "mr", "pmr", "cr")
CONVENTIONS = ("physical", "mroptimum")
# MR Optimum's ESPIRiT mask parameters (cmtools calculateCoilsSensitivityMask2D, dict form).
ESPIRIT_MASK = {"calib_width": 24, "kernel_width": 6, "thresh": 0.01, "crop": 0.9925}
ESPIRIT_CALIB_WIDTH = 24

Progress = Callable[[int, int], None]
Arrays = NumpyArrays | TorchArrays
NUMPY = NumpyArrays()


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= low


def _pair(spec: Any, name: str, allow_none: bool = False) -> None:
    """Check a 2-tuple field of a frozen spec; lists (from JSON) become tuples."""
    value = getattr(spec, name)
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(spec, name, value)
    ok = isinstance(value, tuple) and len(value) == 2
    if ok:
        ok = all((allow_none and v is None) or _is_int(v, 1) for v in value)
    if not ok:
        also = " or None" if allow_none else ""
        raise InputError(f"{name}={value!r}; expected a pair of integers >= 1{also}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ReconSpec:
    """How to reconstruct: combination, sensitivities, mask and (mimicked) acceleration."""

    recon: Literal["rss", "b1", "sense", "grappa"] = "rss"
    """Reconstruction: root sum of squares, Roemer B1, SENSE or GRAPPA (+ RSS)."""
    sensitivity: Literal["inner", "inneracl", "espirit"] = "inner"
    """Coil maps for B1/SENSE, from the prewhitened reference."""
    mask: Literal["no", "reference", "threshold", "percentage", "percentagemean", "espirit"] = "no"
    """Mask multiplied into the maps (``coils.coil_mask``; B1/SENSE only)."""
    mask_value: float | None = None
    """Threshold, percent or fraction for the masks that need one."""
    acceleration: tuple[int, int] = (1, 1)
    """(R_freq, R_phase) of the in-plane axes (3-D hybrid space: (R_y, R_z)); > 1 only for
    SENSE and GRAPPA."""
    acl: tuple[int | None, int | None] = (None, 24)
    """Calibration block (x, y) in samples, centred as MR Optimum's ``getACLGrids``; None = all."""
    decimate: bool = False
    """Mimic acceleration from fully sampled k-space: keep lines 0, R, ... and use the central
    ACL block as the reference (primer section 8)."""
    grappa_kernel: tuple[int, int] = (3, 4)
    """GRAPPA (readout taps, acquired source lines), ``tasks.mr.grappa`` geometry."""

    def __post_init__(self) -> None:
        if self.recon not in RECONS:
            raise InputError(f"recon={self.recon!r} is unknown; expected one of {list(RECONS)}")
        if self.sensitivity not in SENSITIVITIES:
            raise InputError(
                f"sensitivity={self.sensitivity!r} is unknown; "
                f"expected one of {list(SENSITIVITIES)}"
            )
        if self.mask not in MASKS:
            raise InputError(f"mask method {self.mask!r} is unknown; expected one of {list(MASKS)}")
        _pair(self, "acceleration")
        _pair(self, "acl", allow_none=True)
        _pair(self, "grappa_kernel")
        if self.mask_value is not None and not np.isfinite(self.mask_value):
            raise InputError(f"mask_value={self.mask_value!r}; expected a finite number or None")


@dataclass(frozen=True, kw_only=True, slots=True)
class SnrSpec:
    """Which SNR method and its parameters."""

    method: Literal["ac", "mr", "pmr", "cr"] = "ac"
    """Analytic, multiple replicas, pseudo multiple replicas, or generalised PMR (CR)."""
    replicas: int = 20
    """Pseudo replicas NR for PMR and CR, >= 2."""
    box_size: int = 2
    """CR half-width b of the (2b+1)^2 window, >= 1."""
    convention: Literal["physical", "mroptimum"] = "physical"
    """PMR/CR/MR semantics: corrected (physical) or MR Optimum's (module docstring)."""
    gfactor: bool = False
    """Also return the g-factor (SENSE, GRAPPA)."""
    seed: int = 0
    """Seed of the pseudo-noise generator."""
    batch: int = 16
    """Replicas reconstructed per vectorised batch, >= 1."""
    device: Literal["cpu", "cuda", "torch-cpu"] = "cpu"
    """Where to compute: ``"cpu"`` (NumPy, the default), ``"cuda"`` (torch on the GPU), or
    ``"torch-cpu"`` (the same torch code on the CPU, for tests); ``tasks.mr.arrays``. Every
    device runs every method with RSS, B1 and SENSE (GRAPPA: ``"cpu"`` only); torch's
    pseudo-noise comes from torch's generator, so PMR/CR numbers differ from the NumPy path's
    but not their statistics."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InputError(f"device={self.device!r} is unknown; expected one of {list(DEVICES)}")
        if self.method not in METHODS:
            raise InputError(f"method={self.method!r} is unknown; expected one of {list(METHODS)}")
        if self.convention not in CONVENTIONS:
            raise InputError(f"convention={self.convention!r}; expected one of {list(CONVENTIONS)}")
        for name, low in (("replicas", 2), ("box_size", 1), ("batch", 1), ("seed", 0)):
            value = getattr(self, name)
            if not _is_int(value, low):
                raise InputError(f"{name}={value!r}; expected an integer >= {low}")


@dataclass(slots=True)
class SnrMaps:
    """SNR of one slice and what went into it."""

    snr: np.ndarray
    """SNR map (x, y), real; NaN and inf set to 0."""
    g: np.ndarray | None = None
    """g-factor (x, y) if asked for and defined (SENSE, GRAPPA)."""
    inverse_g: np.ndarray | None = None
    """1/g with inf set to 0."""
    sensitivities: np.ndarray | None = None
    """Prewhitened, masked coil maps (x, y, coils) for B1/SENSE."""
    mask: np.ndarray | None = None
    """The mask applied to the maps (x, y), bool, for B1/SENSE."""
    info: dict[str, Any] = field(default_factory=dict)
    """What was done: method, recon, replicas, convention, R, ACL, timings per stage (s)."""


@dataclass(slots=True)
class _Pipeline:
    """A linear reconstruction, split so pseudo-noise can be added in its input domain.

    ``to_domain`` maps prewhitened k-space (..., x, y, c) to the domain (coil images, or
    aliased images when accelerated), where white k-space noise stays white ``CN(0, I)``;
    ``combine`` maps the domain (..., *domain) to the image (..., x, y). Every ``combine`` is
    positively homogeneous, ``combine(a z) = a combine(z)`` for ``a > 0`` (RSS and GRAPPA + RSS),
    and ``linear`` ones (B1, SENSE) are also additive, which lets the pseudo-replica loop skip
    whole passes over the coil data (``_pseudo_replicas``). Arrays live on the device of the
    ``Arrays`` that built it, except ``g`` and ``mask`` (host NumPy).
    """

    to_domain: Callable[[Any], Any]
    combine: Callable[[Any], Any]
    domain: Any
    noise_std: Any = 1.0
    g: np.ndarray | None = None
    sensitivities: Any = None
    mask: np.ndarray | None = None
    # For the pseudo-replica g-factor: the same combination, unaccelerated, on full coil images.
    full_domain: Any = None
    full_combine: Callable[[Any], Any] | None = None
    linear: bool = False
    """``combine`` (and ``full_combine``) is linear: B1 and SENSE."""


class _Moments:
    """Welford/Chan running mean and sum of squared deviations over replicas, per pixel.

    Kept in float64 on the device of ``arrays``; ``on_host`` copies them to NumPy.
    """

    __slots__ = ("arrays", "count", "m2", "mean")

    def __init__(self, arrays: Arrays = NUMPY) -> None:
        self.arrays = arrays
        self.count = 0
        self.mean: Any = 0.0
        self.m2: Any = 0.0

    def update(self, values: Any) -> None:
        """Merge a batch (B, x, y) of real values (Chan et al.'s pairwise update)."""
        values = self.arrays.float64(values)
        n_b = values.shape[0]
        mean_b = values.mean(axis=0)
        m2_b = ((values - mean_b) ** 2).sum(axis=0)
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / total)
        self.count = total

    def on_host(self) -> _Moments:
        """The same moments as NumPy arrays."""
        host = _Moments()
        host.count = self.count
        host.mean = self.arrays.to_numpy(self.mean)
        host.m2 = self.arrays.to_numpy(self.m2)
        return host

    def std(self) -> Any:
        """Sample standard deviation (ddof=1)."""
        return self.arrays.xp.sqrt(self.m2 / (self.count - 1))


def snr_map(
    kspace: np.ndarray,
    noise_cov: np.ndarray,
    recon: ReconSpec | None = None,
    snr: SnrSpec | None = None,
    progress: Progress | None = None,
    *,
    reference: np.ndarray | None = None,
) -> SnrMaps:
    """SNR map of one slice by the method in ``snr`` (primer section 4).

    - AC: ``sqrt(2)|I|/std`` analytically: RSS ``sqrt(2 sum|rho|^2)``, B1
      ``sqrt(2)|s^H rho|/sqrt(s^H s)``, SENSE ``sqrt(2)|v_p|/sqrt([U U^H]_pp)``, GRAPPA
      ``SNR_RSS(filled)/(g sqrt R)``.
    - MR: ``mean_r|I_r| / std_r(|I_r|, ddof=1)`` over the replicas on the last axis.
    - PMR: ``|I_ref| / std_r(|I_r|, ddof=1)`` over NR pseudo replicas.
    - CR: ``|I_ref| / sigma`` with ``sigma`` the NaN-padded (2b+1)^2 local std (ddof=1) of
      ``I_last - mean_r|I_r|`` (``box_std``).
    - g (``gfactor``; SENSE or GRAPPA): analytic for AC, MR and CR; for PMR the pseudo-replica
      ``g = SNR_full/(SNR_acc sqrt R)``: the same combination, unaccelerated, on the noise-free
      reconstruction's coil images (equal numerators, so ``std_acc/(std_full sqrt R)``), with
      its own NR replicas.

    Args:
        kspace: Complex k-space (x, y, coils); (x, y, coils, replicas) for MR. Accelerated
            data without ``decimate`` are zero-filled with lines 0, R, ... (others dropped).
        noise_cov: Psi referred to the signal's sampling, (coils, coils).
        recon: Reconstruction; default RSS.
        snr: SNR method; default AC.
        progress: Called as ``progress(done, total)`` after each batch of replicas (once for AC).
        reference: Optional reference k-space (x, y, coils), un-whitened, for the coil maps and
            GRAPPA ACS (e.g. a zero-padded refscan); default: derived from ``kspace``.

    Returns:
        The maps; NaN/inf set to 0 as MR Optimum does; float32 for complex64 input.
    """
    recon = recon or ReconSpec()
    snr = snr or SnrSpec()
    if problem := device_problem(snr.device, recon.recon):
        raise InputError(problem)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    data, cov, ref, dtype = _check_inputs(kspace, noise_cov, reference, snr.method)
    arrays = arrays_for(snr.device)
    whitener = prewhitening_matrix(cov).astype(dtype)
    if snr.method == "mr":
        base = data[..., 0] if snr.convention == "mroptimum" else data.mean(axis=-1)
    else:
        base = data
    base_pw = arrays.prewhiten(arrays.asarray(base), whitener)
    ref_pw = None if ref is None else arrays.prewhiten(arrays.asarray(ref), whitener)
    arrays.sync()
    timings["prewhiten"] = time.perf_counter() - clock

    clock = time.perf_counter()
    pipe = _build(arrays, recon, snr, base_pw, ref_pw)
    arrays.sync()
    timings["setup"] = time.perf_counter() - clock

    clock = time.perf_counter()
    g, g_method = (pipe.g, "analytic") if pipe.g is not None else (None, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        if snr.method == "ac":
            magnitude = arrays.float64(arrays.xp.abs(pipe.combine(pipe.domain)))
            values = arrays.to_numpy(magnitude * math.sqrt(2) / pipe.noise_std)
            _report(progress, 1, 1)
        elif snr.method == "mr":
            values = _multiple_replicas(arrays, data, whitener, pipe, snr.batch, progress)
        else:
            streams, full_streams = np.random.SeedSequence(snr.seed).spawn(2)
            with_g = snr.method == "pmr" and snr.gfactor and pipe.full_combine is not None
            steps = [0, 2 * snr.replicas if with_g else snr.replicas]
            replicas = _pseudo_replicas(
                arrays, pipe.domain, pipe.combine, pipe.linear, snr, streams, progress, steps
            )

            def clean() -> np.ndarray:
                return arrays.to_numpy(pipe.combine(pipe.domain))

            if snr.method == "pmr":
                values = _pmr(clean, replicas, snr.convention)
            else:
                values = _cr(clean, replicas, snr)
            if with_g and pipe.full_domain is not None and pipe.full_combine is not None:
                arrays.sync()
                timings["snr"] = time.perf_counter() - clock
                clock = time.perf_counter()
                full = _pseudo_replicas(
                    arrays,
                    pipe.full_domain,
                    pipe.full_combine,
                    pipe.linear,
                    snr,
                    full_streams,
                    progress,
                    steps,
                )
                r_total = recon.acceleration[0] * recon.acceleration[1]
                g = replicas.moments.std() / (full.moments.std() * np.sqrt(r_total))
                g_method = "pseudo-replica"
                arrays.sync()
                timings["gfactor"] = time.perf_counter() - clock
        arrays.sync()
        timings.setdefault("snr", time.perf_counter() - clock)

        real = np.float32 if dtype == np.complex64 else np.float64
        inverse_g = None
        if snr.gfactor and g is not None:
            inverse_g = _finite(1.0 / g, real)
            g = _finite(g, real)
        else:
            g, g_method = None, None
    sensitivities = None if pipe.sensitivities is None else arrays.to_numpy(pipe.sensitivities)
    return SnrMaps(
        snr=_finite(values, real),
        g=g,
        inverse_g=inverse_g,
        sensitivities=sensitivities,
        mask=pipe.mask,
        info={
            **_info(recon, snr, data, dtype, pipe, g_method, timings),
            "reference": "given" if ref is not None else "from kspace",
            **arrays.info(),
        },
    )


def _info(
    recon: ReconSpec,
    snr: SnrSpec,
    data: np.ndarray,
    dtype: type,
    pipe: Any,
    g_method: str | None,
    timings: dict[str, float],
) -> dict[str, Any]:
    """``SnrMaps.info``; ``pipe`` needs ``sensitivities`` and ``mask``."""
    return {
        "method": snr.method,
        "recon": recon.recon,
        "convention": snr.convention,
        "replicas": _replica_count(data, snr),
        "acceleration": list(recon.acceleration),
        "acl": list(recon.acl),
        "decimate": recon.decimate,
        "sensitivity": recon.sensitivity if pipe.sensitivities is not None else None,
        "mask": recon.mask if pipe.mask is not None else None,
        "mask_value": recon.mask_value,
        "grappa_kernel": list(recon.grappa_kernel) if recon.recon == "grappa" else None,
        "box_size": snr.box_size if snr.method == "cr" else None,
        "seed": snr.seed if snr.method in ("pmr", "cr") else None,
        "batch": snr.batch,
        "gfactor": g_method,
        "dtype": np.dtype(dtype).name,
        "device": snr.device,
        "timings_s": timings,
    }


# --- inputs -----------------------------------------------------------------------------------


def _check_inputs(
    kspace: np.ndarray, noise_cov: np.ndarray, reference: np.ndarray | None, method: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, type]:
    data = np.asarray(kspace)
    want = 4 if method == "mr" else 3
    if data.ndim != want or 0 in data.shape:
        layout = "(x, y, coils, replicas)" if method == "mr" else "(x, y, coils)"
        raise InputError(f"kspace has shape {data.shape}; method {method!r} expects {layout}")
    if method == "mr" and data.shape[-1] < 2:
        raise InputError(f"kspace has {data.shape[-1]} replica; method 'mr' needs at least 2")
    if not np.issubdtype(data.dtype, np.number):
        raise InputError(f"kspace has dtype {data.dtype}; expected complex numbers")
    if not _all_finite(data):
        raise InputError("kspace contains NaN or Inf; expected finite k-space samples")
    coil_count = data.shape[2]
    cov = np.asarray(noise_cov)
    if cov.shape != (coil_count, coil_count):
        raise InputError(
            f"noise_cov has shape {cov.shape} but kspace has {coil_count} coils; "
            f"expected ({coil_count}, {coil_count})"
        )
    if not np.all(np.isfinite(cov)):
        raise InputError("noise_cov contains NaN or Inf; expected a finite covariance")
    dtype = np.complex64 if data.dtype in (np.complex64, np.float32) else np.complex128
    ref = None
    if reference is not None:
        ref = np.asarray(reference)
        if ref.shape != data.shape[:3]:
            raise InputError(
                f"reference has shape {ref.shape}; expected {data.shape[:3]} like kspace"
            )
        if not _all_finite(ref):
            raise InputError("reference contains NaN or Inf; expected finite k-space samples")
        ref = ref.astype(dtype, copy=False)
    return data.astype(dtype, copy=False), cov, ref, dtype


def _all_finite(data: np.ndarray) -> bool:
    """No NaN or Inf in ``data``: a finite sum proves it in one pass; else check each value."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(data)):
            return True
    return bool(np.all(np.isfinite(data)))


def _replica_count(data: np.ndarray, spec: SnrSpec) -> int | None:
    if spec.method == "mr":
        return int(data.shape[-1])
    return spec.replicas if spec.method in ("pmr", "cr") else None


def _finite(values: np.ndarray, dtype: type) -> np.ndarray:
    return np.nan_to_num(np.asarray(values, dtype=dtype), nan=0.0, posinf=0.0, neginf=0.0)


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# --- reconstruction pipelines -------------------------------------------------------------------


def _build(
    arrays: Arrays, spec: ReconSpec, snr_spec: SnrSpec, base_pw: Any, ref_pw: Any
) -> _Pipeline:
    """The reconstruction pipeline; ``base_pw`` is the caller's temporary and may be overwritten."""
    rx, ry = spec.acceleration
    if spec.recon in ("rss", "b1") and rx * ry > 1:
        raise InputError(
            f"acceleration={spec.acceleration} with recon {spec.recon!r}; "
            "expected (1, 1), or recon 'sense' or 'grappa'"
        )
    nx, ny, _ = base_pw.shape
    if nx % rx or ny % ry:
        raise InputError(
            f"kspace is {nx} x {ny}, not divisible by acceleration ({rx}, {ry}); expected "
            "multiples of R (of 2R for MR Optimum's phase-free SENSE unfolding)"
        )

    def images_of(kspace: Any) -> Any:
        return arrays.ifft2c(kspace, axes=(-3, -2))

    def combine_rss(images: Any) -> Any:
        return _rss(arrays, images)

    if spec.recon == "rss":
        domain = arrays.ifft2c(base_pw, own=True)
        return _Pipeline(to_domain=images_of, combine=combine_rss, domain=domain)
    if spec.recon == "grappa":  # NumPy only (arrays.DEVICE_RECONS)
        return _grappa_pipeline(spec, base_pw, ref_pw)
    reference = _reference_kspace(arrays, spec, base_pw, ref_pw)
    if spec.recon == "b1":
        # Unaccelerated B1 without a separate reference: the maps come from these same images.
        same = reference is base_pw
        espirit = "espirit" in (spec.sensitivity, spec.mask)
        images = arrays.ifft2c(base_pw, own=not (same and espirit))  # ESPIRiT reads k-space
        sens, mask = _sensitivities(arrays, spec, snr_spec, reference, images if same else None)
        combine = _B1Combine(arrays, sens)
        return _Pipeline(
            to_domain=images_of,
            combine=combine,
            domain=images,
            noise_std=arrays.xp.where(combine.inverse_norm > 0, 1.0, 0.0),
            sensitivities=sens,
            mask=mask,
            linear=True,
        )
    sens, mask = _sensitivities(arrays, spec, snr_spec, reference)
    return _sense_pipeline(arrays, spec, base_pw, sens, mask)


def _rss(arrays: Arrays, images: Any) -> Any:
    """Root sum of squares over the last (coil) axis (``recon.rss``)."""
    return arrays.xp.sqrt(arrays.coil_power(images))


class _B1Combine:
    """``s^H rho / sqrt(s^H s)`` per pixel (``recon.b1_combine``), the norms computed once."""

    __slots__ = ("arrays", "inverse_norm", "sensitivities")

    def __init__(self, arrays: Arrays, sensitivities: Any) -> None:
        self.arrays = arrays
        self.sensitivities = sensitivities
        self.inverse_norm = arrays.inverse_norm(sensitivities)

    def __call__(self, images: Any) -> Any:
        return self.arrays.coil_dot(self.sensitivities, images) * self.inverse_norm


def _sampler(arrays: Arrays, acceleration: tuple[int, int]) -> Callable[[Any], Any]:
    """Prewhitened k-space (..., x, y, c) -> aliased images of lines 0, R, ... ."""

    def to_domain(kspace: Any) -> Any:
        sampled = arrays.undersample(kspace, acceleration[1], axis=-2)
        if acceleration[0] > 1:
            sampled = arrays.undersample(sampled, acceleration[0], axis=-3)
        return arrays.aliased_images(sampled, acceleration)

    return to_domain


def _sense_pipeline(
    arrays: Arrays, spec: ReconSpec, base_pw: Any, sens: Any, mask: np.ndarray | None
) -> _Pipeline:
    acceleration = spec.acceleration
    to_domain = _sampler(arrays, acceleration)
    # The unmixing matrices need LAPACK's pinv: computed on the host, applied on the device.
    host_sens = arrays.to_numpy(sens)
    unmixing, g, weights = sense_unmixing(host_sens, acceleration)
    unmixing = arrays.asarray(unmixing)
    domain = to_domain(base_pw)

    def combine(aliased: Any) -> Any:
        return arrays.sense_apply(aliased, unmixing, acceleration)

    # Unaccelerated SENSE with the same maps, on coil images S v0 (same numerator as v0).
    full_unmixing = arrays.asarray(sense_unmixing(host_sens, (1, 1))[0])
    full_domain = sens * combine(domain)[..., None]
    return _Pipeline(
        to_domain=to_domain,
        combine=combine,
        domain=domain,
        noise_std=arrays.asarray(weights),
        g=g,
        sensitivities=sens,
        mask=mask,
        full_domain=full_domain,
        full_combine=lambda images: arrays.sense_apply(images, full_unmixing, (1, 1)),
        linear=True,
    )


def _grappa_pipeline(spec: ReconSpec, base_pw: np.ndarray, ref_pw: np.ndarray | None) -> _Pipeline:
    try:
        from tasks.mr.grappa import grappa_gfactor, grappa_image_weights, grappa_weights
    except ImportError as exc:
        raise InputError("recon 'grappa' is not available yet") from exc
    rx, ry = spec.acceleration
    nx, ny, nc = base_pw.shape
    source = base_pw if ref_pw is None else ref_pw
    region = acl_region((nx, ny), spec.acl)
    if not spec.decimate:
        _check_sampled(NUMPY, source, region, "GRAPPA ACS", along_x=rx > 1)
    kernel = grappa_weights(source[region], (rx, ry), spec.grappa_kernel)
    weights = grappa_image_weights(kernel, (nx, ny)).astype(base_pw.dtype)
    to_domain = _sampler(NUMPY, (rx, ry))

    def filled(aliased: np.ndarray) -> np.ndarray:
        zero_filled = zero_filled_images(aliased, (rx, ry))
        return np.einsum("xyoc,...xyc->...xyo", weights, zero_filled)

    domain = to_domain(base_pw)
    images = filled(domain)
    norm = rss(images)
    combine_weights = np.where(
        norm[..., None] > 0, images / np.where(norm > 0, norm, 1)[..., None], 0
    )
    g = grappa_gfactor(weights, np.eye(nc), combine_weights, (rx, ry))
    return _Pipeline(
        to_domain=to_domain,
        combine=lambda aliased: rss(filled(aliased)),
        domain=domain,
        noise_std=g * np.sqrt(rx * ry),
        g=g,
        full_domain=images,
        full_combine=rss,
    )


def _check_sampled(
    arrays: Arrays, kspace: Any, region: tuple[slice, slice], what: str, *, along_x: bool = False
) -> None:
    """Raise unless every line of the calibration block carries data.

    With ``along_x`` every sample along x must too (an acceleration along x skips those).
    """
    block = arrays.to_numpy(kspace[region])
    for axis, other, name in ((1, 0, "lines"), (0, 1, "samples along x"))[: 1 + along_x]:
        empty = np.flatnonzero(~np.any(block != 0, axis=(other, 2)))
        if empty.size:
            where = (np.arange(kspace.shape[axis])[region[axis]])[empty]
            raise InputError(
                f"kspace has no data on {what} {name} {where.tolist()[:8]}; expected the "
                "central acl block sampled (or pass reference=, or set decimate=True)"
            )


def _reference_kspace(arrays: Arrays, spec: ReconSpec, base_pw: Any, ref_pw: Any) -> Any:
    """Prewhitened reference k-space for the coil maps (MR Optimum's choice, primer 3(b))."""
    source = base_pw if ref_pw is None else ref_pw
    accelerated = spec.acceleration != (1, 1)
    use_acl = spec.decimate or spec.sensitivity == "inneracl" or (accelerated and ref_pw is None)
    if not use_acl:
        return source
    region = acl_region(tuple(source.shape[:2]), spec.acl)
    if not spec.decimate:
        _check_sampled(arrays, source, region, "calibration")
    return arrays.acl_kspace(source, spec.acl)


def _sensitivities(
    arrays: Arrays,
    spec: ReconSpec,
    snr_spec: SnrSpec,
    reference: Any,
    images: Any = None,
) -> tuple[Any, np.ndarray]:
    """Masked maps (on the device) and the mask (host); ``images`` = ``ifft2c(reference)``.

    The mask (scipy morphology) and ESPIRiT run on the host, from host copies of the
    reference RSS or k-space.
    """
    nx, ny, _ = reference.shape
    ref_rss = None
    if images is None and (spec.sensitivity != "espirit" or spec.mask != "espirit"):
        images = arrays.ifft2c(reference)
    if spec.mask == "espirit":
        host_reference = arrays.to_numpy(reference)
        mask = clean_mask(_espirit().espirit_mask(host_reference, **ESPIRIT_MASK))
    else:
        ref_rss = _rss(arrays, images)
        ref_image = arrays.to_numpy(ref_rss)
        if snr_spec.convention == "mroptimum":
            ref_image = ref_image / np.sqrt(nx * ny)
        mask = coil_mask(ref_image, spec.mask, spec.mask_value)
    if spec.sensitivity == "espirit":
        espirit = _espirit()
        acl_y = spec.acl[1] if spec.acl[1] is not None else ESPIRIT_CALIB_WIDTH
        width = min(ESPIRIT_CALIB_WIDTH, acl_y, nx, ny)
        host_reference = arrays.to_numpy(reference)
        sens = espirit.espirit_maps(host_reference, calib_width=width) * mask[..., None]
        return arrays.asarray(sens.astype(host_reference.dtype, copy=False)), mask
    # Inner maps I_c / RSS (coils.sensitivities_inner) with the mask, in one pass.
    if ref_rss is None:
        ref_rss = _rss(arrays, images)
    return arrays.inner_maps(images, ref_rss, mask), mask


def _espirit() -> Any:
    try:
        from tasks.mr import espirit
    except ImportError as exc:
        raise InputError("ESPIRiT maps and masks are not available yet") from exc
    return espirit


# --- SNR methods --------------------------------------------------------------------------------


def _multiple_replicas(
    arrays: Arrays,
    data: np.ndarray,
    whitener: np.ndarray,
    pipe: _Pipeline,
    batch: int,
    progress: Progress | None,
) -> np.ndarray:
    total = data.shape[-1]
    moments = _Moments(arrays)
    for start in range(0, total, batch):
        stop = min(start + batch, total)
        chunk = arrays.asarray(np.moveaxis(data[..., start:stop], -1, 0))
        chunk = arrays.prewhiten(chunk, whitener)
        moments.update(arrays.xp.abs(pipe.combine(pipe.to_domain(chunk))))
        _report(progress, stop, total)
    host = moments.on_host()
    return host.mean / host.std()


@dataclass(slots=True)
class _Replicas:
    moments: _Moments  # on the host
    last: np.ndarray  # the last replica's reconstruction (complex for B1/SENSE)


def _threads() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pseudo_replicas(
    arrays: Arrays,
    domain: Any,
    combine: Callable[[Any], Any],
    linear: bool,
    spec: SnrSpec,
    streams: np.random.SeedSequence,
    progress: Progress | None,
    steps: list[int],
) -> _Replicas:
    """Reconstruct ``spec.replicas`` noisy copies of ``domain`` (noise ``CN(0, I)``).

    Replica ``i`` draws from child ``i`` of ``streams.spawn(replicas)`` (``arrays.normals``)
    whatever the batch and thread count. One batch buffer is reused. On NumPy a batch's
    replicas are drawn, added and combined in parallel threads, then merged into the running
    moments in order; on torch the batch is drawn slot by slot and combined as one tensor.

    With ``w`` the standard normal pairs (``CN(0, 2I)``), the replica ``combine(domain + w/sqrt2)``
    is computed without scaling ``w``: as ``combine(w)/sqrt2 + combine(domain)`` for a linear
    ``combine``, else as ``combine(sqrt2 domain + w)/sqrt2`` (positive homogeneity). Both are the
    same image up to rounding, and save one or two passes over each replica's coil data.
    """
    domain = arrays.complex_contiguous(domain)
    children = streams.spawn(spec.replicas)
    # Python floats take the data's precision (NumPy's NEP 50, torch's scalar rules).
    scale = math.sqrt(0.5)
    size = min(spec.batch, spec.replicas)
    normals = arrays.normals(size, domain)  # peak memory: one batch
    if linear:
        clean = combine(domain)
    else:
        scaled = domain * math.sqrt(2)

    def reconstruct(values: Any) -> Any:
        """Replicas from normals ``values`` (..., *domain), overwritten."""
        if linear:
            image = combine(values)
            image *= scale
            image += clean
            return image
        values += scaled
        image = combine(values)
        image *= scale
        return image

    def replica(index: int, slot: int) -> Any:
        normals.fill(slot, children[index])
        return reconstruct(normals.buffer[slot])

    moments = _Moments(arrays)
    last: Any = None
    threads = 1 if arrays.batched else min(_threads(), size)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, spec.replicas, spec.batch):
            count = min(spec.batch, spec.replicas - start)
            if arrays.batched:
                for slot in range(count):
                    normals.fill(slot, children[start + slot])
                images = reconstruct(normals.buffer[:count])
            else:
                if threads > 1:
                    done = list(pool.map(replica, range(start, start + count), range(count)))
                else:
                    done = [replica(start + slot, slot) for slot in range(count)]
                images = np.stack(done)
                del done
            moments.update(arrays.xp.abs(images))
            last = arrays.copy(images[-1])
            del images
            steps[0] += count
            _report(progress, steps[0], steps[1])
    return _Replicas(moments.on_host(), arrays.to_numpy(last))


def _pmr(clean: Callable[[], np.ndarray], acc: _Replicas, convention: str) -> np.ndarray:
    numerator = acc.last if convention == "mroptimum" else clean()
    return np.abs(numerator) / acc.moments.std()


def _cr(clean: Callable[[], np.ndarray], acc: _Replicas, spec: SnrSpec) -> np.ndarray:
    n = acc.moments.count
    if spec.convention == "mroptimum":
        sigma = box_std(acc.last - acc.moments.mean, spec.box_size)
        numerator = np.abs(acc.last)
    else:
        sigma = box_std(np.abs(acc.last) - acc.moments.mean, spec.box_size) * np.sqrt(n / (n - 1))
        numerator = np.abs(clean())
    return numerator / sigma


def box_std(image: np.ndarray, half_width: int) -> np.ndarray:
    """Local std (ddof=1) over a (2b+1)^2 window with NaN padding, NaNs ignored.

    MR Optimum's ``get_wien_noise_image``: ``nanstd(pad(image, b, NaN)[i:i+2b+1, j:j+2b+1],
    ddof=1)``, computed with box sums (integral images) instead of a per-pixel loop. Complex
    input gives ``sqrt(sum|x - mean|^2 / (n - 1))``, as ``np.nanstd``.

    Args:
        image: Real or complex image (x, y); NaN marks missing pixels.
        half_width: b >= 0.

    Returns:
        float64 (x, y); NaN where the window holds fewer than 2 valid pixels.
    """
    image = np.asarray(image)
    if image.ndim != 2 or half_width < 0:
        raise InputError(
            f"image has shape {image.shape} and half_width={half_width}; expected (x, y) and b >= 0"
        )
    valid = ~np.isnan(image)
    values = np.where(valid, image, 0).astype(
        np.complex128 if np.iscomplexobj(image) else np.float64
    )
    count = _box_sum(valid.astype(np.float64), half_width)
    total = _box_sum(values, half_width)
    squares = _box_sum(np.abs(values) ** 2, half_width)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = (squares - np.abs(total) ** 2 / count) / (count - 1)
    variance = np.where(count >= 2, np.maximum(variance, 0), np.nan)
    return np.sqrt(variance)


def _box_sum(values: np.ndarray, b: int) -> np.ndarray:
    """Sum over the (2b+1)^2 window centred on each pixel, zero outside the image."""
    padded = np.pad(values, ((b + 1, b), (b + 1, b)))
    integral = padded.cumsum(axis=0).cumsum(axis=1)
    w = 2 * b + 1
    return integral[w:, w:] - integral[:-w, w:] - integral[w:, :-w] + integral[:-w, :-w]


def flip_angle_corrected(snr: np.ndarray, flip_angle_deg: np.ndarray) -> np.ndarray:
    """SNR divided by sin(flip angle), as legacy MR Optimum's ACMWORKER did.

    Args:
        snr: SNR maps, shape (x, y) or (x, y, slices).
        flip_angle_deg: Actual flip angle per pixel in degrees, the same shape as ``snr``
            (or (x, y), applied to every slice).

    Returns:
        The corrected maps; 0 where the flip angle is 0 or a multiple of 180 degrees.
    """
    angles = np.asarray(flip_angle_deg, dtype=np.float64)
    if angles.ndim == 2 and snr.ndim == 3:
        angles = angles[..., None]
    if angles.shape[:2] != snr.shape[:2] or not np.all(np.isfinite(angles)):
        raise InputError(
            f"flip angle map has shape {angles.shape} (finite: {np.isfinite(angles).all()}); "
            f"expected finite degrees shaped like the SNR map {snr.shape}"
        )
    sine = np.sin(np.deg2rad(angles))
    with np.errstate(divide="ignore", invalid="ignore"):
        corrected = snr / sine
    return np.where(np.abs(sine) > 1e-6, corrected, 0.0)
