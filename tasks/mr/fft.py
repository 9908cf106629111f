"""Centered, orthonormal 2D Fourier transforms between k-space and image space.

Orthonormal scaling keeps white noise of variance v at variance v per pixel, which the SNR
methods rely on. Spatial axes default to the first two, the primer's ``(x, y, ...)`` layout.

When both spatial sizes are even, the centring shifts are sign modulations instead of copies:
with ``M = N/2``, ``fftshift(ifft(ifftshift(x)))[k] = (-1)^(k+M) ifft((-1)^n x)[k]``, and the same
for ``fft``. A transform then costs one modulated copy of its input (none in
``ifft2c_inplace``), the FFT in place and one in-place modulation, instead of three fresh
arrays. Odd sizes use ``fftshift``/``ifftshift``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

SPATIAL = (0, 1)


@lru_cache(maxsize=32)
def _signs(nx: int, ny: int, dtype: np.dtype, shift: int) -> np.ndarray:
    """``(-1)^(i + j + shift)`` on an (nx, ny) grid, read-only."""
    parity = (np.arange(nx)[:, None] + np.arange(ny)[None, :] + shift) % 2
    signs = (1 - 2 * parity).astype(dtype)
    signs.flags.writeable = False
    return signs


def _plan(data: np.ndarray, axes: tuple[int, int]) -> tuple[int, int] | None:
    """The two axes as non-negative ints when the modulation applies, else None."""
    if data.dtype.kind not in "fc" or len(tuple(axes)) != 2:
        return None
    n = data.ndim
    if not all(isinstance(a, int | np.integer) and -n <= a < n for a in axes):
        return None
    first, second = (int(a) % n for a in axes)
    if first == second or data.shape[first] % 2 or data.shape[second] % 2:
        return None
    return first, second


def _broadcast(signs: np.ndarray, ndim: int, axes: tuple[int, int]) -> np.ndarray:
    """``signs`` (n_first, n_second) shaped to broadcast against an ``ndim`` array on ``axes``."""
    if axes[0] > axes[1]:
        signs, axes = signs.T, (axes[1], axes[0])
    shape = [1] * ndim
    shape[axes[0]], shape[axes[1]] = signs.shape
    return signs.reshape(shape)


def _transform(data: np.ndarray, axes: tuple[int, int], inverse: bool, own: bool) -> np.ndarray:
    """Centred orthonormal 2D (i)FFT; ``own``: ``data`` may be overwritten."""
    transform = scipy.fft.ifft2 if inverse else scipy.fft.fft2
    plan = _plan(data, axes)
    if plan is None:
        shifted = scipy.fft.ifftshift(data, axes=axes)  # a copy: transform it in place
        out = transform(shifted, axes=axes, norm="ortho", workers=-1, overwrite_x=True)
        return scipy.fft.fftshift(out, axes=axes)
    n_first, n_second = data.shape[plan[0]], data.shape[plan[1]]
    real = np.finfo(data.dtype).dtype  # float32 for complex64, float64 for complex128
    signs_in = _broadcast(_signs(n_first, n_second, real, 0), data.ndim, plan)
    if own and data.dtype.kind == "c":
        np.multiply(data, signs_in, out=data)
        modulated = data
    else:
        modulated = data * signs_in
    out = transform(modulated, axes=axes, norm="ortho", workers=-1, overwrite_x=True)
    centre = (n_first // 2 + n_second // 2) % 2
    signs_out = _broadcast(_signs(n_first, n_second, real, centre), out.ndim, plan)
    np.multiply(out, signs_out.astype(out.real.dtype, copy=False), out=out)
    return out


def ifft2c(kspace: np.ndarray, axes: tuple[int, int] = SPATIAL) -> np.ndarray:
    """Image from k-space: ``fftshift(ifft2(ifftshift(K)))`` with ``norm="ortho"``.

    Args:
        kspace: Complex k-space, shape ``(x, y, ...)`` (any trailing coil/slice axes).
        axes: The two spatial axes.

    Returns:
        Complex images of the same shape and precision.
    """
    return _transform(np.asarray(kspace), axes, inverse=True, own=False)


def ifft2c_inplace(kspace: np.ndarray, axes: tuple[int, int] = SPATIAL) -> np.ndarray:
    """``ifft2c`` of a temporary: may transform ``kspace`` in its own memory (no copy).

    Args:
        kspace: Complex k-space the caller no longer needs; its contents are undefined after.
        axes: The two spatial axes.

    Returns:
        Complex images, the same as ``ifft2c(kspace)``; often ``kspace`` itself.
    """
    kspace = np.asarray(kspace)
    return _transform(kspace, axes, inverse=True, own=kspace.flags.writeable)


def fft2c(image: np.ndarray, axes: tuple[int, int] = SPATIAL) -> np.ndarray:
    """k-space from images; the inverse of ``ifft2c``."""
    return _transform(np.asarray(image), axes, inverse=False, own=False)
