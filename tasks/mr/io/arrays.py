"""NumPy (``.npy``/``.npz``) and MATLAB (``.mat`` v5 and v7.3) arrays, coils last.

Accepted shapes:

- signal ``(x, y, coils)``: one slice, one replica;
- signal ``(x, y, coils, slices)``: the default reading of a 4-D array (``layout="slices"``);
- signal ``(x, y, coils, replicas)``: MR Optimum's multiple-replica input, with
  ``layout="replicas"``;
- signal ``(x, y, coils, slices, replicas)``;
- a volume ``(x, y, z, coils[, replicas])`` with ``layout="volume"``, returned in hybrid
  space (``tasks.mr.io.geometry``);
- noise ``(samples, coils)``, ``(readout, lines, coils)`` (flattened) or
  ``(readout, lines, coils, slices)`` (MR Optimum's per-slice noise, pooled);
- ``.npz`` member / MATLAB variable: ``key`` (``noise_key`` for the noise file; MR Optimum's
  ``npz_key``/``mat_key``), else the only array, else one named ``kspace`` (MR Optimum's
  default; ``noise`` for noise files).

Real-valued arrays (float or integer) are accepted and converted to complex
(``summary["converted_from_real"]``), since a real k-space is legal if unusual; MATLAB's
complex compound ``{real, imag}`` (v7.3) and NumPy structured ``{real, imag}`` arrays are
read as complex. Boolean, text and object arrays are refused.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import scipy.io

from tasks.errors import InputError
from tasks.mr.io.geometry import volume_as_slices
from tasks.mr.io.hdf5 import open_hdf5
from tasks.mr.io.types import HDF5_SIGNATURE, Header, Layout, NoisePart, SignalPart

ArrayFormat = Literal["numpy", "matlab"]


def array_signal(
    path: Path, fmt: ArrayFormat, key: str | None, layout: Layout, *, load: bool
) -> SignalPart:
    """The signal array of a NumPy or MATLAB file (its header only unless ``load``)."""
    where = f"signal file {path}"
    if load:
        array, name, real = load_array(path, fmt, key, noise=False)
        file_shape, dtype = array.shape, array.dtype
    else:
        file_shape, dtype, name = _array_header(path, fmt, key, noise=False)
        real = not (np.issubdtype(dtype, np.complexfloating) or dtype.names)
        complex_dtype(dtype, where)
    shape = _signal_shape(file_shape, layout, where)
    volume = layout == "volume"
    summary: dict[str, Any] = {
        "shape_in_file": list(file_shape),
        "layout": layout,
        "dtype": str(complex_dtype(dtype, where)),
    }
    if name:
        summary["key"] = name
    if real:
        summary["converted_from_real"] = True
    header = Header()
    if volume:
        header = Header(kind="3d", volume_matrix=(shape[3], shape[0], shape[1]))
        summary["hybrid_space"] = "inverse FFT along x; axes (y, z, coils, x, replicas)"
    part = SignalPart(header=header, shape=shape, summary=summary)
    if load:
        part.signal = volume_as_slices(array) if volume else array.reshape(shape)
    return part


def array_noise_file(path: Path, fmt: ArrayFormat, key: str | None) -> NoisePart:
    """The noise array of a NumPy or MATLAB file as ``(samples, coils)``."""
    array, name, real = load_array(path, fmt, key, noise=True)
    summary: dict[str, Any] = {"format": fmt, "shape_in_file": list(array.shape)}
    if name:
        summary["key"] = name
    if real:
        summary["converted_from_real"] = True
    if array.ndim >= 3:
        summary["readouts"] = int(np.prod(array.shape[1:])) // int(array.shape[2])
    return NoisePart(_noise_samples(array, f"noise file {path}"), None, summary)


def _signal_shape(shape: tuple[int, ...], layout: Layout, where: str) -> tuple[int, ...]:
    if layout == "volume":
        if len(shape) in (4, 5):
            x, y, z, coils = shape[:4]
            return (y, z, coils, x, shape[4] if len(shape) == 5 else 1)
        raise InputError(
            f"{where} has shape {tuple(shape)} with layout='volume'; expected "
            "(x, y, z, coils) or (x, y, z, coils, replicas)"
        )
    if len(shape) == 3:
        return (*shape, 1, 1)
    if len(shape) == 4:
        return (*shape, 1) if layout == "slices" else (*shape[:3], 1, shape[3])
    if len(shape) == 5:
        return tuple(shape)
    raise InputError(
        f"{where} has shape {tuple(shape)}; expected (x, y, coils), (x, y, coils, slices), "
        "(x, y, coils, replicas) with layout='replicas', (x, y, coils, slices, replicas), or "
        "a volume (x, y, z, coils[, replicas]) with layout='volume'"
    )


def _noise_samples(array: np.ndarray, where: str) -> np.ndarray:
    """Noise as (samples, coils), readout-contiguous (consecutive samples along the readout)."""
    if array.ndim == 2:
        return array
    if array.ndim == 3:  # (readout, lines, coils)
        return np.moveaxis(array, 0, 1).reshape(-1, array.shape[2])
    if array.ndim == 4:  # (readout, lines, coils, slices)
        return np.moveaxis(array, (3, 1), (0, 1)).reshape(-1, array.shape[2])
    raise InputError(
        f"{where} has shape {array.shape}; expected (samples, coils), (readout, lines, coils) "
        "or (readout, lines, coils, slices)"
    )


def complex_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """The complex dtype an array of ``dtype`` is read as (complex64 for small types).

    Raises:
        InputError: Boolean, text or object values.
    """
    if dtype.names and {"real", "imag"} <= set(dtype.names):
        dtype = dtype["real"]
    if np.issubdtype(dtype, np.complexfloating):
        return np.dtype(np.complex64 if dtype.itemsize <= 8 else np.complex128)
    if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer):
        small = dtype.itemsize <= (4 if dtype.kind == "f" else 2)
        return np.dtype(np.complex64 if small else np.complex128)
    raise InputError(f"{where} holds {dtype} values; expected complex (or real numeric) k-space")


def as_complex(array: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """The array as complex64/complex128, and whether it was real-valued."""
    target = complex_dtype(array.dtype, where)
    if array.dtype.names:
        out = np.empty(array.shape, dtype=target)
        out.real, out.imag = array["real"], array["imag"]
        return out, False
    if array.dtype == target:
        return array, False
    return array.astype(target), not np.iscomplexobj(array)


def _pick(names: Sequence[str], key: str | None, path: Path, *, noise: bool, what: str) -> str:
    if key is not None:
        if key not in names:
            raise InputError(f"{path} has no {what} {key!r}; it has {sorted(names)}")
        return key
    if len(names) == 1:
        return names[0]
    for preferred in ("noise", "kspace") if noise else ("kspace", "signal"):
        if preferred in names:
            return preferred
    option = "noise_key" if noise else "key"
    raise InputError(
        f"{path} holds {len(names)} arrays {sorted(names)}; expected one, or pass {option}="
    )


# What NumPy, zipfile, scipy.io and h5py raise on damaged files.
_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    TypeError,
    zipfile.BadZipFile,
    NotImplementedError,
    scipy.io.matlab.MatReadError,
)


@contextlib.contextmanager
def _reading(where: str, fmt: str) -> Iterator[None]:
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(
            f"{where} cannot be read as {fmt} ({exc}); expected an intact file"
        ) from exc


def load_array(
    path: Path, fmt: ArrayFormat, key: str | None, *, noise: bool
) -> tuple[np.ndarray, str | None, bool]:
    """Read one array; returns it as complex, the member/variable name and whether it was real."""
    where = f"{'noise' if noise else 'signal'} file {path}"
    with _reading(where, fmt):
        if fmt == "numpy":
            array, name = _load_numpy(path, key, noise)
        else:
            array, name = _load_matlab(path, key, noise)
    complex_array, real = as_complex(array, where)
    return complex_array, name, real


def _load_numpy(path: Path, key: str | None, noise: bool) -> tuple[np.ndarray, str | None]:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        name = _pick(loaded.files, key, path, noise=noise, what="member")
        return loaded[name], name


def _load_matlab(path: Path, key: str | None, noise: bool) -> tuple[np.ndarray, str | None]:
    if _is_mat73(path):
        with open_hdf5(path) as f:
            variables = _mat73_variables(f)
            name = _pick(list(variables), key, path, noise=noise, what="variable")
            data = variables[name][()]
            return np.asarray(data).T, name
    name = _pick(list(_mat5_variables(path)), key, path, noise=noise, what="numeric variable")
    return scipy.io.loadmat(path, variable_names=[name])[name], name


def _mat5_variables(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Numeric variables of a MATLAB v5 file: name -> (shape, MATLAB class)."""
    return {
        name: (tuple(shape), kind)
        for name, shape, kind in scipy.io.whosmat(path)
        if kind not in ("struct", "cell", "char", "object", "sparse")
    }


def _array_header(
    path: Path, fmt: ArrayFormat, key: str | None, *, noise: bool
) -> tuple[tuple[int, ...], np.dtype, str | None]:
    """Shape and dtype of the chosen array without reading its values."""
    where = f"{'noise' if noise else 'signal'} file {path}"
    with _reading(where, fmt):
        if fmt == "numpy" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                name = _pick(members, key, path, noise=noise, what="member")
                with archive.open(name + ".npy") as stream:
                    version = np.lib.format.read_magic(stream)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = reader(stream)
                    return tuple(shape), np.dtype(dtype), name
        if fmt == "numpy":
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            return mapped.shape, mapped.dtype, None
        if _is_mat73(path):
            with open_hdf5(path) as f:
                variables = _mat73_variables(f)
                name = _pick(list(variables), key, path, noise=noise, what="variable")
                return tuple(reversed(variables[name].shape)), variables[name].dtype, name
        variables = _mat5_variables(path)
        name = _pick(list(variables), key, path, noise=noise, what="numeric variable")
        shape, kind = variables[name]
        return shape, _MAT_CLASSES.get(kind, np.dtype(np.complex128)), name


# whosmat does not say whether a variable is complex; size floats as complex.
_MAT_CLASSES = {
    "double": np.dtype(np.complex128),
    "single": np.dtype(np.complex64),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "uint16": np.dtype(np.uint16),
    "int32": np.dtype(np.int32),
    "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64),
    "uint64": np.dtype(np.uint64),
    "logical": np.dtype(np.bool_),
}


def _is_mat73(path: Path) -> bool:
    with path.open("rb") as stream:
        head = stream.read(520)
    return head[512:520] == HDF5_SIGNATURE or head.startswith(HDF5_SIGNATURE)


def _mat73_variables(f: h5py.File) -> dict[str, h5py.Dataset]:
    """Numeric top-level variables of a MATLAB v7.3 file (structs, cells and refs left out)."""
    out = {}
    for name, item in f.items():
        if name.startswith("#") or not isinstance(item, h5py.Dataset):
            continue
        kind = item.attrs.get("MATLAB_class", b"")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind in ("cell", "struct", "char", "function_handle") or "MATLAB_empty" in item.attrs:
            continue
        out[name] = item
    return out
