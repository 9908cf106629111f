"""Pulseq ``.seq`` files (versions 1.3 and 1.4): read into a ``Sequence``, write one out.

Format (pulseq.github.io, "Pulseq specification" 1.4): text sections ``[VERSION]``,
``[DEFINITIONS]``, ``[BLOCKS]``, ``[RF]``, ``[GRADIENTS]``, ``[TRAP]``, ``[ADC]``, ``[DELAYS]``
(1.3), ``[EXTENSIONS]`` (ignored here), ``[SHAPES]`` and ``[SIGNATURE]``. Units in the file:
RF amplitude Hz (``gamma B1 / 2 pi``), gradients Hz/m, times us, ADC dwell ns, phases rad;
phase shapes in cycles. Shapes may be compressed: run-length encoded first differences, a
repeated value followed by the number of further repeats.

Reading: a pulse whose magnitude and phase shapes are constant (and no frequency offset) becomes
a hard pulse, simulated as an instantaneous rotation; others are shaped. Writing: ideal
spoiling has no Pulseq form and is refused. ``Matrix``, ``Lines``, ``TE``, ``TR``, ``TI`` and
``FlipAngle`` definitions carry the k-space layout and protocol, so a written file reads back
to the same simulation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tasks.errors import InputError
from tasks.simulation.sequence import (
    ADC,
    ADC_RASTER,
    BLOCK_RASTER,
    GAMMA_HZ,
    GRAD_RASTER,
    RF,
    RF_RASTER,
    Block,
    Gradient,
    Sequence,
    Trapezoid,
    Waveform,
)

_SECTIONS = (
    "VERSION",
    "DEFINITIONS",
    "BLOCKS",
    "RF",
    "GRADIENTS",
    "TRAP",
    "ADC",
    "DELAYS",
    "EXTENSIONS",
    "SHAPES",
    "SIGNATURE",
)
_PARAMETERS = {"TE": "te", "TR": "tr", "TI": "ti", "FlipAngle": "flip_deg"}
_LABELS = {"Spoiling": "spoil"}


class _Source:
    """Lines of a ``.seq`` file and where they came from, for error messages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int, problem: str, expected: str) -> InputError:
        return InputError(f"{self.path}:{line}: {problem}; expected {expected}")


# --- reading --------------------------------------------------------------------------------


def read_seq(path: Path) -> Sequence:
    """Read a Pulseq 1.3 or 1.4 ``.seq`` file.

    Raises:
        InputError: The file is missing or malformed; the message names the file, the line
            and what was expected there.
    """
    path = Path(path)
    src = _Source(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read Pulseq file ({exc})") from exc
    sections = _split(text, src)
    version = _version(sections.get("VERSION", []), src)
    defs = _definitions(sections.get("DEFINITIONS", []))
    rasters = {
        name: _number(defs.get(key, [str(default)])[0], 0, src, f"{key} in seconds")
        for name, key, default in (
            ("grad", "GradientRasterTime", GRAD_RASTER),
            ("rf", "RadiofrequencyRasterTime", RF_RASTER),
            ("block", "BlockDurationRaster", BLOCK_RASTER),
        )
    }
    shapes = _shapes(sections.get("SHAPES", []), src)
    minor = version[1]
    rf_cols = 8 if minor >= 4 else 7
    grad_cols = 5 if minor >= 4 else 4
    rfs = _table(
        sections, "RF", rf_cols, src, "id amplitude mag_id phase_id [time_id] delay freq phase"
    )
    grads = _table(sections, "GRADIENTS", grad_cols, src, "id amplitude shape_id [time_id] delay")
    traps = _table(sections, "TRAP", 6, src, "id amplitude rise flat fall delay")
    adcs = _table(sections, "ADC", 6, src, "id num dwell delay freq phase")
    delays = _table(sections, "DELAYS", 2, src, "id delay")
    blocks: list[Block] = []
    for line, cols in sections.get("BLOCKS", []):
        if len(cols) not in (7, 8):
            raise src.fail(line, f"block has {len(cols)} columns", "NUM DUR RF GX GY GZ ADC [EXT]")
        ids = [_integer(c, line, src, "integer event ids") for c in cols]
        rf = _rf(rfs, ids[2], line, shapes, rasters["rf"], minor, src) if ids[2] else None
        g = [
            _gradient(ids[k], traps, grads, shapes, rasters["grad"], minor, line, src)
            for k in (3, 4, 5)
        ]
        adc = _adc(adcs, ids[6], line, src) if ids[6] else None
        duration = None
        if minor >= 4:
            duration = ids[1] * rasters["block"]
        elif ids[1]:
            if ids[1] not in delays:
                raise src.fail(line, f"block refers to delay {ids[1]}", "an id in [DELAYS]")
            dline, dcols = delays[ids[1]]
            wait = _number(dcols[1], dline, src, "a delay in us") * 1e-6
            events = [e for e in (rf, *g, adc) if e is not None]
            duration = max([wait, *(e.duration for e in events)])
        try:
            blocks.append(Block(duration=duration, rf=rf, gx=g[0], gy=g[1], gz=g[2], adc=adc))
        except InputError as exc:
            raise src.fail(line, str(exc), "a duration covering the block's events") from exc
    if not blocks:
        raise InputError(f"{path}: no [BLOCKS]; expected at least one block")
    return _sequence(blocks, defs, path)


def _split(text: str, src: _Source) -> dict[str, list[tuple[int, list[str]]]]:
    sections: dict[str, list[tuple[int, list[str]]]] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            name = line.strip("[]").strip()
            if not line.endswith("]") or name not in _SECTIONS:
                raise src.fail(number, f"unknown section {line!r}", f"one of {list(_SECTIONS)}")
            current = name
            sections.setdefault(name, [])
            continue
        if current is None:
            raise src.fail(number, f"text {line!r} before any section", "a [SECTION] header")
        sections[current].append((number, line.split()))
    return sections


def _version(rows: list[tuple[int, list[str]]], src: _Source) -> tuple[int, int]:
    values = {cols[0]: cols[1:] for _, cols in rows}
    lines = {cols[0]: line for line, cols in rows}
    try:
        major, minor = int(values["major"][0]), int(values["minor"][0])
    except (KeyError, IndexError, ValueError) as exc:
        where = min(lines.values(), default=1)
        raise src.fail(
            where, "[VERSION] lacks integer major/minor", "'major 1', 'minor 4'"
        ) from exc
    if major != 1 or minor not in (3, 4):
        raise src.fail(lines["major"], f"version {major}.{minor}", "Pulseq 1.3 or 1.4")
    return major, minor


def _definitions(rows: list[tuple[int, list[str]]]) -> dict[str, list[str]]:
    return {cols[0]: cols[1:] for _, cols in rows}


def _number(text: str, line: int, src: _Source, expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise src.fail(line, f"{text!r} is not a number", expected) from None
    if not math.isfinite(value):
        raise src.fail(line, f"{text!r} is not finite", expected)
    return value


def _integer(text: str, line: int, src: _Source, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise src.fail(line, f"{text!r} is not an integer", expected) from None
    if value < 0:
        raise src.fail(line, f"{value} is negative", expected)
    return value


def _table(
    sections: dict[str, list[tuple[int, list[str]]]],
    name: str,
    columns: int,
    src: _Source,
    layout: str,
) -> dict[int, tuple[int, list[str]]]:
    out: dict[int, tuple[int, list[str]]] = {}
    for line, cols in sections.get(name, []):
        if len(cols) != columns:
            raise src.fail(line, f"[{name}] row has {len(cols)} columns", f"{columns}: {layout}")
        key = _integer(cols[0], line, src, f"an integer id in [{name}]")
        for text in cols[1:]:
            _number(text, line, src, f"numbers: {layout}")
        out[key] = (line, cols)
    return out


def _shapes(rows: list[tuple[int, list[str]]], src: _Source) -> dict[int, np.ndarray]:
    raw: dict[int, tuple[int, int, list[float]]] = {}
    current: int | None = None
    for line, cols in rows:
        if cols[0] == "shape_id":
            if len(cols) != 2:
                raise src.fail(line, "malformed shape_id line", "'shape_id N'")
            current = _integer(cols[1], line, src, "'shape_id N'")
            raw[current] = (line, -1, [])
        elif cols[0] == "num_samples":
            if current is None or len(cols) != 2:
                raise src.fail(
                    line, "num_samples outside a shape", "'num_samples M' after shape_id"
                )
            first, _, data = raw[current]
            raw[current] = (first, _integer(cols[1], line, src, "'num_samples M'"), data)
        else:
            if current is None or raw[current][1] < 0 or len(cols) != 1:
                raise src.fail(line, f"shape data {' '.join(cols)!r}", "one number per line")
            raw[current][2].append(_number(cols[0], line, src, "a shape sample"))
    return {sid: _decompress(data, n, line, src) for sid, (line, n, data) in raw.items()}


def _decompress(packed: list[float], samples: int, line: int, src: _Source) -> np.ndarray:
    """Pulseq shape decompression: run-length decode, then cumulative sum (unless raw)."""
    if samples == len(packed):
        return np.asarray(packed)
    out: list[float] = []
    i = 0
    while i < len(packed):
        if i + 1 < len(packed) and packed[i] == packed[i + 1]:
            if i + 2 >= len(packed) or packed[i + 2] != int(packed[i + 2]) or packed[i + 2] < 0:
                raise src.fail(line, "a repeated value without a repeat count", "value value count")
            out += [packed[i]] * (int(packed[i + 2]) + 2)
            i += 3
        else:
            out.append(packed[i])
            i += 1
    if len(out) != samples:
        raise src.fail(line, f"shape decompresses to {len(out)} samples", f"num_samples {samples}")
    return np.cumsum(out)


def _shape(shapes: dict[int, np.ndarray], sid: int, line: int, src: _Source) -> np.ndarray:
    if sid not in shapes:
        raise src.fail(line, f"refers to shape {sid}", "an id in [SHAPES]")
    return shapes[sid]


def _rf(
    rfs: dict[int, tuple[int, list[str]]],
    rid: int,
    block_line: int,
    shapes: dict[int, np.ndarray],
    raster: float,
    minor: int,
    src: _Source,
) -> RF:
    if rid not in rfs:
        raise src.fail(block_line, f"block refers to RF {rid}", "an id in [RF]")
    line, cols = rfs[rid]
    values = [float(c) for c in cols]
    amplitude, mag_id, phase_id = values[1], int(values[2]), int(values[3])
    if minor >= 4 and int(values[4]) != 0:
        raise src.fail(line, "RF with a time shape", "time_shape_id 0 (regular raster)")
    delay, freq, phase = (v for v in values[-3:])
    mag = _shape(shapes, mag_id, line, src)
    cycles = _shape(shapes, phase_id, line, src)
    if mag.size != cycles.size:
        raise src.fail(line, f"RF shapes of {mag.size} and {cycles.size} samples", "equal lengths")
    waveform = 2 * np.pi * amplitude * mag * np.exp(2j * np.pi * cycles)
    if freq == 0 and np.ptp(mag) == 0 and np.ptp(cycles) == 0:
        return RF(waveform=waveform[:1], raster=mag.size * raster, delay=delay * 1e-6, phase=phase)
    return RF(waveform=waveform, raster=raster, delay=delay * 1e-6, phase=phase, freq_offset=freq)


def _gradient(
    gid: int,
    traps: dict[int, tuple[int, list[str]]],
    grads: dict[int, tuple[int, list[str]]],
    shapes: dict[int, np.ndarray],
    raster: float,
    minor: int,
    block_line: int,
    src: _Source,
) -> Gradient | None:
    if gid == 0:
        return None
    if gid in traps:
        _, cols = traps[gid]
        amp, rise, flat, fall, delay = (float(c) for c in cols[1:])
        return Trapezoid(
            amplitude=amp / GAMMA_HZ,
            rise=rise * 1e-6,
            flat=flat * 1e-6,
            fall=fall * 1e-6,
            delay=delay * 1e-6,
        )
    if gid in grads:
        line, cols = grads[gid]
        amp, sid = float(cols[1]), int(cols[2])
        if minor >= 4 and int(cols[3]) != 0:
            raise src.fail(line, "gradient with a time shape", "time_shape_id 0 (regular raster)")
        shape = _shape(shapes, sid, line, src)
        return Waveform(samples=amp / GAMMA_HZ * shape, raster=raster, delay=float(cols[-1]) * 1e-6)
    raise src.fail(block_line, f"block refers to gradient {gid}", "an id in [TRAP] or [GRADIENTS]")


def _adc(adcs: dict[int, tuple[int, list[str]]], aid: int, block_line: int, src: _Source) -> ADC:
    if aid not in adcs:
        raise src.fail(block_line, f"block refers to ADC {aid}", "an id in [ADC]")
    line, cols = adcs[aid]
    num = _integer(cols[1], line, src, "an integer sample count")
    dwell, delay, freq, phase = (float(c) for c in cols[2:])
    try:
        return ADC(
            samples=num, dwell=dwell * 1e-9, delay=delay * 1e-6, phase=phase, freq_offset=freq
        )
    except InputError as exc:
        raise src.fail(line, str(exc), "a valid ADC event") from exc


def _sequence(blocks: list[Block], defs: dict[str, list[str]], path: Path) -> Sequence:
    def floats(key: str) -> list[float] | None:
        try:
            return [float(v) for v in defs[key]] if key in defs else None
        except ValueError as exc:
            raise InputError(f"{path}: definition {key} {defs[key]}; expected numbers") from exc

    fov = floats("FOV")
    matrix = floats("Matrix")
    lines = floats("Lines")
    parameters: dict[str, object] = {
        name: v[0] for key, name in _PARAMETERS.items() if (v := floats(key))
    }
    parameters |= {name: defs[key][0] for key, name in _LABELS.items() if defs.get(key)}
    return Sequence(
        blocks=blocks,
        fov=tuple(fov[:3]) if fov and len(fov) >= 3 else None,  # type: ignore[arg-type]
        matrix=(int(matrix[0]), int(matrix[1])) if matrix and len(matrix) == 2 else None,
        lines=tuple(int(v) for v in lines) if lines else None,
        name=" ".join(defs.get("Name", [path.stem])),
        parameters=parameters,  # type: ignore[arg-type]
    )


# --- writing --------------------------------------------------------------------------------


def write_seq(sequence: Sequence, path: Path) -> Path:
    """Write ``sequence`` as a Pulseq 1.4 file, events and shapes deduplicated, with signature.

    Every time must lie on Pulseq's rasters (block 10 us, gradient 10 us, RF 1 us, ADC delay
    and dwell 100 ns and 1 ns); the builders' sequences do. Written under a temporary name and
    renamed.

    Raises:
        InputError: Ideal spoiling, or an event off its raster.
    """
    path = Path(path)
    w = _Writer()
    for number, block in enumerate(sequence.blocks, start=1):
        w.block(number, block)
    text = w.render(sequence)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def _fmt(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def _units(value: float, unit: float, what: str) -> int:
    count = round(value / unit)
    if abs(count * unit - value) > 1e-3 * unit:
        raise InputError(f"{what}={value} s is not a multiple of {unit} s; expected on raster")
    return count


class _Writer:
    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.libraries: dict[str, dict[tuple[str, ...], int]] = {
            name: {} for name in ("RF", "GRADIENTS", "TRAP", "ADC")
        }
        self.shapes: dict[tuple[float, ...], int] = {}
        self.grad_ids: dict[tuple[str, tuple[str, ...]], int] = {}

    def _add(self, library: str, row: tuple[str, ...]) -> int:
        table = self.libraries[library]
        if row not in table:
            table[row] = len(table) + 1
        return table[row]

    def _shape(self, samples: np.ndarray) -> int:
        key = tuple(float(v) for v in samples)
        if key not in self.shapes:
            self.shapes[key] = len(self.shapes) + 1
        return self.shapes[key]

    def _gradient(self, grad: Gradient | None, where: str) -> int:
        if grad is None:
            return 0
        delay = str(_units(grad.delay, 1e-6, f"{where} gradient delay"))
        if isinstance(grad, Trapezoid):
            if grad.amplitude == 0:
                return 0
            times = [
                str(_units(t, 1e-6, f"{where} trapezoid time"))
                for t in (grad.rise, grad.flat, grad.fall)
            ]
            key = ("TRAP", (_fmt(grad.amplitude * GAMMA_HZ), *times, delay))
        else:
            _units(grad.raster, GRAD_RASTER, f"{where} gradient raster")
            if grad.raster != GRAD_RASTER and abs(grad.raster - GRAD_RASTER) > 1e-12:
                raise InputError(f"{where} gradient raster {grad.raster}; expected {GRAD_RASTER} s")
            peak = float(np.abs(grad.samples).max())
            if peak == 0:
                return 0
            sid = self._shape(grad.samples / peak)
            key = ("GRADIENTS", (_fmt(peak * GAMMA_HZ), str(sid), "0", delay))
        if key not in self.grad_ids:
            self.grad_ids[key] = len(self.grad_ids) + 1
        return self.grad_ids[key]

    def _rf(self, rf: RF, where: str) -> int:
        steps = _units(rf.raster, RF_RASTER, f"{where} RF raster")
        waveform = np.repeat(rf.waveform, steps)
        peak = float(np.abs(waveform).max())
        mag = np.abs(waveform) / peak if peak else np.zeros(waveform.size)
        cycles = np.mod(np.angle(waveform) / (2 * np.pi), 1.0)
        row = (
            _fmt(peak / (2 * np.pi)),
            str(self._shape(mag)),
            str(self._shape(cycles)),
            "0",
            str(_units(rf.delay, 1e-6, f"{where} RF delay")),
            _fmt(rf.freq_offset),
            _fmt(rf.phase),
        )
        return self._add("RF", row)

    def _adc(self, adc: ADC, where: str) -> int:
        _units(adc.delay, ADC_RASTER, f"{where} ADC delay")
        row = (
            str(adc.samples),
            _fmt(round(adc.dwell * 1e9, 6)),
            _fmt(round(adc.delay * 1e6, 6)),
            _fmt(adc.freq_offset),
            _fmt(adc.phase),
        )
        return self._add("ADC", row)

    def block(self, number: int, block: Block) -> None:
        where = f"block {number}"
        if block.spoil:
            raise InputError(f"{where} uses ideal spoiling; expected spoil='rf' (no Pulseq form)")
        duration = _units(block.duration, BLOCK_RASTER, f"{where} duration")  # type: ignore[arg-type]
        ids = [
            self._rf(block.rf, where) if block.rf else 0,
            *(self._gradient(g, where) for g in block.gradients),
            self._adc(block.adc, where) if block.adc else 0,
        ]
        self.blocks.append(" ".join(str(v) for v in (number, duration, *ids, 0)))

    def render(self, sequence: Sequence) -> str:
        out = ["# Pulseq sequence file", "# Created by sciflow", "", "[VERSION]"]
        out += ["major 1", "minor 4", "revision 1", "", "[DEFINITIONS]"]
        defs: dict[str, str] = {
            "AdcRasterTime": _fmt(ADC_RASTER),
            "BlockDurationRaster": _fmt(BLOCK_RASTER),
            "GradientRasterTime": _fmt(GRAD_RASTER),
            "RadiofrequencyRasterTime": _fmt(RF_RASTER),
            "Name": sequence.name,
        }
        if sequence.fov:
            defs["FOV"] = " ".join(_fmt(v) for v in sequence.fov)
        if sequence.matrix:
            defs["Matrix"] = " ".join(str(v) for v in sequence.matrix)
        if sequence.lines is not None:
            defs["Lines"] = " ".join(str(v) for v in sequence.lines)
        for key, name in _PARAMETERS.items():
            if name in sequence.parameters:
                defs[key] = _fmt(sequence.parameters[name])
        for key, name in _LABELS.items():
            if name in sequence.parameters:
                defs[key] = str(sequence.parameters[name])
        out += [f"{k} {v}" for k, v in sorted(defs.items())]
        out += ["", "# Format of blocks:", "# NUM DUR RF  GX  GY  GZ  ADC  EXT", "[BLOCKS]"]
        out += self.blocks
        sections: list[tuple[str, str, Callable[[], list[str]]]] = [
            (
                "RF",
                "# id amplitude mag_id phase_id time_shape_id delay freq phase",
                self._rows("RF"),
            ),
            (
                "GRADIENTS",
                "# id amplitude amp_shape_id time_shape_id delay",
                self._grads("GRADIENTS"),
            ),
            ("TRAP", "# id amplitude rise flat fall delay", self._grads("TRAP")),
            ("ADC", "# id num dwell delay freq phase", self._rows("ADC")),
        ]
        for name, header, rows in sections:
            lines = rows()
            if lines:
                out += ["", header, f"[{name}]", *lines]
        if self.shapes:
            out += ["", "[SHAPES]"]
            for samples, sid in self.shapes.items():
                data = _compress(np.array(samples))
                out += ["", f"shape_id {sid}", f"num_samples {len(samples)}"]
                out += [_fmt(v) for v in data]
        body = "\n".join(out) + "\n"
        digest = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
        signature = [
            "",
            "[SIGNATURE]",
            "# This is the hash of the Pulseq file, calculated right before the [SIGNATURE] "
            "section was added",
            "# It can be reproduced/verified with md5sum if the file trimmed to the position "
            "right above [SIGNATURE]",
            "# The new line character preceding [SIGNATURE] BELONGS to the signature (and needs "
            "to be stripped away for recalculating/verification)",
            "Type md5",
            f"Hash {digest}",
        ]
        return body + "\n".join(signature) + "\n"

    def _rows(self, library: str) -> Callable[[], list[str]]:
        table = self.libraries[library]
        return lambda: [f"{rid} {' '.join(row)}" for row, rid in table.items()]

    def _grads(self, kind: str) -> Callable[[], list[str]]:
        return lambda: [
            f"{gid} {' '.join(row)}" for (k, row), gid in self.grad_ids.items() if k == kind
        ]


def _compress(samples: np.ndarray) -> np.ndarray:
    """Pulseq shape compression (first differences, run-length coded) when it is shorter.

    No quantisation: a run needs exactly equal differences, which constant and linear pieces
    of builder shapes have; otherwise the samples are stored as they are.
    """
    diffs = np.diff(samples, prepend=0.0)
    packed: list[float] = []
    i = 0
    while i < diffs.size:
        j = i
        while j + 1 < diffs.size and diffs[j + 1] == diffs[i]:
            j += 1
        run = j - i + 1
        packed += [diffs[i], diffs[i], run - 2] if run >= 2 else [diffs[i]]
        i = j + 1
    if len(packed) >= samples.size or not np.array_equal(np.cumsum(diffs), samples):
        return samples
    return np.asarray(packed)
