"""Geometry of raw data: affines, readout oversampling and the 3-D hybrid space.

3-D data (MRD and twix partitions, NumPy/MATLAB ``layout="volume"``): a volume k-space
``(x, y, z, coils[, replicas])`` with the readout x fully sampled is always returned in
*hybrid space* (``volume_as_slices``): a centred orthonormal inverse FFT along x only, then
the axes ``(y, z, coils, x, replicas)``. Every x position is then a (ky, kz) plane carrying
the 2-D undersampling pattern, i.e. an in-plane 2-D acceleration problem, so the per-slice
SNR code runs unchanged with "slices" = x positions, in-plane axes ``(y, z)`` and
acceleration ``(R_y, R_z)``. The transform is orthonormal: the k-space noise covariance
applies unchanged and the 2-D ``ifft2c`` of each plane completes the 3-D centred transform.
``AcquisitionInfo.kind == "3d"`` says so; ``matrix`` is then ``(y, z, x)`` (the returned
axes), ``volume_matrix`` ``(x, y, z)``, ``acceleration`` ``(R_y, R_z)``, ``acs_block`` the
calibration block ``(y, z)``, and ``fov_mm``/``affine`` describe the ``(x, y, z)`` volume.
Maps computed per slice, stacked as ``(y, z, x)``, go back to ``(x, y, z)`` with
``maps_as_volume`` before they are written. ``slices_as_volume`` inverts the transform.

Multi-slab 3-D data (``AcquisitionInfo.slabs`` > 1) are contiguous slabs of equal size: each is
transformed on its own, and slab ``b``'s x positions are the slices ``b * x ... (b + 1) * x - 1``;
``maps_as_volume`` stacks the slabs along z into one ``(x, y, slabs * z)`` volume, which the
affine of slab 0 describes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.fft

from tasks.errors import InputError


def affine_from_geometry(
    positions_mm: np.ndarray,
    read_dir: Sequence[float],
    phase_dir: Sequence[float],
    slice_dir: Sequence[float],
    spacing_mm: tuple[float, float],
    matrix_xy: tuple[int, int],
    thickness_mm: float,
) -> tuple[np.ndarray, str | None]:
    """Voxel -> RAS affine from LPS slice geometry (primer section 7).

    Columns are ``read_dir*dx, phase_dir*dy, slice_dir*dz``; the origin is slice 0's centre
    minus ``(N//2)`` pixels along read and phase (the centred FFT's centre pixel); the x and y
    rows are negated to go from LPS (DICOM/ISMRMRD) to RAS (NIfTI).

    Args:
        positions_mm: Slice centres in LPS mm, shape (slices, 3), in slice-index order.
        read_dir: Readout direction cosines (LPS).
        phase_dir: Phase-encoding direction cosines (LPS).
        slice_dir: Slice direction cosines (LPS).
        spacing_mm: Pixel spacing ``(dx, dy)``.
        matrix_xy: Image size ``(Nx, Ny)``.
        thickness_mm: Slice spacing used when there is one slice.

    Returns:
        The 4x4 affine and a note when the slices are not evenly spaced along one axis (then
        the affine fits slices 0 and 1 only), else None.
    """
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    read, phase, normal = (
        np.asarray(v, dtype=np.float64) for v in (read_dir, phase_dir, slice_dir)
    )
    dx, dy = spacing_mm
    dz, note = float(thickness_mm), None
    if len(positions) > 1:
        step = positions[1] - positions[0]
        along = float(step @ normal)
        if abs(along) > 1e-6:
            dz = along
        expected = positions[0] + np.arange(len(positions))[:, None] * step
        if not np.allclose(positions, expected, atol=1e-2):
            note = "slice positions are not evenly spaced in index order; affine fits slices 0-1"
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = read * dx, phase * dy, normal * dz
    affine[:3, 3] = (
        positions[0] - (matrix_xy[0] // 2) * dx * read - (matrix_xy[1] // 2) * dy * phase
    )
    affine[:2, :] *= -1
    return affine, note


def remove_readout_oversampling(kspace: np.ndarray, axis: int = 0) -> np.ndarray:
    """Drop the outer half of the readout field of view (twixtools' ``remove_oversampling``).

    Centred inverse FFT along ``axis``, keep ``[n//4 : 3n//4]``, FFT back, with backward
    (unnormalised forward) scaling: in-band signal amplitude is kept and white-noise variance
    halves. Precision is preserved.
    """
    n = kspace.shape[axis]
    image = scipy.fft.fftshift(
        scipy.fft.ifft(scipy.fft.ifftshift(kspace, axes=axis), axis=axis), axes=axis
    )
    image = np.take(image, np.arange(n // 4, (3 * n) // 4), axis=axis)
    shifted = scipy.fft.ifftshift(image, axes=axis)
    return scipy.fft.fftshift(scipy.fft.fft(shifted, axis=axis), axes=axis)


def volume_as_slices(volume: np.ndarray) -> np.ndarray:
    """3-D k-space ``(x, y, z, coils[, replicas])`` -> hybrid space ``(y, z, coils, x, replicas)``.

    A centred orthonormal inverse FFT along the fully sampled readout x only
    (``fftshift(ifft(ifftshift(K, 0), axis=0, norm="ortho"), 0)``, as ``tasks.mr.fft``), then x
    moved to the slice axis. Each x position is a (ky, kz) plane, an in-plane 2-D problem whose
    ``ifft2c`` completes the 3-D transform; white noise keeps its covariance. Precision is kept.

    Raises:
        InputError: Not a 4-D or 5-D complex (or real) array.
    """
    volume = np.asarray(volume)
    if volume.ndim == 4:
        volume = volume[..., np.newaxis]
    if volume.ndim != 5:
        raise InputError(f"volume has shape {volume.shape}; expected (x, y, z, coils[, replicas])")
    if not np.iscomplexobj(volume):
        volume = volume.astype(np.complex64 if volume.dtype.itemsize <= 4 else np.complex128)
    hybrid = scipy.fft.fftshift(
        scipy.fft.ifft(scipy.fft.ifftshift(volume, axes=0), axis=0, norm="ortho", workers=-1),
        axes=0,
    )
    return np.ascontiguousarray(hybrid.transpose(1, 2, 3, 0, 4))


def slices_as_volume(hybrid: np.ndarray) -> np.ndarray:
    """The inverse of ``volume_as_slices``: hybrid space back to 3-D k-space.

    ``(y, z, coils, x, replicas)`` -> ``(x, y, z, coils, replicas)``.
    """
    hybrid = np.asarray(hybrid)
    if hybrid.ndim != 5:
        raise InputError(f"hybrid has shape {hybrid.shape}; expected (y, z, coils, x, replicas)")
    volume = hybrid.transpose(3, 0, 1, 2, 4)
    return scipy.fft.fftshift(
        scipy.fft.fft(scipy.fft.ifftshift(volume, axes=0), axis=0, norm="ortho", workers=-1),
        axes=0,
    )


def maps_as_volume(maps: np.ndarray, slabs: int = 1) -> np.ndarray:
    """Per-slice maps of 3-D data, ``(y, z, slabs * x[, ...])``, as ``(x, y, slabs * z[, ...])``.

    Slab ``b``'s x positions (slices ``b * x ...``) become its partitions ``b * z ...``.
    """
    maps = np.asarray(maps)
    if maps.ndim < 3 or slabs < 1 or maps.shape[2] % slabs:
        raise InputError(
            f"maps have shape {maps.shape} for {slabs} slabs; expected (y, z, slabs * x[, ...])"
        )
    volume = np.moveaxis(maps, 2, 0)  # (slabs * x, y, z, ...)
    if slabs == 1:
        return volume
    nx, (ny, nz, *rest) = maps.shape[2] // slabs, volume.shape[1:]
    volume = np.moveaxis(volume.reshape(slabs, nx, ny, nz, *rest), 0, 2)
    return volume.reshape(nx, ny, slabs * nz, *rest)


def volume_as_maps(volume: np.ndarray, slabs: int = 1) -> np.ndarray:
    """The inverse of ``maps_as_volume``: ``(x, y, slabs * z[, ...])`` as per-slice maps."""
    volume = np.asarray(volume)
    if volume.ndim < 3 or slabs < 1 or volume.shape[2] % slabs:
        raise InputError(
            f"volume has shape {volume.shape} for {slabs} slabs; expected (x, y, slabs * z[, ...])"
        )
    nx, ny, planes, *rest = volume.shape
    nz = planes // slabs
    stacked = np.moveaxis(volume.reshape(nx, ny, slabs, nz, *rest), 2, 0)
    return np.moveaxis(stacked.reshape(slabs * nx, ny, nz, *rest), 0, 2)
