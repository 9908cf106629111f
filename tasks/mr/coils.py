"""Coil sensitivity maps from reference data, and the masks applied to them.

Maps are estimated from *prewhitened* reference data, as MR Optimum does
(``calculate_simple_sense_sensitivitymaps2D``), so they are the prewhitened sensitivities
``W s`` up to a common complex factor per pixel, which B1 and SENSE use directly.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.ndimage as ndi

from tasks.errors import InputError
from tasks.mr.fft import ifft2c
from tasks.mr.recon import coil_power

MaskMethod = Literal["no", "reference", "threshold", "percentage", "percentagemean"]
MASK_METHODS: tuple[str, ...] = ("no", "reference", "threshold", "percentage", "percentagemean")
_NEEDS_VALUE = ("threshold", "percentage", "percentagemean")


def _check_coil_array(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or 0 in array.shape:
        raise InputError(f"{name} has shape {array.shape}; expected (x, y, coils)")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or Inf; expected finite values")
    return array


def sensitivities_inner(coil_images: np.ndarray) -> np.ndarray:
    """Inner ("simple SENSE") maps ``S_c = I_c / sqrt(sum_c |I_c|^2)``.

    Args:
        coil_images: Prewhitened complex reference images, shape (x, y, coils).

    Returns:
        Complex maps, shape (x, y, coils), with ``sum_c |S_c|^2 = 1`` wherever the reference is
        non-zero and 0 where it is zero (MR Optimum leaves NaN there).
    """
    images = _check_coil_array(coil_images, "coil_images")
    if not np.iscomplexobj(images):
        images = images.astype(np.complex128)
    return inner_maps(images, np.sqrt(coil_power(images)))


def inner_maps(
    coil_images: np.ndarray, rss: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """``I_c / rss`` (times ``mask``) in one pass, 0 where ``rss`` is 0 or the mask is false.

    The unchecked core of ``sensitivities_inner`` for callers that already hold the reference
    RSS (``snr`` derives its mask from it).

    Args:
        coil_images: Complex reference images, shape (x, y, coils).
        rss: Their root sum of squares, shape (x, y).
        mask: Optional boolean mask (x, y) multiplied into the maps.

    Returns:
        Complex maps, shape and dtype of ``coil_images``.
    """
    keep = rss > 0 if mask is None else (rss > 0) & mask
    with np.errstate(divide="ignore", over="ignore"):
        scale = np.where(keep, 1 / rss, 0).astype(coil_images.real.dtype, copy=False)
    maps = coil_images * scale[..., None]
    tiny = ~np.isfinite(scale)  # subnormal RSS: 1/rss overflows, so divide those pixels
    if tiny.any():
        maps[tiny] = coil_images[tiny] / rss[tiny][..., None]
    return maps


def acl_region(
    shape: tuple[int, int], acl: int | tuple[int | None, int | None]
) -> tuple[slice, slice]:
    """Central calibration block as MR Optimum's ``getACLGrids``: from ``N//2 - acl//2``.

    Args:
        shape: (Nx, Ny) of the k-space.
        acl: Calibration lines along y, or (along x, along y); None means the full extent.

    Returns:
        Slices for x and y.
    """
    lines = (None, acl) if isinstance(acl, int | np.integer) else tuple(acl)
    if len(lines) != 2:
        raise InputError(f"acl={acl!r}; expected an int or (acl_x, acl_y) with None = full extent")
    region = []
    for axis, (n, count) in enumerate(zip(shape, lines, strict=True)):
        count = n if count is None else count
        if not isinstance(count, int | np.integer) or not 1 <= count <= n:
            raise InputError(
                f"acl[{axis}]={count!r} for a k-space of {n} samples on axis {axis}; "
                f"expected an integer in [1, {n}] or None"
            )
        start = n // 2 - int(count) // 2
        region.append(slice(start, start + int(count)))
    return region[0], region[1]


def acl_kspace(kspace: np.ndarray, acl: int | tuple[int | None, int | None]) -> np.ndarray:
    """The central calibration block of ``kspace`` in place, zero elsewhere (``getACLGrids``).

    Args:
        kspace: Complex k-space, shape (x, y, ...).
        acl: Calibration lines along y, or (along x, along y); None means the full extent.

    Returns:
        Zero-padded calibration k-space, same shape and dtype.
    """
    kspace = np.asarray(kspace)
    if kspace.ndim < 2:
        raise InputError(f"kspace has shape {kspace.shape}; expected (x, y, ...)")
    region = acl_region(kspace.shape[:2], acl)
    block = np.zeros_like(kspace)
    block[region] = kspace[region]
    return block


def sensitivities_acl(kspace: np.ndarray, acl: int | tuple[int | None, int | None]) -> np.ndarray:
    """Inner maps from the central ACL block, zero-padded to full size (MR Optimum's innerACL).

    Args:
        kspace: Prewhitened complex k-space with the calibration lines sampled, (x, y, coils).
        acl: Calibration lines along y, or (along x, along y); None means the full extent.

    Returns:
        Complex maps, shape (x, y, coils), as ``sensitivities_inner``.
    """
    kspace = _check_coil_array(kspace, "kspace")
    return sensitivities_inner(ifft2c(acl_kspace(kspace, acl)))


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """MR Optimum's clean-up of a 2D mask: fill holes, 3x3 dilation, fill holes, 3x3 erosion."""
    square = np.ones((3, 3), dtype=bool)
    mask = ndi.binary_fill_holes(mask)
    mask = ndi.binary_dilation(mask, structure=square)
    mask = ndi.binary_fill_holes(mask)
    return ndi.binary_erosion(mask, structure=square)


def coil_mask(
    reference_image: np.ndarray, method: str = "no", value: float | None = None
) -> np.ndarray:
    """Mask for the sensitivity maps, as MR Optimum's ``calculateCoilsSensitivityMask2D``.

    Methods (``ref`` = ``reference_image``):

    - ``"no"``: all true;
    - ``"reference"``: ``ref > mean(ref) - std(ref)``;
    - ``"threshold"``: ``ref > value`` (MR Optimum compares the prewhitened reference RSS from an
      unnormalised ``np.fft.ifft``, i.e. the orthonormal RSS divided by ``sqrt(Nx Ny)``;
      ``snr.snr_map`` passes that scale under ``convention="mroptimum"``);
    - ``"percentage"``: ``ref > max(ref) * value / 100``;
    - ``"percentagemean"``: ``ref > mean(ref) * value`` (value is a fraction, as in MR Optimum).

    Every method but ``"no"`` is then cleaned up as MR Optimum does: fill holes, 3x3 dilation,
    fill holes, 3x3 erosion (a closing; erosion treats outside the image as background).
    ESPIRiT and uploaded masks are built elsewhere.

    Args:
        reference_image: Real reference image, (x, y): the RSS of the prewhitened reference.
        method: One of ``MASK_METHODS``.
        value: Threshold, percent or fraction for the methods that need one.

    Returns:
        Boolean mask, shape (x, y).
    """
    ref = np.asarray(reference_image)
    if ref.ndim != 2 or 0 in ref.shape:
        raise InputError(f"reference_image has shape {ref.shape}; expected (x, y)")
    if np.iscomplexobj(ref) or not np.all(np.isfinite(ref)):
        raise InputError("reference_image must be real and finite; expected an RSS magnitude image")
    key = method.lower() if isinstance(method, str) else method
    if key not in MASK_METHODS:
        raise InputError(f"mask method {method!r} is unknown; expected one of {list(MASK_METHODS)}")
    if key == "no":
        return np.ones(ref.shape, dtype=bool)
    if key in _NEEDS_VALUE and (value is None or not np.isfinite(value)):
        raise InputError(f"mask method {key!r} needs a finite value; got value={value!r}")
    if key == "reference":
        mask = ref > np.mean(ref) - np.std(ref)
    elif key == "threshold":
        mask = ref > value
    elif key == "percentage":
        mask = ref > np.max(ref) * float(value) / 100.0
    else:
        mask = ref > np.mean(ref) * float(value)
    return clean_mask(mask)
