"""Coil combination and parallel-imaging reconstructions on prewhitened data.

Every function is vectorised over pixels; coil images may carry leading batch axes (e.g.
pseudo-replicas), shape ``(..., x, y, coils)``. Inputs are prewhitened (noise covariance I), so
no ``Psi^-1`` appears in the formulas (primer section 3).
"""

from __future__ import annotations

import numpy as np

from tasks.errors import InputError
from tasks.mr.fft import ifft2c


def _as_pair(acceleration: int | tuple[int, int]) -> tuple[int, int]:
    """(R_freq, R_phase) from an int (phase only) or a pair; each an integer >= 1."""
    pair = (1, acceleration) if isinstance(acceleration, int | np.integer) else tuple(acceleration)
    if len(pair) != 2 or not all(isinstance(r, int | np.integer) and r >= 1 for r in pair):
        raise InputError(
            f"acceleration={acceleration!r}; expected an integer >= 1 or (R_freq, R_phase)"
        )
    return int(pair[0]), int(pair[1])


def rss(coil_images: np.ndarray) -> np.ndarray:
    """Root sum of squares ``sqrt(sum_c |rho_c|^2)`` over the last (coil) axis.

    Args:
        coil_images: Prewhitened complex images, shape (..., x, y, coils).

    Returns:
        Real image, shape (..., x, y), float32 for complex64 input, else float64.
    """
    return np.sqrt(coil_power(coil_images))


def coil_power(coil_images: np.ndarray) -> np.ndarray:
    """``sum_c |rho_c|^2`` over the last (coil) axis, the square of ``rss``.

    Complex input with a contiguous coil axis is read as (..., 2 * coils) real pairs: one
    pass, no conjugated copy.

    Args:
        coil_images: Complex (or real) images, shape (..., coils).

    Returns:
        Real array, shape (...), in the input's precision.
    """
    images = np.asarray(coil_images)
    if np.iscomplexobj(images) and images.ndim and images.strides[-1] == images.itemsize:
        pairs = images.view(images.real.dtype)
        return np.einsum("...k,...k->...", pairs, pairs)
    return np.einsum("...c,...c->...", images, images.conj()).real


def coil_dot(weights: np.ndarray, coil_images: np.ndarray) -> np.ndarray:
    """``sum_c conj(w_c) rho_c`` over the last axis, broadcasting leading axes (``np.vecdot``).

    Args:
        weights: Complex weights, shape (..., coils), e.g. sensitivities (x, y, coils).
        coil_images: Complex images, shape (..., coils), e.g. (replicas, x, y, coils).

    Returns:
        Complex array of the broadcast leading shape.
    """
    vecdot = getattr(np, "vecdot", None)
    if vecdot is not None:
        return vecdot(weights, coil_images)
    return np.einsum("...c,...c->...", np.conj(weights), coil_images)  # NumPy < 2


def b1_combine(coil_images: np.ndarray, sensitivities: np.ndarray) -> np.ndarray:
    """Roemer (B1-weighted) combination ``s^H rho / sqrt(s^H s)``; 0 where ``s = 0``.

    With inner sensitivities ``s^H s = 1`` inside the mask, so this equals MR Optimum's
    ``s^H rho`` there.

    Args:
        coil_images: Prewhitened complex images, shape (..., x, y, coils).
        sensitivities: Prewhitened sensitivities, shape (x, y, coils).

    Returns:
        Complex image, shape (..., x, y).
    """
    images = np.asarray(coil_images)
    sens = np.asarray(sensitivities)
    if sens.ndim != 3 or images.shape[-3:] != sens.shape:
        raise InputError(
            f"sensitivities have shape {sens.shape} but coil_images {images.shape}; "
            "expected (x, y, coils) matching the images' last three axes"
        )
    sens = sens.astype(np.result_type(images.dtype, np.complex64), copy=False)
    return coil_dot(sens, images) * inverse_norm(sens)


def inverse_norm(sensitivities: np.ndarray) -> np.ndarray:
    """``1 / sqrt(s^H s)`` per pixel, 0 where ``s = 0`` (real, the maps' precision)."""
    norm = np.sqrt(coil_power(sensitivities))
    with np.errstate(divide="ignore"):
        return np.where(norm > 0, 1 / norm, 0).astype(norm.dtype, copy=False)


def undersample(kspace: np.ndarray, acceleration: int, axis: int = 1) -> np.ndarray:
    """Zero-filled undersampled k-space keeping lines 0, R, 2R, ... along ``axis``.

    Args:
        kspace: Complex k-space, shape (x, y, ...) (or batched, with ``axis`` negative).
        acceleration: R >= 1; the axis length must be divisible by R.
        axis: Axis to undersample (1 = phase encoding, 0 = readout).

    Returns:
        A zero-filled copy, same shape and dtype.
    """
    kspace = np.asarray(kspace)
    if not isinstance(acceleration, int | np.integer) or acceleration < 1:
        raise InputError(f"acceleration={acceleration!r}; expected an integer >= 1")
    if not -kspace.ndim <= axis < kspace.ndim:
        raise InputError(f"kspace has shape {kspace.shape} and axis={axis}; expected a valid axis")
    n = kspace.shape[axis]
    if n % acceleration:
        raise InputError(
            f"kspace has {n} lines on axis {axis}, not divisible by acceleration {acceleration}; "
            f"expected a multiple of R (of 2R for SENSE as MR Optimum unfolds it)"
        )
    out = np.zeros_like(kspace)
    keep = [slice(None)] * kspace.ndim
    keep[axis] = slice(0, None, acceleration)
    out[tuple(keep)] = kspace[tuple(keep)]
    return out


def aliased_images(kspace: np.ndarray, acceleration: int | tuple[int, int]) -> np.ndarray:
    """Folded coil images from zero-filled undersampled k-space (MR Optimum's SENSE input).

    ``a = sqrt(Rx Ry) ifft2c(K_us)``, cropped to its first ``(Nx/Rx, Ny/Ry)`` block. The
    zero-filled image is periodic, and the ``sqrt(R)`` keeps white k-space noise of variance 1 at
    variance 1 per aliased pixel.

    Args:
        kspace: Prewhitened zero-filled k-space (lines 0, R, ...), shape (..., x, y, coils).
        acceleration: R along y, or (R_freq, R_phase).

    Returns:
        Aliased images, shape (..., x/Rx, y/Ry, coils).
    """
    rx, ry = _as_pair(acceleration)
    kspace = np.asarray(kspace)
    nx, ny = kspace.shape[-3], kspace.shape[-2]
    if nx % rx or ny % ry:
        raise InputError(
            f"kspace is {nx} x {ny}; expected sizes divisible by acceleration ({rx}, {ry})"
        )
    images = ifft2c(kspace, axes=(-3, -2))
    scale = np.sqrt(rx * ry).astype(images.real.dtype)
    return images[..., : nx // rx, : ny // ry, :] * scale


def _fold_phases(n: int, r: int) -> np.ndarray:
    """Aliasing phases ``exp(2 pi i j (n//2) / r)`` of the centred FFT, j = 0..r-1."""
    return np.exp(2j * np.pi * np.arange(r) * (n // 2) / r)


def zero_filled_images(aliased: np.ndarray, acceleration: int | tuple[int, int]) -> np.ndarray:
    """The full-FOV zero-filled images ``ifft2c(K_us)`` from aliased images (their inverse).

    The zero-filled image of lines ``0, R, 2R, ...`` repeats every ``N/R`` pixels up to the
    aliasing phase: ``I_zf(y + j N/R) = conj(phi_j) I_zf(y)``; ``a = sqrt(R) I_zf`` on the first
    block. GRAPPA's image-space weights act on these.

    Args:
        aliased: Aliased images, shape (..., x/Rx, y/Ry, coils).
        acceleration: R along y, or (R_freq, R_phase).

    Returns:
        Zero-filled images, shape (..., x, y, coils).
    """
    rx, ry = _as_pair(acceleration)
    aliased = np.asarray(aliased)
    mx, my = aliased.shape[-3], aliased.shape[-2]
    phase_x = _fold_phases(mx * rx, rx).conj()
    phase_y = _fold_phases(my * ry, ry).conj()
    phase = (phase_x[:, None] * phase_y[None, :] / np.sqrt(rx * ry)).astype(aliased.dtype)
    # (..., Rx, Mx, Ry, My, c)
    tiled = aliased[..., None, :, None, :, :] * phase[:, None, :, None, None]
    return tiled.reshape(*aliased.shape[:-3], rx * mx, ry * my, aliased.shape[-1])


def sense_unmixing(
    sensitivities: np.ndarray, acceleration: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SENSE unmixing matrices, g-factor and noise weights (Pruessmann 1999).

    For aliased pixel (x, y) the fold set is ``{(x + i Nx/Rx, y + j Ny/Ry)}``. The encoding
    block is ``E = phi_ij s_ij / sqrt(Rx Ry)`` (coils x Rx*Ry), where ``phi`` is the aliasing phase
    of the centred FFT (``exp(2 pi i j (Ny//2)/Ry)``, 1 whenever Ny is divisible by 2*Ry; MR
    Optimum omits it, which is why it needs Ny divisible by 2R). The ``1/sqrt(R)`` makes the
    unfolded image equal the object (MR Optimum's is ``1/sqrt(R)`` smaller; SNR is the same).
    ``U = pinv(E^H E) E^H`` (pinv, as MR Optimum, so masked fold sets give 0).

    Args:
        sensitivities: Prewhitened sensitivities, shape (x, y, coils).
        acceleration: R along y, or (R_freq, R_phase).

    Returns:
        ``U`` (x/Rx, y/Ry, Rx*Ry, coils); ``g = sqrt([(E^H E)^-1]_pp [E^H E]_pp)`` (x, y), 1 at
        R = 1 and 0 where the sensitivities are 0; the noise weights ``sqrt([U U^H]_pp)`` (x, y),
        the std of the unfolded image's complex noise when the aliased noise has covariance I.
    """
    rx, ry = _as_pair(acceleration)
    sens = np.asarray(sensitivities)
    if sens.ndim != 3:
        raise InputError(f"sensitivities have shape {sens.shape}; expected (x, y, coils)")
    nx, ny, nc = sens.shape
    if nx % rx or ny % ry:
        raise InputError(
            f"sensitivities are {nx} x {ny}; expected sizes divisible by acceleration ({rx}, {ry})"
        )
    if not np.iscomplexobj(sens):
        sens = sens.astype(np.complex128)
    mx, my, rt = nx // rx, ny // ry, rx * ry
    # (Rx, Mx, Ry, My, c) -> (Mx, My, Rx, Ry, c) -> (Mx, My, c, Rt)
    folds = sens.reshape(rx, mx, ry, my, nc).transpose(1, 3, 0, 2, 4)
    phase_x, phase_y = _fold_phases(nx, rx), _fold_phases(ny, ry)
    phase = (phase_x[:, None] * phase_y[None, :]).reshape(rt) / np.sqrt(rt)
    encoding = folds.reshape(mx, my, rt, nc).transpose(0, 1, 3, 2) * phase.astype(sens.dtype)
    gram = np.einsum("xyci,xycj->xyij", encoding.conj(), encoding)
    eps = np.finfo(sens.real.dtype).eps
    inverse = np.linalg.pinv(gram, rcond=max(rt, nc) * eps, hermitian=True)
    inverse = np.nan_to_num(inverse)
    unmixing = np.einsum("xyij,xycj->xyic", inverse, encoding.conj())
    diag_inv = np.abs(np.einsum("xyii->xyi", inverse))
    diag_gram = np.abs(np.einsum("xyii->xyi", gram))
    g_fold = np.sqrt(diag_inv * diag_gram)
    noise_fold = np.sqrt(np.einsum("xyic,xyic->xyi", unmixing, unmixing.conj()).real)
    return unmixing, _unfold(g_fold, rx, ry), _unfold(noise_fold, rx, ry)


def _unfold(folded: np.ndarray, rx: int, ry: int) -> np.ndarray:
    """(..., Mx, My, Rx*Ry) per fold set -> (..., Mx*Rx, My*Ry) full-FOV image."""
    *lead, mx, my, _ = folded.shape
    full = folded.reshape(*lead, mx, my, rx, ry)
    n = len(lead)
    order = (*range(n), n + 2, n, n + 3, n + 1)
    return full.transpose(order).reshape(*lead, rx * mx, ry * my)


def sense_apply(
    aliased: np.ndarray, unmixing: np.ndarray, acceleration: int | tuple[int, int]
) -> np.ndarray:
    """Unfold aliased coil images with precomputed ``U``: ``v = U a`` per aliased pixel.

    Args:
        aliased: Prewhitened aliased images, shape (..., x/Rx, y/Ry, coils).
        unmixing: ``U`` from ``sense_unmixing``, shape (x/Rx, y/Ry, Rx*Ry, coils).
        acceleration: R along y, or (R_freq, R_phase).

    Returns:
        Complex unfolded image, shape (..., x, y).
    """
    rx, ry = _as_pair(acceleration)
    aliased = np.asarray(aliased)
    if aliased.shape[-3:] != (unmixing.shape[0], unmixing.shape[1], unmixing.shape[3]):
        raise InputError(
            f"aliased images have shape {aliased.shape}; expected (..., {unmixing.shape[0]}, "
            f"{unmixing.shape[1]}, {unmixing.shape[3]}) to match the sensitivities and R"
        )
    folded = np.einsum("xyic,...xyc->...xyi", unmixing.astype(aliased.dtype, copy=False), aliased)
    return _unfold(folded, rx, ry)


def sense_unfold(
    aliased: np.ndarray, sensitivities: np.ndarray, acceleration: int | tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SENSE reconstruction of prewhitened aliased images (primer section 3).

    Args:
        aliased: Aliased coil images from ``aliased_images``, shape (..., x/Rx, y/Ry, coils).
        sensitivities: Prewhitened sensitivities, shape (x, y, coils).
        acceleration: R along y, or (R_freq, R_phase).

    Returns:
        The unfolded complex image (..., x, y); the g-factor (x, y); the noise weights (x, y),
        the std of the image's complex noise, so the AC SNR is ``sqrt(2)|v| / weights``.
    """
    aliased = np.asarray(aliased)
    sens = np.asarray(sensitivities)
    if aliased.ndim < 3 or sens.ndim != 3 or aliased.shape[-1] != sens.shape[-1]:
        raise InputError(
            f"aliased has shape {aliased.shape} and sensitivities {sens.shape}; expected "
            "(..., x/R, y/R, coils) and (x, y, coils) with the same coils"
        )
    unmixing, g, weights = sense_unmixing(sens, acceleration)
    return sense_apply(aliased, unmixing, acceleration), g, weights
