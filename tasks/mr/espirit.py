"""ESPIRiT coil sensitivities and masks from a fully sampled calibration region (Uecker 2014).

Follows sigpy's ``EspiritCalib`` (``sigpy/mri/app.py``), coils last:

1. The central ``calib_width`` x ``calib_width`` block of k-space (start ``N // 2 - w // 2``, as
   ``sigpy.resize`` crops) gives the calibration matrix: one row per ``kernel_width``-square
   patch, flattened over (patch x, patch y, coil).
2. Its right singular vectors with ``sigma > thresh * sigma_max`` (rows of ``V^H``) are the
   kernels. Placed on the full grid at ``N // 2 - kernel_width // 2`` and taken to image space
   with ``ifft2c``, they give per pixel ``A^H A(r) = N / kernel_width^2 sum_k v_k(r) v_k(r)^H``.
3. The top eigenvector of ``A^H A`` is the map (unit norm over coils) and its eigenvalue, about
   1 where the coils see signal, decides the crop: maps are zeroed where it is ``<= crop``.
4. Phases are relative to coil 0: ``S *= conj(S_0) / |S_0|``.

Step 2 is computed without forming one image per kernel: ``sum_k v_k v_k^H`` only depends on
the autocorrelation of the kernels over the ``(2 kernel_width - 1)^2`` patch shifts, which is
placed on the grid and Fourier transformed once per coil pair. The result equals sigpy's loop
over kernels to rounding, in ``O(coils^2 N log N)`` time and one ``(x, y, coils, coils)`` array.

The eigenvector comes from a batched power iteration started from ones, as sigpy
(``method="power"``, ``max_iter`` steps), or from ``numpy.linalg.eigh`` on all pixels at once
(``method="eigh"``, exact, ``max_iter`` unused).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tasks.errors import InputError
from tasks.mr.fft import ifft2c

Method = Literal["power", "eigh"]


def espirit_maps(
    kspace: np.ndarray,
    calib_width: int = 24,
    kernel_width: int = 6,
    thresh: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 30,
    *,
    method: Method = "power",
) -> np.ndarray:
    """ESPIRiT sensitivity maps, one set (the top eigenvector per pixel).

    Args:
        kspace: k-space, complex, shape (x, y, coils), with a fully sampled centre of at least
            ``calib_width`` samples along x and y.
        calib_width: Side of the central calibration square, in samples.
        kernel_width: Side of the k-space kernel, in samples; < ``calib_width``.
        thresh: Keep singular vectors with ``sigma > thresh * sigma_max``; in [0, 1).
        crop: Zero the maps where the top eigenvalue is ``<= crop``; in [0, 1].
        max_iter: Power iterations (``method="power"``), >= 1.
        method: ``"power"`` (sigpy) or ``"eigh"`` (exact eigendecomposition).

    Returns:
        Complex maps, shape (x, y, coils), unit norm over coils where kept and 0 elsewhere,
        phase relative to coil 0; dtype of ``kspace`` (at least complex64).
    """
    _check_crop(crop)
    maps, eigenvalue = espirit_eigen(
        kspace, calib_width, kernel_width, thresh, max_iter, method=method
    )
    return maps * (eigenvalue > crop)[..., None]


def espirit_mask(
    kspace: np.ndarray,
    calib_width: int = 24,
    kernel_width: int = 6,
    thresh: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 30,
    *,
    method: Method = "power",
) -> np.ndarray:
    """Where the top ESPIRiT eigenvalue exceeds ``crop``: MR Optimum's "espirit" mask.

    Arguments as ``espirit_maps``.

    Returns:
        bool, shape (x, y).
    """
    _check_crop(crop)
    _, eigenvalue = espirit_eigen(
        kspace, calib_width, kernel_width, thresh, max_iter, method=method
    )
    return eigenvalue > crop


def espirit_eigen(
    kspace: np.ndarray,
    calib_width: int = 24,
    kernel_width: int = 6,
    thresh: float = 0.02,
    max_iter: int = 30,
    *,
    method: Method = "power",
) -> tuple[np.ndarray, np.ndarray]:
    """Uncropped ESPIRiT maps and their eigenvalues, for callers that need both.

    Arguments as ``espirit_maps`` (no ``crop``).

    Returns:
        ``(maps, eigenvalue)``: maps shape (x, y, coils), unit norm, phase relative to coil 0,
        dtype of ``kspace`` (at least complex64); eigenvalue float64, shape (x, y), about 1
        where the coils see signal and at most about 1 everywhere.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim != 3:
        raise InputError(f"kspace has shape {kspace.shape}; expected (x, y, coils)")
    if method not in ("power", "eigh"):
        raise InputError(f"method={method!r}; expected 'power' or 'eigh'")
    if int(max_iter) != max_iter or max_iter < 1:
        raise InputError(f"max_iter={max_iter}; expected an integer >= 1")
    if not 0 <= thresh < 1:
        raise InputError(f"thresh={thresh}; expected 0 <= thresh < 1")
    nx, ny, coils = kspace.shape
    out_dtype = np.result_type(kspace.dtype, np.complex64)

    calib = _calibration_region(kspace, calib_width, kernel_width).astype(np.complex128)
    # Calibration matrix: one row per patch, flattened as (patch x, patch y, coil).
    patches = sliding_window_view(calib, (kernel_width, kernel_width), axis=(0, 1))
    matrix = np.moveaxis(patches, 2, -1).reshape(-1, kernel_width * kernel_width * coils)
    _, sigma, vh = np.linalg.svd(matrix, full_matrices=False)
    kernels = vh[sigma > thresh * sigma[0]]

    gram = _image_gram(kernels, kernel_width, coils, (nx, ny))
    if method == "eigh":
        values, vectors = np.linalg.eigh(gram)
        eigenvalue, maps = values[..., -1], vectors[..., -1]
    else:
        eigenvalue, maps = _power_iteration(gram, max_iter)

    reference = maps[..., 0]
    magnitude = np.abs(reference)
    phase = np.ones_like(reference)
    np.divide(reference.conj(), magnitude, out=phase, where=magnitude > 0)
    maps = maps * phase[..., None]
    return maps.astype(out_dtype), np.asarray(eigenvalue, dtype=np.float64)


def _calibration_region(kspace: np.ndarray, calib_width: int, kernel_width: int) -> np.ndarray:
    """The central calib_width square, checked to be large enough and fully sampled."""
    nx, ny, _ = kspace.shape
    if int(kernel_width) != kernel_width or kernel_width < 1:
        raise InputError(f"kernel_width={kernel_width}; expected an integer >= 1")
    if int(calib_width) != calib_width or calib_width <= kernel_width:
        raise InputError(
            f"calib_width={calib_width}; expected an integer > kernel_width={kernel_width}"
        )
    if min(nx, ny) < calib_width:
        raise InputError(
            f"kspace has {nx} x {ny} samples; calib_width={calib_width} needs at least "
            f"{calib_width} along x and y"
        )
    x0, y0 = nx // 2 - calib_width // 2, ny // 2 - calib_width // 2
    calib = kspace[x0 : x0 + calib_width, y0 : y0 + calib_width]
    empty_x = int(np.sum(~np.any(calib != 0, axis=(1, 2))))
    empty_y = int(np.sum(~np.any(calib != 0, axis=(0, 2))))
    if empty_x or empty_y:
        raise InputError(
            f"kspace's central {calib_width} x {calib_width} calibration region is not fully "
            f"sampled: {empty_y} of its {calib_width} phase-encoding lines (y) and {empty_x} of "
            f"its {calib_width} readout positions (x) are zero; expected a fully sampled centre "
            f"of at least calib_width={calib_width} along x and y (lower calib_width to the ACS "
            "size)"
        )
    return calib


def _image_gram(kernels: np.ndarray, width: int, coils: int, shape: tuple[int, int]) -> np.ndarray:
    """``N / width^2 sum_k v_k v_k^H`` per pixel, v_k = ifft2c of kernel k on the grid.

    With kernel k placed at ``N // 2 - width // 2 + t``, ``v_k(r) = N^-1/2 sum_t kappa_k[t]
    exp(2 pi i (t - width // 2) (r - N // 2) / N)``, so the sum over kernels only needs
    ``C[delta] = sum_k sum_{t1 - t2 = delta} kappa_k[t1] kappa_k[t2]^H``, which is placed at
    ``N // 2 + delta`` and transformed: ``sqrt(N) / width^2 ifft2c(C)``.
    """
    nx, ny = shape
    kappa = kernels.reshape(-1, width * width, coils)
    # Projection onto the kept kernels, per pair of taps: (t1, c, t2, d).
    projection = np.einsum("kic,kjd->icjd", kappa, kappa.conj())
    taps = np.stack(np.meshgrid(np.arange(width), np.arange(width), indexing="ij"), -1)
    taps = taps.reshape(-1, 2)
    delta = taps[:, None, :] - taps[None, :, :]  # (t1, t2, 2)
    grid = np.zeros((nx, ny, coils, coils), dtype=np.complex128)
    index_x = (nx // 2 + delta[..., 0]) % nx
    index_y = (ny // 2 + delta[..., 1]) % ny
    np.add.at(grid, (index_x, index_y), np.moveaxis(projection, 2, 1))
    gram = np.sqrt(nx * ny) / width**2 * ifft2c(grid)
    return 0.5 * (gram + np.conj(np.swapaxes(gram, -1, -2)))


def _power_iteration(gram: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched power method from ones, as sigpy: returns (eigenvalue, unit eigenvector)."""
    vector = np.ones(gram.shape[:-1], dtype=gram.dtype)
    eigenvalue = np.zeros(gram.shape[:-2])
    for _ in range(max_iter):
        product = np.einsum("xycd,xyd->xyc", gram, vector)
        eigenvalue = np.linalg.norm(product, axis=-1)
        np.divide(product, eigenvalue[..., None], out=vector, where=eigenvalue[..., None] > 0)
    return eigenvalue, vector


def _check_crop(crop: float) -> None:
    if not 0 <= crop <= 1:
        raise InputError(f"crop={crop}; expected 0 <= crop <= 1")
