"""Read a batch of slices without reading the rest of the file.

A slice-batch task needs only its own slices, so its memory must not grow with the file. Two
sources can be read by slice: a ``.npy`` file (memory-mapped; only the batch is copied out)
and a 2-D MRD file (h5py reads only the batch's readouts). Everything else is staged once,
by ``slice_source``, into a ``.npy`` of the signal in the package layout: MATLAB files,
``.npz`` members and twix cannot be read by slice, and 3-D data (MRD partitions, NumPy/MATLAB
``layout="volume"``) is returned in hybrid space, whose every "slice" (x position) needs the
whole volume's FFT along x. The values are those ``read_raw`` returns, slice for slice.
A calibration reference (``RawData.reference``) is read the same way by ``read_reference``:
from the MRD file itself, or from its own staged ``.npy`` next to the signal's.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.errors import InputError
from tasks.mr.io.arrays import as_complex
from tasks.mr.io.mrd_read import mrd_signal
from tasks.mr.io.read import detect_format, read_info, read_raw
from tasks.mr.io.types import Layout, check_finite


@dataclass(frozen=True, slots=True)
class SliceSource:
    """A file whose slices can be read one batch at a time.

    Attributes:
        path: The file: the input itself, or its staged ``.npy``.
        reader: ``"npy"`` (memory-mapped) or ``"mrd"`` (h5py, the batch's readouts only).
        shape: The signal's shape in the package layout ``(x, y, coils, slices, replicas)``.
        key: MRD group.
        remove_oversampling: Remove 2x readout oversampling (MRD), as ``read_raw``.
        reference: Where the calibration reference is: the staged reference ``.npy``
            (reader ``"npy"``), the MRD file itself (reader ``"mrd"``), or None without one.
    """

    path: Path
    reader: Literal["npy", "mrd"]
    shape: tuple[int, int, int, int, int]
    key: str | None = None
    remove_oversampling: bool = True
    reference: Path | None = None


def slice_source(
    path: Path,
    staging_dir: Path,
    *,
    key: str | None = None,
    layout: Layout = "slices",
    remove_oversampling: bool = True,
) -> SliceSource:
    """Where to read ``path``'s slices from, staging it once if it cannot be read by slice.

    Args:
        path: The signal file (any format ``read_raw`` reads).
        staging_dir: Where a staged copy goes (the run's scratch); created if missing. A copy
            already there (same file, size, modification time and options) is reused.
        key: ``.npz`` member, MATLAB variable or MRD group, as ``read_raw``.
        layout: As ``read_raw``.
        remove_oversampling: As ``read_raw``.
    """
    path = Path(path)
    info, shape = read_info(path, key=key, layout=layout, remove_oversampling=remove_oversampling)
    shape5 = (shape[0], shape[1], shape[2], shape[3], shape[4])
    fmt = detect_format(path)
    if fmt == "mrd" and info.kind == "2d":
        reference = path if info.reference else None
        return SliceSource(path, "mrd", shape5, key, remove_oversampling, reference)
    if fmt == "numpy" and info.kind == "2d" and "key" not in info.summary:  # .npy, not .npz
        return SliceSource(path, "npy", shape5)
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{key}|{layout}"
    identity += f"|{remove_oversampling}"
    staged = (
        Path(staging_dir) / f"{path.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.npy"
    )
    reference = staged.with_name(f"{staged.stem}-reference.npy") if info.reference else None
    # The reference is written first: a staged signal means both are there.
    if not staged.exists():
        staged.parent.mkdir(parents=True, exist_ok=True)
        raw = read_raw(path, key=key, layout=layout, remove_oversampling=remove_oversampling)
        if reference is not None and raw.reference is not None:
            _save_atomic(reference, raw.reference)
        _save_atomic(staged, raw.signal)
    return SliceSource(staged, "npy", shape5, reference=reference)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` under a temporary name, then renamed onto ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as stream:
            np.save(stream, np.ascontiguousarray(array))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_slices(source: SliceSource, slices: Sequence[int]) -> np.ndarray:
    """The signal of ``slices`` only, ``(x, y, coils, len(slices), replicas)`` complex.

    Raises:
        InputError: A slice index outside the file, or NaN/Inf in the batch.
    """
    wanted, unique, inverse = _batch(source, slices)
    if source.reader == "npy":
        signal = _mapped_batch(source.path, source.shape, unique)
    else:
        part = mrd_signal(
            source.path, source.key, source.remove_oversampling, load=True, batch=unique
        )
        if part.signal is None:
            raise RuntimeError(f"MRD reader returned no signal for {source.path}")
        signal = part.signal
    if len(unique) != len(wanted) or np.any(unique != wanted):
        signal = signal[:, :, :, inverse]
    check_finite(signal, f"slices {wanted} of signal file {source.path}")
    return signal


def read_reference(source: SliceSource, slices: Sequence[int]) -> np.ndarray | None:
    """The calibration reference of ``slices``, ``(x, y, coils, len(slices))``, or None.

    As ``RawData.reference`` for those slices; None when the file has no calibration-only
    readouts.

    Raises:
        InputError: A slice index outside the file, or NaN/Inf in the reference.
    """
    if source.reference is None:
        return None
    wanted, unique, inverse = _batch(source, slices)
    if source.reader == "npy":
        reference = _mapped_batch(source.reference, source.shape[:4], unique)
    else:
        part = mrd_signal(
            source.reference,
            source.key,
            source.remove_oversampling,
            load=True,
            batch=unique,
            signal=False,
        )
        if part.reference is None:
            raise RuntimeError(f"MRD reader returned no reference for {source.reference}")
        reference = part.reference
    reference = reference[:, :, :, inverse]
    check_finite(reference, f"calibration readouts of slices {wanted} of {source.reference}")
    return reference


def _batch(source: SliceSource, slices: Sequence[int]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The slices asked for, their sorted unique indices and the inverse map."""
    count = source.shape[3]
    wanted = [int(s) for s in slices]
    if not wanted or any(not 0 <= s < count for s in wanted):
        raise InputError(f"slices {wanted}; expected a non-empty list of indices below {count}")
    unique, inverse = np.unique(wanted, return_inverse=True)
    return wanted, unique, inverse


def _mapped_batch(path: Path, shape: tuple[int, ...], unique: np.ndarray) -> np.ndarray:
    """Slices ``unique`` (axis 3) of a ``.npy`` of ``shape``, through a memory map."""
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    # Inserting unit axes keeps the memory map; indexing copies only the batch, whatever
    # the file's order (np.take would first copy a Fortran-ordered file whole).
    batch = mapped.reshape(shape)[:, :, :, unique]
    array, _ = as_complex(np.asarray(batch), f"signal file {path}")
    return array
