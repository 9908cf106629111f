"""Builders the reader tests share: random complex arrays, MATLAB v7.3 files, peak memory."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import h5py
import numpy as np


def random_complex(
    rng: np.random.Generator, shape: tuple[int, ...], dtype=np.complex64
) -> np.ndarray:
    """Standard complex normal samples (unit variance per real and imaginary part)."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def write_mat73(path: Path, **arrays: np.ndarray) -> Path:
    """A MATLAB v7.3 file as MATLAB writes one: HDF5 after a 512-byte text header, arrays
    transposed (column-major), complex as a {real, imag} compound, a MATLAB_class attribute."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            if np.iscomplexobj(array):
                data = np.empty(array.shape[::-1], dtype=[("real", "<f8"), ("imag", "<f8")])
                data["real"], data["imag"] = array.real.T, array.imag.T
            else:
                data = array.T
            f.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_("double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 24 12:00:00 2026"
    text += b" HDF5 schema 1.00 ."
    header = text.ljust(116) + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with path.open("r+b") as stream:
        stream.write(header.ljust(512, b"\x00"))
    return path


def peak_bytes(fn) -> int:
    """Peak bytes traced by tracemalloc while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
