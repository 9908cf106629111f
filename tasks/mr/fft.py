"""Centered, orthonormal 2D Fourier transforms between k-space and image space.

Orthonormal scaling keeps white noise of variance v at variance v per pixel, which the SNR
methods rely on. Spatial axes default to the first two, the primer's ``(x, y, ...)`` layout.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

SPATIAL = (0, 1)


def ifft2c(kspace: np.ndarray, axes: tuple[int, int] = SPATIAL) -> np.ndarray:
    """Image from k-space: ``fftshift(ifft2(ifftshift(K)))`` with ``norm="ortho"``.

    Args:
        kspace: Complex k-space, shape ``(x, y, ...)`` (any trailing coil/slice axes).
        axes: The two spatial axes.

    Returns:
        Complex images of the same shape and precision.
    """
    shifted = scipy.fft.ifftshift(kspace, axes=axes)
    image = scipy.fft.ifft2(shifted, axes=axes, norm="ortho", workers=-1)
    return scipy.fft.fftshift(image, axes=axes)


def fft2c(image: np.ndarray, axes: tuple[int, int] = SPATIAL) -> np.ndarray:
    """k-space from images; the inverse of ``ifft2c``."""
    shifted = scipy.fft.ifftshift(image, axes=axes)
    kspace = scipy.fft.fft2(shifted, axes=axes, norm="ortho", workers=-1)
    return scipy.fft.fftshift(kspace, axes=axes)
