"""GRAPPA: fill skipped k-space samples from their acquired neighbours (Griswold 2002).

Sampling: k-space ``(x, y, coils)`` is acquired on the lattice ``x = 0, Rx, 2Rx, ...`` by
``y = 0, Ry, 2Ry, ...`` and is zero elsewhere; a separate fully sampled ACS block
``(x_acs, y_acs, coils)`` calibrates the kernels. ``acceleration`` is ``R`` (along y only,
``Rx = 1``) or ``(Rx, Ry)``: 2-D data skip phase-encoding lines (``(1, R)``); a 3-D volume in
hybrid space (``tasks.mr.io.geometry``) skips along both of its in-plane axes ``(y, z)``, so
``Rx`` is then ``R_y`` and ``Ry`` is ``R_z``.

Kernel geometry, ``kernel = (kx, ky)``, per axis with acceleration R along it:

- R = 1 (nothing skipped, the readout of 2-D data): ``kx`` neighbours at offsets
  ``-(kx // 2) ... kx - 1 - kx // 2`` around the target (kx = 3: -1, 0, +1; kx = 4: -2 ... +1,
  as pygrappa's right-sided even windows).
- R > 1: ``k`` *acquired* source lines. A missing sample with offset ``d = y mod R`` has its
  nearest acquired line below at ``b = y - d``; the sources are the lines ``b + j R`` for
  ``j = -((k - 1) // 2) ... k // 2``. So ky = 4 takes two acquired lines on each side of the
  target (``b - R, b, b + R, b + 2R``), ky = 2 one on each side, ky = 3 two below and one
  above. The kernel spans ``(k - 1) R + 1`` grid lines, which is the least ACS depth it needs.

One kernel per offset ``(dx, dy)`` on the lattice cell other than ``(0, 0)``: ``Rx Ry - 1``.

pygrappa (and MR Optimum, which calls ``pygrappa.cgrappa`` with ``kernelSize`` [3, 4] or [4, 4])
counts ``ky`` in *grid* lines around the target, holes included, so its ``ky`` = 4 at R = 2
holds two acquired lines (ours ``ky`` = 2) and at R = 3 one or two depending on the hole. Our
``(3, 4)`` default is therefore a larger kernel than MR Optimum's [3, 4]. pygrappa also pads
k-space with zeros, while we treat it as periodic (below); the two differ only at the outermost
lines of k-space, where there is almost no signal.

k-space is treated as periodic when sources fall off its edge (lines wrap modulo N, which is
consistent because R divides N). That makes the filling an exact circular convolution, so
``grappa_image_weights`` reproduces ``grappa_apply`` to rounding and the analytic g-factor
describes exactly the reconstruction that was run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.errors import InputError
from tasks.mr.fft import ifft2c

#: Default Tikhonov weight, relative to the source matrix's largest singular value.
DEFAULT_REGULARIZATION = 1e-3

#: R along y, or (Rx, Ry).
Acceleration = int | tuple[int, int]


@dataclass(frozen=True, slots=True)
class GrappaKernel:
    """Calibrated GRAPPA weights and the geometry they were fitted for.

    Attributes:
        acceleration: ``(Rx, Ry)``, the acquired lattice's spacing along x and y.
        kernel: ``(kx, ky)``: source taps along x and y (module docstring).
        weights: complex128, shape ``(Rx Ry - 1, coils_out, kx, ky, coils_in)``; entry ``k``
            predicts the samples at lattice offset ``offsets[k]`` from
            ``sum W[o, i, j, c] K[bx + Rx sx_i, by + Ry sy_j, c]`` around their base
            ``(bx, by)``, with ``sx = x_steps``, ``sy = y_steps``.
        regularization: The Tikhonov weight used, relative to the largest singular value.
    """

    acceleration: tuple[int, int]
    kernel: tuple[int, int]
    weights: np.ndarray
    regularization: float

    @property
    def coils(self) -> int:
        """Number of receive coils the weights expect."""
        return int(self.weights.shape[-1])

    @property
    def offsets(self) -> list[tuple[int, int]]:
        """The missing samples' offsets ``(dx, dy)`` in the lattice cell, in weight order."""
        return lattice_offsets(self.acceleration)

    @property
    def x_steps(self) -> np.ndarray:
        """Multipliers of the source taps along x, shape (kx,) (``axis_steps``)."""
        return axis_steps(self.kernel[0], self.acceleration[0])

    @property
    def y_steps(self) -> np.ndarray:
        """Multipliers of the source lines along y, shape (ky,) (``axis_steps``)."""
        return axis_steps(self.kernel[1], self.acceleration[1])


def readout_offsets(kx: int) -> np.ndarray:
    """Readout offsets ``-(kx // 2) ... kx - 1 - kx // 2`` of a kernel with ``kx`` taps."""
    return np.arange(kx) - kx // 2


def line_steps(ky: int) -> np.ndarray:
    """Source-line multipliers ``j = -((ky - 1) // 2) ... ky // 2`` for ``ky`` acquired lines."""
    return np.arange(-((ky - 1) // 2), ky // 2 + 1)


def axis_steps(taps: int, acceleration: int) -> np.ndarray:
    """Source multipliers along an axis: ``readout_offsets`` at R = 1, else ``line_steps``."""
    return readout_offsets(taps) if acceleration == 1 else line_steps(taps)


def lattice_offsets(acceleration: tuple[int, int]) -> list[tuple[int, int]]:
    """Offsets ``(dx, dy)`` of the missing samples in one ``Rx x Ry`` lattice cell."""
    rx, ry = acceleration
    return [(dx, dy) for dx in range(rx) for dy in range(ry)][1:]


def _span(taps: int, acceleration: int) -> int:
    """Grid samples one kernel placement (sources and targets) covers along an axis."""
    if acceleration == 1:
        return taps
    steps = line_steps(taps)
    return int(max(acceleration * steps[-1], acceleration - 1) - acceleration * steps[0] + 1)


def acs_lines_needed(acceleration: int, kernel: tuple[int, int]) -> int:
    """Fewest ACS lines along y that hold one kernel placement (sources and target) per offset."""
    return 0 if acceleration == 1 else _span(kernel[1], acceleration)


def grappa_weights(
    acs: np.ndarray,
    acceleration: Acceleration,
    kernel: tuple[int, int] = (3, 4),
    *,
    regularization: float = DEFAULT_REGULARIZATION,
) -> GrappaKernel:
    """Fit one set of GRAPPA weights per missing-sample offset on the ACS block.

    For offset ``(dx, dy)``, every placement of the kernel wholly inside the ACS (no wrap)
    gives one row of the source matrix ``S`` (placements, kx * ky * coils) and of the target
    ``T`` (placements, coils). The weights solve the Tikhonov problem
    ``min ||S X - T||^2 + lam^2 ||X||^2`` with ``lam = regularization * sigma_max(S)``, through
    the SVD (filter factors ``sigma / (sigma^2 + lam^2)``); ``W_d = X^T`` is the primer's
    ``T_d pinv(Src_d)`` with singular values below about ``lam`` damped. The default 1e-3 only
    touches directions ~60 dB below the strongest, so noiseless calibration stays near exact,
    while noisy ACS keeps the weights (and the g-factor) bounded.

    Args:
        acs: Fully sampled calibration k-space, complex, shape (x_acs, y_acs, coils).
        acceleration: R along y, or ``(Rx, Ry)``, each >= 1; no acceleration gives an empty
            kernel (nothing is missing).
        kernel: ``(kx, ky)``: source taps along x and y (module docstring).
        regularization: Tikhonov weight relative to the largest singular value, >= 0.

    Returns:
        The weights, shape ``(Rx Ry - 1, coils, kx, ky, coils)``, with their geometry.
    """
    rx, ry = _check_acceleration(acceleration)
    kx, ky = _check_kernel(kernel)
    acs = np.asarray(acs)
    if acs.ndim != 3:
        raise InputError(f"acs has shape {acs.shape}; expected (x, n_acs, coils)")
    if not np.isfinite(regularization) or regularization < 0:
        raise InputError(f"regularization={regularization}; expected a finite value >= 0")
    nx_acs, n_acs, coils = acs.shape
    if rx * ry == 1:
        empty = np.zeros((0, coils, kx, ky, coils), dtype=np.complex128)
        return GrappaKernel((1, 1), (kx, ky), empty, float(regularization))
    at = f"R={ry}" if rx == 1 else f"R={(rx, ry)}"
    if n_acs < (needed := _span(ky, ry)):
        raise InputError(
            f"acs has {n_acs} lines; kernel {(kx, ky)} at {at} needs at least "
            f"{needed} fully sampled lines"
        )
    if nx_acs < (needed := _span(kx, rx)):
        what = "readout samples" if rx == 1 else "samples along x"
        raise InputError(f"acs has {nx_acs} {what}; kernel kx={kx} at {at} needs at least {needed}")

    calib = acs.astype(np.complex128, copy=False)
    sx, sy = axis_steps(kx, rx), axis_steps(ky, ry)
    offsets = lattice_offsets((rx, ry))
    weights = np.empty((len(offsets), coils, kx, ky, coils), dtype=np.complex128)
    for k, (dx, dy) in enumerate(offsets):
        # Bases (bx, by), the acquired sample at or below the target (bx + dx, by + dy), with
        # every source and the target inside the ACS.
        bx = np.arange(-rx * sx[0], min(nx_acs - 1 - rx * sx[-1], nx_acs - 1 - dx) + 1)
        by = np.arange(-ry * sy[0], min(n_acs - 1 - ry * sy[-1], n_acs - 1 - dy) + 1)
        x_src = bx[:, None] + rx * sx[None, :]
        y_src = by[:, None] + ry * sy[None, :]
        sources = calib[x_src[:, None, :, None], y_src[None, :, None, :], :]
        targets = calib[(bx + dx)[:, None], (by + dy)[None, :], :]
        fit = _tikhonov(
            sources.reshape(-1, kx * ky * coils), targets.reshape(-1, coils), regularization
        )
        weights[k] = fit.T.reshape(coils, kx, ky, coils)
    return GrappaKernel((rx, ry), (kx, ky), weights, float(regularization))


def grappa_apply(kspace: np.ndarray, kernel: GrappaKernel) -> np.ndarray:
    """Fill the missing samples of undersampled k-space with calibrated weights.

    All targets of all offsets are filled by one matrix product per offset over a gathered
    source array of shape ``(x / Rx, y / Ry, kx * ky * coils)`` (its memory bounds the call).

    Args:
        kspace: Undersampled k-space, shape (x, y, coils), acquired on the lattice
            ``(0, Rx, 2Rx, ...) x (0, Ry, 2Ry, ...)``. Values elsewhere are ignored
            (overwritten).
        kernel: Weights from ``grappa_weights``.

    Returns:
        Filled k-space, same shape, dtype complex (at least complex64); the acquired samples
        are copied unchanged.
    """
    kspace = _check_kspace(kspace, kernel.acceleration)
    nx, ny, coils = kspace.shape
    if coils != kernel.coils:
        raise InputError(
            f"kspace has {coils} coils; the GRAPPA kernel was fitted for {kernel.coils}"
        )
    out_dtype = np.result_type(kspace.dtype, np.complex64)
    filled = kspace.astype(out_dtype, copy=True)
    rx, ry = kernel.acceleration
    if rx * ry == 1:
        return filled
    kx, ky = kernel.kernel
    mx, my = nx // rx, ny // ry
    x_src = ((np.arange(mx)[:, None] + kernel.x_steps[None, :]) * rx) % nx
    y_src = ((np.arange(my)[:, None] + kernel.y_steps[None, :]) * ry) % ny
    # Sources of every target at once: (x / Rx, y / Ry, kx, ky, coils); the same
    # neighbourhood serves every offset, because its base is the acquired sample.
    sources = filled[x_src[:, None, :, None], y_src[None, :, None, :], :]
    flat = sources.reshape(mx * my, kx * ky * coils)
    for k, (dx, dy) in enumerate(kernel.offsets):
        w = kernel.weights[k].reshape(coils, -1).astype(out_dtype, copy=False)
        filled[dx::rx, dy::ry, :] = (flat @ w.T).reshape(mx, my, coils)
    return filled


def grappa_reconstruct(
    kspace: np.ndarray,
    acs: np.ndarray,
    acceleration: Acceleration,
    kernel: tuple[int, int] = (3, 4),
    *,
    regularization: float = DEFAULT_REGULARIZATION,
) -> np.ndarray:
    """GRAPPA-filled k-space: ``grappa_apply(kspace, grappa_weights(acs, ...))``.

    The ACS samples are used for calibration only; they are not pasted into the output, so the
    result is the linear operator that ``grappa_image_weights`` and ``grappa_gfactor`` describe.

    Args:
        kspace: Undersampled k-space, shape (x, y, coils), acquired on the lattice and zero
            elsewhere; Rx must divide x and Ry y.
        acs: Fully sampled central block, shape (x_acs, y_acs, coils).
        acceleration: R along y, or ``(Rx, Ry)``. No acceleration returns a copy of ``kspace``.
        kernel: ``(kx, ky)``: source taps along x and y (module docstring).
        regularization: Tikhonov weight relative to the largest singular value.

    Returns:
        Filled k-space, shape (x, y, coils); acquired samples unchanged.
    """
    kspace = _check_kspace(kspace, acceleration)
    acs = np.asarray(acs)
    if acs.ndim == 3 and acs.shape[2] != kspace.shape[2]:
        raise InputError(f"acs has {acs.shape[2]} coils; kspace has {kspace.shape[2]}")
    weights = grappa_weights(acs, acceleration, kernel, regularization=regularization)
    return grappa_apply(kspace, weights)


def grappa_image_weights(kernel: GrappaKernel, shape: tuple[int, int]) -> np.ndarray:
    """Image-space unmixing weights equivalent to ``grappa_apply`` (Breuer 2009).

    All offsets' kernels and the identity (acquired samples pass through) go on one k-space
    grid ``G``: a tap reading ``K[x + ox, y + oy]`` sits at ``G[cx - ox, cy - oy]``,
    ``(cx, cy) = (Nx // 2, Ny // 2)``. Each offset's taps read only acquired samples exactly
    when its targets are the missing samples of that offset, and zero-filled samples
    contribute nothing, so the filling is the circular convolution ``K_out = G * K_us``. With
    ``ifft2c`` (orthonormal) that becomes ``W = sqrt(Nx Ny) ifft2c(G)`` per coil pair, and

    ``ifft2c(grappa_apply(K_us))[x, y, o] = sum_c W[x, y, o, c] ifft2c(K_us)[x, y, c]``

    where ``ifft2c(K_us)`` are the aliased, zero-filled (not sqrt(R)-scaled) coil images.

    Args:
        kernel: Weights from ``grappa_weights``.
        shape: Image size ``(Nx, Ny)``; Rx must divide Nx and Ry Ny.

    Returns:
        complex128, shape (Nx, Ny, coils_out, coils_in).
    """
    if len(shape) != 2 or min(shape) < 1:
        raise InputError(f"shape={tuple(shape)}; expected the image size (Nx, Ny)")
    nx, ny = (int(n) for n in shape)
    rx, ry = kernel.acceleration
    if ny % ry:
        raise InputError(f"shape has Ny={ny} lines; acceleration R={ry} must divide it")
    if nx % rx:
        raise InputError(f"shape has Nx={nx} samples; acceleration Rx={rx} must divide it")
    coils = kernel.coils
    cx, cy = nx // 2, ny // 2
    grid = np.zeros((nx, ny, coils, coils), dtype=np.complex128)
    grid[cx, cy] = np.eye(coils)
    sx, sy = kernel.x_steps, kernel.y_steps
    for k, (dx, dy) in enumerate(kernel.offsets):
        # Source (i, j) sits at (-dx + Rx sx_i, -dy + Ry sy_j) from its target.
        gx = (cx + dx - rx * sx)[:, None] % nx
        gy = (cy + dy - ry * sy)[None, :] % ny
        taps = np.moveaxis(kernel.weights[k], 0, 2)  # (kx, ky, out, in)
        np.add.at(
            grid, (np.broadcast_to(gx, taps.shape[:2]), np.broadcast_to(gy, taps.shape[:2])), taps
        )
    return np.sqrt(nx * ny) * ifft2c(grid)


def grappa_gfactor(
    image_weights: np.ndarray,
    noise_cov: np.ndarray,
    combine_weights: np.ndarray,
    acceleration: Acceleration,
) -> np.ndarray:
    """Analytic GRAPPA g-factor from image-space weights (Breuer 2009; primer section 3).

    The zero-filled images that ``image_weights`` act on carry noise covariance ``Psi / R``
    per pixel (orthonormal FFT, one sample in ``R = Rx Ry`` acquired), and a combination
    ``p^H I`` of the filled images has noise variance ``p^H W Psi W^H p / R``; fully sampled it is
    ``p^H Psi p``. With equal signal, ``g = SNR_full / (SNR_acc sqrt R)``:

    ``g = sqrt(p^H W Psi W^H p) / (R sqrt(p^H Psi p))``

    which is the primer's ``sqrt(p^H W' Psi W'^H p) / (sqrt R sqrt(p^H Psi p))`` with
    ``W' = W / sqrt(R)`` acting on sqrt(R)-scaled aliased images. At R = 1, W = I and g = 1.

    Combination weights ``p`` are the per-pixel vector whose ``p^H I`` is the combined image
    (its scale cancels):

    - B1/Roemer: the coil sensitivities ``s`` (exactly linear);
    - RSS: ``p = I / ||I||`` of the noiseless or filled coil images ``I`` (RSS linearised at
      high SNR, as Breuer does); with prewhitened data pass Psi = I.

    Args:
        image_weights: ``grappa_image_weights`` output, shape (x, y, coils, coils).
        noise_cov: Psi, shape (coils, coils), Hermitian, as sampled in the k-space data.
        combine_weights: p, complex, shape (x, y, coils).
        acceleration: R along y, or ``(Rx, Ry)``, as used to build ``image_weights``.

    Returns:
        g, float64, shape (x, y); 0 where ``p^H Psi p`` is 0 (no combination weight), as MR
        Optimum writes undefined map values.
    """
    rx, ry = _check_acceleration(acceleration)
    image_weights = np.asarray(image_weights)
    if image_weights.ndim != 4 or image_weights.shape[2] != image_weights.shape[3]:
        raise InputError(
            f"image_weights has shape {image_weights.shape}; expected (x, y, coils, coils)"
        )
    nx, ny, coils = image_weights.shape[:3]
    noise_cov = np.asarray(noise_cov)
    if noise_cov.shape != (coils, coils):
        raise InputError(f"noise_cov has shape {noise_cov.shape}; expected ({coils}, {coils})")
    p = np.asarray(combine_weights)
    if p.shape != (nx, ny, coils):
        raise InputError(f"combine_weights has shape {p.shape}; expected ({nx}, {ny}, {coils})")
    q = np.einsum("xyoc,xyo->xyc", image_weights.conj(), p)  # W^H p
    accelerated = np.einsum("xyi,ij,xyj->xy", q.conj(), noise_cov, q).real
    full = np.einsum("xyi,ij,xyj->xy", p.conj(), noise_cov, p).real
    g = np.zeros((nx, ny))
    defined = full > 0
    g[defined] = np.sqrt(np.maximum(accelerated[defined], 0) / full[defined]) / (rx * ry)
    return g


def _tikhonov(sources: np.ndarray, targets: np.ndarray, regularization: float) -> np.ndarray:
    """``argmin ||S X - T||^2 + (reg sigma_max)^2 ||X||^2`` via the SVD of S."""
    u, s, vh = np.linalg.svd(sources, full_matrices=False)
    lam = regularization * s[0] if s.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        filt = np.where(s > 0, s / (s**2 + lam**2), 0.0)
    return vh.conj().T @ (filt[:, None] * (u.conj().T @ targets))


def _check_acceleration(acceleration: Acceleration) -> tuple[int, int]:
    """``(Rx, Ry)`` from R (along y) or a pair, each an integer >= 1."""
    pair = (
        tuple(acceleration)
        if isinstance(acceleration, tuple | list | np.ndarray)
        else (1, acceleration)
    )
    if len(pair) != 2 or not all(
        not isinstance(r, bool)
        and isinstance(r, int | float | np.number)
        and int(r) == r
        and r >= 1
        for r in pair
    ):
        raise InputError(
            f"acceleration={acceleration}; expected an integer R >= 1 or a pair (Rx, Ry)"
        )
    return int(pair[0]), int(pair[1])


def _check_kernel(kernel: tuple[int, int]) -> tuple[int, int]:
    sizes = tuple(np.atleast_1d(kernel))
    if len(sizes) != 2 or any(int(k) != k or k < 1 for k in sizes):
        raise InputError(f"kernel={kernel!r}; expected (kx, ky), integers >= 1")
    return int(sizes[0]), int(sizes[1])


def _check_kspace(kspace: np.ndarray, acceleration: Acceleration) -> np.ndarray:
    rx, ry = _check_acceleration(acceleration)
    kspace = np.asarray(kspace)
    if kspace.ndim != 3:
        raise InputError(f"kspace has shape {kspace.shape}; expected (x, y, coils)")
    if kspace.shape[1] % ry:
        raise InputError(
            f"kspace has {kspace.shape[1]} phase-encoding lines; acceleration R={ry} must divide it"
        )
    if kspace.shape[0] % rx:
        raise InputError(
            f"kspace has {kspace.shape[0]} samples along x; acceleration Rx={rx} must divide it"
        )
    return kspace
