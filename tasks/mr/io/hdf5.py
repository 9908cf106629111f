"""HDF5 files opened one at a time per process.

h5py 3.16 with HDF5 2.0 can crash (SIGSEGV) when two threads read files at once, though h5py
documents itself as thread-safe (h5py/h5py#2920); a lock held for the whole file session
avoids it. Dask runs slice batches as threads, and HDF5 serialises its calls anyway, so
the lock costs no parallelism.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py

_HDF5_LOCK = threading.RLock()


@contextlib.contextmanager
def open_hdf5(path: str | Path, mode: str = "r") -> Iterator[h5py.File]:
    """``h5py.File(path, mode)``, holding this process's HDF5 lock until it is closed."""
    with _HDF5_LOCK, h5py.File(path, mode) as f:
        yield f
