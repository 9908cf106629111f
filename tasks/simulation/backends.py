"""Array backends for the Bloch kernels: NumPy, and torch (CPU or CUDA) imported lazily.

The kernels in ``bloch`` use only what both libraries spell the same way (operators, ``exp``,
``cos``, ``sin``, ``sqrt``, ``where``, ``@``, ``.real``, ``.imag``, ``.conj()``), through
``backend.xp``; arrays are created and copied back through the backend's methods.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from tasks.errors import InputError

Precision = Literal["float64", "float32"]


class NumpyBackend:
    """NumPy arrays on the CPU."""

    name = "numpy"

    def __init__(self, precision: Precision = "float64") -> None:
        self.xp: Any = np
        self.real = np.dtype(precision)
        self.complex = np.result_type(self.real, np.complex64)

    def asarray(self, array: Any, *, complex_: bool = False) -> np.ndarray:
        """A contiguous array of this backend's real (or complex) dtype."""
        return np.ascontiguousarray(array, dtype=self.complex if complex_ else self.real)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """An uninitialised complex array."""
        return np.empty(shape, dtype=self.complex)

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """A complex array of zeros."""
        return np.zeros(shape, dtype=self.complex)

    def to_numpy(self, array: Any) -> np.ndarray:
        """The array as complex128 NumPy."""
        return np.asarray(array, dtype=np.complex128)


class TorchBackend:
    """torch tensors on ``device`` ("cpu", "cuda", "cuda:1", ...)."""

    name = "torch"

    def __init__(self, device: str = "cpu", precision: Precision = "float64") -> None:
        import torch  # lazily: only this backend needs it

        self.torch = torch
        self.xp: Any = torch
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"device={device!r} but torch.cuda is not available; expected 'cpu'")
        self.device = torch.device(device)
        self.real = torch.float64 if precision == "float64" else torch.float32
        self.complex = torch.complex128 if precision == "float64" else torch.complex64

    def asarray(self, array: Any, *, complex_: bool = False) -> Any:
        """A tensor of this backend's real (or complex) dtype on its device."""
        dtype = self.complex if complex_ else self.real
        if isinstance(array, self.torch.Tensor):
            return array.to(device=self.device, dtype=dtype)
        data = np.ascontiguousarray(array, dtype=np.complex128 if complex_ else np.float64)
        return self.torch.from_numpy(data).to(device=self.device, dtype=dtype)

    def empty(self, shape: tuple[int, ...]) -> Any:
        """An uninitialised complex tensor."""
        return self.torch.empty(shape, dtype=self.complex, device=self.device)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """A complex tensor of zeros."""
        return self.torch.zeros(shape, dtype=self.complex, device=self.device)

    def to_numpy(self, array: Any) -> np.ndarray:
        """The tensor as complex128 NumPy on the host."""
        return array.detach().to("cpu").numpy().astype(np.complex128)


def get_backend(
    name: str, device: str = "cpu", precision: Precision = "float64"
) -> NumpyBackend | TorchBackend:
    """The backend called ``name`` ("numpy" or "torch")."""
    if precision not in ("float64", "float32"):
        raise InputError(f"precision={precision!r}; expected 'float64' or 'float32'")
    if name == "numpy":
        if device != "cpu":
            raise InputError(f"device={device!r} with backend='numpy'; expected 'cpu'")
        return NumpyBackend(precision)
    if name == "torch":
        return TorchBackend(device, precision)
    raise InputError(f"backend={name!r}; expected 'numpy' or 'torch'")
