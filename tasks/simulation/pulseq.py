"""Pulseq ``.seq`` files (versions 1.2 to 1.5): read into a ``Sequence``, write one out (1.4).

Format (pulseq.github.io, "Pulseq specification" 1.4 and 1.5): text sections ``[VERSION]``,
``[DEFINITIONS]``, ``[BLOCKS]``, ``[RF]``, ``[GRADIENTS]``, ``[TRAP]``, ``[ADC]``, ``[DELAYS]``
(1.2 and 1.3), ``[EXTENSIONS]`` (ignored here), ``[SHAPES]`` and ``[SIGNATURE]``. Units in the
file: RF amplitude Hz (``gamma B1 / 2 pi``), gradients Hz/m, times us, ADC dwell ns, phases rad;
phase shapes in cycles. Shapes may be compressed: run-length encoded first differences, a
repeated value followed by the number of further repeats. The columns of the event tables
differ between versions (``_LAYOUTS``); 1.2 blocks may lack the extension column.

Why a parser of our own rather than ``pypulseq`` (``benchmarks/pulseq_read.py`` measures it):
this reader is faster than ``pypulseq.Sequence.read`` alone, names the file and line of every
problem, checks the ``[SIGNATURE]`` md5 (pypulseq reads it without checking), and bounds what a
shape, the shape table and the blocks expand to before expanding them (pypulseq allocates
whatever ``num_samples`` says). The tests cross-check it against pypulseq on files of every
version.

Reading: a pulse whose waveform is constant (and no frequency offset) becomes a hard pulse,
simulated as an instantaneous rotation; others are shaped. An RF time shape (pypulseq's block
pulses have one) is resampled, linearly, at the centres of the RF raster. Not modelled, and
refused: gradient time shapes (extended trapezoids), ppm offsets and ADC phase shapes. The 1.5
gradient ``first``/``last`` values are not kept: ``Waveform`` holds its end samples over the
half rasters at either end. Writing: ideal spoiling has no Pulseq form and is refused.
``Matrix``, ``Lines``, ``TE``, ``TR``, ``TI`` and ``FlipAngle`` definitions carry the k-space
layout and protocol, so a written file reads back to the same simulation.
"""

from __future__ import annotations

import hashlib
import math
import re
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

MAX_SHAPE_SAMPLES = 10_000_000
"""Longest shape read (10 s of RF on a 1 us raster): checked before a shape is expanded."""
MAX_EXPANDED_SAMPLES = 100_000_000
"""Most samples the ``[SHAPES]`` table, and apart from it the blocks, may expand to.

Both are counted before anything is expanded. The blocks' count is every RF, gradient-shape and
ADC sample of every block, since each block gets its own arrays: 100 million samples is 0.8 GB
of float64 (1.6 GB of complex RF). Generous for real sequences: a 2D sequence of 256 lines
with a 3 ms shaped pulse on the 1 us raster and 2.56 ms arbitrary-gradient readouts holds about
1 million, a 3D 256 x 256 one with hard pulses 17 million ADC samples; the simulator steps
every RF sample of every block, so a sequence past the cap could not be simulated in useful
time anyway.
"""

# Columns of each event table by minor version (1.2 reads as 1.3); ``use`` is a letter.
_LAYOUTS: dict[str, dict[int, tuple[str, ...]]] = {
    "RF": {
        3: ("id", "amp", "mag", "phase_shape", "delay", "freq", "phase"),
        4: ("id", "amp", "mag", "phase_shape", "time", "delay", "freq", "phase"),
        5: (
            *("id", "amp", "mag", "phase_shape", "time", "center", "delay"),
            *("freq_ppm", "phase_ppm", "freq", "phase", "use"),
        ),
    },
    "GRADIENTS": {
        3: ("id", "amp", "shape", "delay"),
        4: ("id", "amp", "shape", "time", "delay"),
        5: ("id", "amp", "first", "last", "shape", "time", "delay"),
    },
    "TRAP": {v: ("id", "amp", "rise", "flat", "fall", "delay") for v in (3, 4, 5)},
    "ADC": {
        3: ("id", "num", "dwell", "delay", "freq", "phase"),
        4: ("id", "num", "dwell", "delay", "freq", "phase"),
        5: (
            *("id", "num", "dwell", "delay", "freq_ppm", "phase_ppm"),
            *("freq", "phase", "phase_shape"),
        ),
    },
    "DELAYS": {v: ("id", "delay") for v in (3, 4, 5)},
}
_TEXT_COLUMNS = frozenset({"use"})
_HASH = re.compile(r"[0-9a-f]{32}")

Row = tuple[int, dict[str, float]]
"""A table row: its line number and its columns by name (``use`` dropped)."""


class _Source:
    """Lines of a ``.seq`` file and where they came from, for error messages."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, line: int, problem: str, expected: str) -> InputError:
        return InputError(f"{self.path}:{line}: {problem}; expected {expected}")


# --- reading --------------------------------------------------------------------------------


def read_seq(path: Path) -> Sequence:
    """Read a Pulseq 1.2, 1.3, 1.4 or 1.5 ``.seq`` file.

    Raises:
        InputError: The file is missing, malformed, or its ``[SIGNATURE]`` does not match its
            content; the message names the file, the line and what was expected there.
    """
    path = Path(path)
    src = _Source(path)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read Pulseq file ({exc})") from exc
    sections = _split(text, src)
    _check_signature(data, sections.get("SIGNATURE"), src)
    minor = max(_version(sections.get("VERSION", []), src)[1], 3)
    defs = _definitions(sections.get("DEFINITIONS", []))
    rasters = {
        name: _number(defs.get(key, [str(default)])[0], 0, src, f"{key} in seconds")
        for name, key, default in (
            ("grad", "GradientRasterTime", GRAD_RASTER),
            ("rf", "RadiofrequencyRasterTime", RF_RASTER),
            ("block", "BlockDurationRaster", BLOCK_RASTER),
        )
    }
    shapes = _shapes(sections.get("SHAPES", []), minor, src)
    tables = {
        name: _table(sections, name, layouts[minor], src) for name, layouts in _LAYOUTS.items()
    }
    rows = [(line, _block_ids(cols, line, src)) for line, cols in sections.get("BLOCKS", [])]
    _check_block_samples(rows, tables, shapes, src)
    blocks: list[Block] = []
    for line, ids in rows:
        rf = _rf(tables["RF"], ids[2], line, shapes, rasters["rf"], src) if ids[2] else None
        g = [_gradient(ids[k], tables, shapes, rasters["grad"], line, src) for k in (3, 4, 5)]
        adc = _adc(tables["ADC"], ids[6], line, src) if ids[6] else None
        duration = None
        if minor >= 4:
            duration = ids[1] * rasters["block"]
        elif ids[1]:
            _, delay = _row(tables["DELAYS"], ids[1], line, "delay", "[DELAYS]", src)
            events = [e for e in (rf, *g, adc) if e is not None]
            duration = max([delay["delay"] * 1e-6, *(e.duration for e in events)])
        try:
            blocks.append(Block(duration=duration, rf=rf, gx=g[0], gy=g[1], gz=g[2], adc=adc))
        except InputError as exc:
            raise src.fail(line, str(exc), "a duration covering the block's events") from exc
    if not blocks:
        raise InputError(f"{path}: no [BLOCKS]; expected at least one block")
    return _sequence(blocks, defs, path)


def _block_ids(cols: list[str], line: int, src: _Source) -> list[int]:
    if len(cols) not in (7, 8):
        raise src.fail(line, f"block has {len(cols)} columns", "NUM DUR RF GX GY GZ ADC [EXT]")
    return [_integer(c, line, src, "integer event ids") for c in cols]


def _check_block_samples(
    rows: list[tuple[int, list[int]]],
    tables: dict[str, dict[int, Row]],
    shapes: dict[int, np.ndarray],
    src: _Source,
) -> None:
    """Refuse blocks whose events expand past ``MAX_EXPANDED_SAMPLES``, before expanding any.

    Each block's RF waveform, resampled RF, gradient shapes and ADC samples are counted from
    the table rows and shape lengths alone; ids that name nothing count 0 here and are refused
    by name when the block is built.
    """

    def size(sid: float) -> int:
        shape = shapes.get(int(sid))
        return 0 if shape is None else shape.size

    total = 0
    for _, ids in rows:
        if (found := tables["RF"].get(ids[2])) is not None:
            row = found[1]
            total += size(row["mag"])
            if (times := shapes.get(int(row.get("time", 0)))) is not None and times.size:
                total += max(math.ceil(times[-1]), 0)  # the resampled waveform
        for gid in ids[3:6]:
            if gid not in tables["TRAP"] and (found := tables["GRADIENTS"].get(gid)):
                total += size(found[1]["shape"])
        if (found := tables["ADC"].get(ids[6])) is not None:
            total += max(int(found[1]["num"]), 0)
    if total > MAX_EXPANDED_SAMPLES:
        raise src.fail(
            rows[0][0],
            f"[BLOCKS] expands to {total} RF, gradient and ADC samples over {len(rows)} blocks",
            f"at most {MAX_EXPANDED_SAMPLES}",
        )


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


def _check_signature(data: bytes, rows: list[tuple[int, list[str]]] | None, src: _Source) -> None:
    """Check the md5 of everything before the newline that precedes ``[SIGNATURE]``.

    Unsigned files (hand-written, or from writers older than signatures) are read as they are.
    """
    if rows is None:
        return
    values = {cols[0]: cols[1:] for _, cols in rows}
    first = min((line for line, _ in rows), default=0)
    if values.get("Type") != ["md5"]:
        raise src.fail(first, f"[SIGNATURE] Type {values.get('Type')}", "'Type md5'")
    expected = values.get("Hash", [""])
    if len(expected) != 1 or not _HASH.fullmatch(expected[0].lower()):
        raise src.fail(first, f"[SIGNATURE] Hash {expected}", "'Hash' and 32 hex digits")
    # The header line itself, not the comments below it that name it.
    end = 0 if data.startswith(b"[SIGNATURE]") else data.find(b"\n[SIGNATURE]")
    actual = hashlib.md5(data[:end], usedforsecurity=False).hexdigest()
    if actual != expected[0].lower():
        raise InputError(
            f"{src.path}: [SIGNATURE] md5 {expected[0]} does not match the content's md5 "
            f"{actual}; expected the file as its writer signed it (was it edited or truncated?)"
        )


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
    if major != 1 or minor not in (2, 3, 4, 5):
        raise src.fail(lines["major"], f"version {major}.{minor}", "Pulseq 1.2 to 1.5")
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
    layout: tuple[str, ...],
    src: _Source,
) -> dict[int, Row]:
    out: dict[int, Row] = {}
    columns = " ".join(layout)
    for line, cols in sections.get(name, []):
        if len(cols) != len(layout):
            raise src.fail(
                line, f"[{name}] row has {len(cols)} columns", f"{len(layout)}: {columns}"
            )
        key = _integer(cols[0], line, src, f"an integer id in [{name}]")
        out[key] = (
            line,
            {
                column: _number(text, line, src, f"numbers: {columns}")
                for column, text in zip(layout, cols, strict=True)
                if column not in _TEXT_COLUMNS
            },
        )
    return out


def _row(
    table: dict[int, Row], key: int, block_line: int, what: str, name: str, src: _Source
) -> Row:
    if key not in table:
        raise src.fail(block_line, f"block refers to {what} {key}", f"an id in {name}")
    return table[key]


def _shapes(rows: list[tuple[int, list[str]]], minor: int, src: _Source) -> dict[int, np.ndarray]:
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
            samples = _integer(cols[1], line, src, "'num_samples M'")
            if samples > MAX_SHAPE_SAMPLES:
                raise src.fail(line, f"num_samples {samples}", f"at most {MAX_SHAPE_SAMPLES}")
            first, _, data = raw[current]
            raw[current] = (first, samples, data)
        else:
            if current is None or raw[current][1] < 0 or len(cols) != 1:
                raise src.fail(line, f"shape data {' '.join(cols)!r}", "one number per line")
            raw[current][2].append(_number(cols[0], line, src, "a shape sample"))
    if (total := sum(max(n, 0) for _, n, _ in raw.values())) > MAX_EXPANDED_SAMPLES:
        raise src.fail(
            rows[0][0],
            f"[SHAPES] expands to {total} samples over {len(raw)} shapes",
            f"at most {MAX_EXPANDED_SAMPLES}",
        )
    # Before 1.4 every shape is compressed, even one as long as its samples.
    return {
        sid: _decompress(data, n, minor >= 4, line, src) for sid, (line, n, data) in raw.items()
    }


def _decompress(
    packed: list[float], samples: int, raw_if_full: bool, line: int, src: _Source
) -> np.ndarray:
    """Pulseq shape decompression: run-length decode, then cumulative sum (unless stored raw).

    The decoded length is counted before anything is expanded, so a repeat count such as
    ``1e12`` is refused instead of allocated.
    """
    if raw_if_full and samples == len(packed):
        return np.asarray(packed)
    values: list[float] = []
    counts: list[int] = []
    i = 0
    while i < len(packed):
        if i + 1 < len(packed) and packed[i] == packed[i + 1]:
            if i + 2 >= len(packed) or packed[i + 2] != int(packed[i + 2]) or packed[i + 2] < 0:
                raise src.fail(line, "a repeated value without a repeat count", "value value count")
            values.append(packed[i])
            counts.append(int(packed[i + 2]) + 2)
            i += 3
        else:
            values.append(packed[i])
            counts.append(1)
            i += 1
    if (total := sum(counts)) != samples:
        raise src.fail(line, f"shape decompresses to {total} samples", f"num_samples {samples}")
    return np.cumsum(np.repeat(values, counts))


def _shape(shapes: dict[int, np.ndarray], sid: int, line: int, src: _Source) -> np.ndarray:
    if sid not in shapes:
        raise src.fail(line, f"refers to shape {sid}", "an id in [SHAPES]")
    return shapes[sid]


def _no_ppm(row: dict[str, float], line: int, what: str, src: _Source) -> None:
    if row.get("freq_ppm", 0) or row.get("phase_ppm", 0):
        raise src.fail(line, f"{what} with ppm offsets", "freqPPM 0 and phasePPM 0")


def _rf(
    rfs: dict[int, Row],
    rid: int,
    block_line: int,
    shapes: dict[int, np.ndarray],
    raster: float,
    src: _Source,
) -> RF:
    line, row = _row(rfs, rid, block_line, "RF", "[RF]", src)
    _no_ppm(row, line, "RF", src)
    mag = _shape(shapes, int(row["mag"]), line, src)
    cycles = _shape(shapes, int(row["phase_shape"]), line, src)
    if mag.size != cycles.size:
        raise src.fail(line, f"RF shapes of {mag.size} and {cycles.size} samples", "equal lengths")
    waveform = 2 * np.pi * row["amp"] * mag * np.exp(2j * np.pi * cycles)
    if time_id := int(row.get("time", 0)):
        waveform = _on_raster(waveform, _shape(shapes, time_id, line, src), line, src)
    delay, freq, phase = row["delay"] * 1e-6, row["freq"], row["phase"]
    if freq == 0 and np.ptp(np.abs(waveform)) == 0 and np.ptp(np.angle(waveform)) == 0:
        return RF(waveform=waveform[:1], raster=waveform.size * raster, delay=delay, phase=phase)
    return RF(waveform=waveform, raster=raster, delay=delay, phase=phase, freq_offset=freq)


def _on_raster(waveform: np.ndarray, times: np.ndarray, line: int, src: _Source) -> np.ndarray:
    """An RF waveform given at ``times`` (in rasters), linear in between, at raster centres."""
    if times.size != waveform.size or times[0] < 0 or np.any(np.diff(times) < 0):
        raise src.fail(
            line,
            f"RF time shape of {times.size} samples from {times[0]} to {times[-1]}",
            f"{waveform.size} non-decreasing times >= 0",
        )
    count = math.ceil(times[-1] - 1e-9)
    if not 1 <= count <= MAX_SHAPE_SAMPLES:
        raise src.fail(line, f"RF time shape lasting {count} rasters", f"1 to {MAX_SHAPE_SAMPLES}")
    centres = np.arange(count) + 0.5
    real = np.interp(centres, times, waveform.real, left=0.0, right=0.0)
    imag = np.interp(centres, times, waveform.imag, left=0.0, right=0.0)
    return real + 1j * imag


def _gradient(
    gid: int,
    tables: dict[str, dict[int, Row]],
    shapes: dict[int, np.ndarray],
    raster: float,
    block_line: int,
    src: _Source,
) -> Gradient | None:
    if gid == 0:
        return None
    if gid in tables["TRAP"]:
        _, row = tables["TRAP"][gid]
        return Trapezoid(
            amplitude=row["amp"] / GAMMA_HZ,
            rise=row["rise"] * 1e-6,
            flat=row["flat"] * 1e-6,
            fall=row["fall"] * 1e-6,
            delay=row["delay"] * 1e-6,
        )
    line, row = _row(tables["GRADIENTS"], gid, block_line, "gradient", "[TRAP] or [GRADIENTS]", src)
    if int(row.get("time", 0)) != 0:
        raise src.fail(line, "gradient with a time shape", "time_shape_id 0 (regular raster)")
    shape = _shape(shapes, int(row["shape"]), line, src)
    return Waveform(samples=row["amp"] / GAMMA_HZ * shape, raster=raster, delay=row["delay"] * 1e-6)


def _adc(adcs: dict[int, Row], aid: int, block_line: int, src: _Source) -> ADC:
    line, row = _row(adcs, aid, block_line, "ADC", "[ADC]", src)
    _no_ppm(row, line, "ADC", src)
    if int(row.get("phase_shape", 0)) != 0:
        raise src.fail(line, "ADC with a phase shape", "phase_id 0")
    if row["num"] != int(row["num"]):
        raise src.fail(line, f"{row['num']} is not an integer", "an integer sample count")
    try:
        return ADC(
            samples=int(row["num"]),
            dwell=row["dwell"] * 1e-9,
            delay=row["delay"] * 1e-6,
            phase=row["phase"],
            freq_offset=row["freq"],
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
