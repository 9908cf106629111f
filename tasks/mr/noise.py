"""Noise covariance, correlation coefficients, prewhitening and noise bandwidth.

Where the noise comes from (``noise_statistics``), in this order:

1. a noise scan (RF off, or the scanner's noise-adjust readouts);
2. without one, signal-free samples of the signal itself (``convention="physical"``):
   the **readout margins** of 2x oversampled data (``readout_margin_samples``), else the
   **background** corners of the coil images (``background_samples``); a region is used only
   if it passes the signal-free test (``signal_free``);
3. MR Optimum's identity ``Psi = I`` (raw ADC units) only under ``convention="mroptimum"``;
4. otherwise ``InputError``, which says to pass ``noise=``.

``Psi = E[n n^H]`` is the complex noise covariance of the coils, ``(coils, coils)``; each real
component of coil ``i`` has variance ``Psi[i, i] / 2``. Prewhitening with ``W = L^-1``
(``L = cholesky(Psi)``) turns it into the identity, which every SNR formula in ``snr`` assumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.linalg

from tasks.errors import InputError
from tasks.mr.fft import ifft2c

if TYPE_CHECKING:
    from tasks.mr.io.types import RawData

Convention = Literal["physical", "mroptimum"]
NoiseSource = Literal["noise scan", "readout margins", "background", "identity (mroptimum)"]

# Rows (samples or pixels) per matrix product in ``prewhiten``.
_PREWHITEN_ROWS = 1024
# Relative tolerance for calling a covariance Hermitian, per precision.
_HERMITIAN_RTOL = {np.dtype(np.complex64): 1e-5, np.dtype(np.float32): 1e-5}


def _as_samples(noise: np.ndarray, name: str = "noise") -> np.ndarray:
    """Noise as (samples, coils); a (readout, lines, coils) array is flattened."""
    noise = np.asarray(noise)
    if noise.ndim not in (2, 3) or noise.shape[-1] < 1 or noise.size == 0:
        raise InputError(
            f"{name} has shape {noise.shape}; expected (samples, coils) or (readout, lines, coils)"
        )
    if not np.all(np.isfinite(noise)):
        raise InputError(f"{name} contains NaN or Inf; expected finite noise samples")
    return noise.reshape(-1, noise.shape[-1])


def noise_covariance(noise: np.ndarray) -> np.ndarray:
    """Sample noise covariance ``Psi_hat = sum_s n_s n_s^H / Ns``.

    The mean is **not** removed and the divisor is ``Ns`` (not ``Ns - 1``), as in MR Optimum's
    ``calculate_covariance_matrix`` (RF-off receiver noise has zero mean). MR Optimum also divides
    by ``2 * NBW``; that is its *convention*, applied by ``signal_noise_covariance``, not here.

    Args:
        noise: Complex noise samples, shape (samples, coils) or (readout, lines, coils).

    Returns:
        ``Psi_hat``, Hermitian, shape (coils, coils), in the input's precision
        (``Psi_hat[i, j] = mean(n_i conj(n_j))``).
    """
    samples = _as_samples(noise)
    cov = samples.T @ samples.conj() / samples.shape[0]
    return (cov + cov.conj().T) / 2


def noise_coefficient(noise_cov: np.ndarray) -> np.ndarray:
    """Complex correlation coefficients ``rho_ij = Psi_ij / sqrt(Psi_ii Psi_jj)``.

    MR Optimum stores only ``Re(rho)``; this keeps the complex value (``|rho| <= 1``, diagonal 1).

    Args:
        noise_cov: Noise covariance, shape (coils, coils), with positive diagonal.

    Returns:
        Complex coefficients, shape (coils, coils).
    """
    cov = _check_square(noise_cov, "noise_cov")
    variances = np.real(np.diagonal(cov))
    if np.any(variances <= 0):
        raise InputError(
            f"noise_cov has non-positive variances on its diagonal (min {variances.min():.3g}); "
            "expected every coil's variance > 0"
        )
    scale = np.sqrt(variances)
    rho = cov / np.outer(scale, scale)
    magnitude = np.abs(rho)
    # Round-off may push |rho| a hair above 1; clip the magnitude, keep the phase.
    return np.where(magnitude > 1, rho / np.maximum(magnitude, 1e-300), rho)


def _check_square(matrix: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise InputError(
            f"{name} has shape {matrix.shape}; expected a square (coils, coils) matrix"
        )
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"{name} contains NaN or Inf; expected a finite covariance")
    return matrix


def prewhitening_matrix(noise_cov: np.ndarray) -> np.ndarray:
    """The prewhitener ``W = L^-1`` with ``L = cholesky(Psi)`` (lower), so ``W Psi W^H = I``.

    Args:
        noise_cov: Noise covariance Psi, shape (coils, coils), Hermitian positive definite.

    Returns:
        Lower-triangular ``W``, shape (coils, coils), complex, in the precision of ``noise_cov``
        (complex128 unless it is complex64).

    Raises:
        InputError: If Psi is not square, not finite, not Hermitian, or not positive definite
            (the message gives its smallest eigenvalue).
    """
    cov = _check_square(noise_cov, "noise_cov")
    dtype = np.complex64 if cov.dtype in (np.complex64, np.float32) else np.complex128
    cov = cov.astype(np.complex128)
    scale = np.max(np.abs(cov))
    rtol = _HERMITIAN_RTOL.get(np.dtype(noise_cov.dtype), 1e-8)
    asymmetry = np.max(np.abs(cov - cov.conj().T))
    if asymmetry > rtol * scale:
        raise InputError(
            f"noise_cov is not Hermitian (max |Psi - Psi^H| = {asymmetry:.3g}, "
            f"max |Psi| = {scale:.3g}); expected Psi = Psi^H"
        )
    cov = (cov + cov.conj().T) / 2
    eigenvalues = np.linalg.eigvalsh(cov)
    floor = eigenvalues[-1] * cov.shape[0] * np.finfo(np.float64).eps
    if eigenvalues[0] <= max(floor, 0.0):
        raise InputError(
            f"noise_cov is not positive definite: smallest eigenvalue {eigenvalues[0]:.6g} "
            f"(largest {eigenvalues[-1]:.6g}); expected all eigenvalues > 0"
        )
    lower = np.linalg.cholesky(cov)
    # L^-1 by LAPACK's triangular inverse: the same as solve_triangular(L, I), without the
    # threaded BLAS solve that costs ~1 ms here on waking its threads.
    whitener, info = scipy.linalg.lapack.ztrtri(lower, lower=1)
    if info != 0:  # pragma: no cover - L has a positive diagonal after the eigenvalue check
        identity = np.eye(cov.shape[0], dtype=np.complex128)
        whitener = scipy.linalg.solve_triangular(lower, identity, lower=True)
    return np.tril(whitener).astype(dtype)


def prewhiten(data: np.ndarray, whitener: np.ndarray) -> np.ndarray:
    """Apply ``W`` along the last (coil) axis: ``out[..., :] = W @ data[..., :]``.

    Args:
        data: Complex k-space, images or noise, coils last, shape (..., coils).
        whitener: ``W`` from ``prewhitening_matrix``, shape (coils, coils).

    Returns:
        Prewhitened data, same shape; complex64 stays complex64, otherwise complex128.
    """
    data = np.asarray(data)
    whitener = np.asarray(whitener)
    if whitener.ndim != 2 or whitener.shape[0] != whitener.shape[1]:
        raise InputError(f"whitener has shape {whitener.shape}; expected (coils, coils)")
    if data.ndim == 0 or data.shape[-1] != whitener.shape[1]:
        raise InputError(
            f"data has {data.shape[-1] if data.ndim else 0} coils on its last axis but the "
            f"whitener is {whitener.shape}; expected the same coil count"
        )
    dtype = np.complex64 if data.dtype in (np.complex64, np.float32) else np.complex128
    data = data.astype(dtype, copy=False)
    transposed = whitener.T.astype(dtype)
    if data.ndim < 2 or data.size <= _PREWHITEN_ROWS * data.shape[-1]:
        return data @ transposed
    # Row blocks small enough for OpenBLAS to run each product on this thread: the same
    # arithmetic per row, without waking (and leaving spinning) BLAS threads that slow the FFTs
    # and threaded replica loops around it.
    rows = np.ascontiguousarray(data).reshape(-1, data.shape[-1])
    out = np.empty(rows.shape, dtype=dtype)
    for start in range(0, rows.shape[0], _PREWHITEN_ROWS):
        stop = start + _PREWHITEN_ROWS
        np.matmul(rows[start:stop], transposed, out=out[start:stop])
    return out.reshape(data.shape)


def noise_bandwidth(noise: np.ndarray) -> float:
    """Effective noise bandwidth (NBW) of the receiver filter, from noise readouts.

    MR Optimum's ``mrir_noise_bandwidth``: the power spectrum along the readout (axis 0, no
    shift, so DC is bin 0) is averaged over lines, normalised per coil by its mean over the
    central half band (bins ``[:n//4]`` and ``[3n//4 - 1:]``, one extra bin as in MR Optimum),
    summed over the band divided by ``n``, and averaged over coils. White noise gives 1; noise
    that keeps the anti-alias roll-off (oversampling kept) gives less (about 0.79 on Siemens).

    Args:
        noise: Noise samples with the readout on axis 0: (readout, lines, coils), or
            (readout, coils) for one line. A flattened (samples, coils) array is read as one
            long line, which is right only if the readouts are contiguous (readout fastest);
            a C-order flattening of (readout, lines, coils) runs along lines and reads ~1.

    Returns:
        The NBW, a float.
    """
    noise = np.asarray(noise)
    if noise.ndim == 2:
        noise = noise[:, None, :]
    if noise.ndim != 3 or noise.shape[0] < 4:
        raise InputError(
            f"noise has shape {noise.shape}; expected (readout, lines, coils) with >= 4 readout "
            "samples on axis 0"
        )
    if not np.all(np.isfinite(noise)):
        raise InputError("noise contains NaN or Inf; expected finite noise samples")
    n = noise.shape[0]
    power = np.mean(np.abs(np.fft.fft(noise, axis=0)) ** 2, axis=1)  # (readout, coils)
    central = np.concatenate([power[: n // 4], power[3 * n // 4 - 1 :]], axis=0)
    reference = np.mean(central, axis=0)
    if np.any(reference <= 0):
        raise InputError("noise has zero power in the central band of a coil; expected real noise")
    return float(np.mean(np.sum(power / reference, axis=0) / n))


def signal_noise_covariance(
    noise_cov: np.ndarray,
    *,
    noise_dwell_s: float | None = None,
    signal_dwell_s: float | None = None,
    oversampling_removed: bool = False,
    nbw: float = 1.0,
    convention: Convention = "physical",
) -> np.ndarray:
    """Refer a noise-scan covariance to the signal's sampling: the Psi the SNR methods need.

    - ``"physical"`` (default, primer section 2): ``Psi_signal = Psi_noise * (T_noise /
      T_signal) * (1/2 if oversampling_removed) / nbw``. Noise variance per sample scales as
      1/dwell (Gadgetron's ``T_acq/T_noise * rNBW`` prewhitener scale, inverted). Dwell times are
      the ADC dwells as acquired (before oversampling removal); give both or neither (neither:
      ratio 1). ``oversampling_removed`` means 2x readout oversampling was removed from the
      signal but kept in the noise scan, which halves the signal's white-noise variance.
    - ``"mroptimum"``: MR Optimum's ``Rn = Psi_noise / 2 / nbw``, whatever the sampling. Dwell
      times and ``oversampling_removed`` are ignored (MR Optimum has no dwell ratio on this path).
      It equals ``"physical"`` only when the signal has half the noise scan's variance per sample
      (its Siemens path: noise with 2x OS kept, signal OS-removed, same dwell); with equal sampling
      it makes AC and PMR read sqrt(2) high.

    Args:
        noise_cov: ``Psi_noise`` estimated from the noise scan, shape (coils, coils).
        noise_dwell_s: Noise scan ADC dwell time, seconds.
        signal_dwell_s: Signal ADC dwell time, seconds.
        oversampling_removed: Whether readout oversampling was removed from the signal only.
        nbw: Noise bandwidth of the noise scan (``noise_bandwidth``), > 0; 1 leaves Psi as is.
        convention: ``"physical"`` or ``"mroptimum"``.

    Returns:
        ``Psi_signal``, shape (coils, coils), same dtype as ``noise_cov``.
    """
    cov = _check_square(noise_cov, "noise_cov")
    if not (np.isfinite(nbw) and nbw > 0):
        raise InputError(f"nbw={nbw}; expected a finite noise bandwidth > 0")
    if convention == "mroptimum":
        return cov / (2.0 * nbw)
    if convention != "physical":
        raise InputError(f"convention={convention!r}; expected 'physical' or 'mroptimum'")
    if (noise_dwell_s is None) != (signal_dwell_s is None):
        raise InputError(
            f"noise_dwell_s={noise_dwell_s}, signal_dwell_s={signal_dwell_s}; "
            "expected both dwell times or neither"
        )
    ratio = 1.0
    if noise_dwell_s is not None and signal_dwell_s is not None:
        for name, value in (("noise_dwell_s", noise_dwell_s), ("signal_dwell_s", signal_dwell_s)):
            if not (np.isfinite(value) and value > 0):
                raise InputError(f"{name}={value}; expected a dwell time > 0 seconds")
        ratio = noise_dwell_s / signal_dwell_s
    if oversampling_removed:
        ratio /= 2.0
    return cov * (ratio / nbw)


# Readout margins: positions kept on each side of the field of view, as a fraction of the
# oversampled readout. Only the quarter of each margin next to the FOV: further out the
# receiver's anti-alias filter rolls the noise off (to ~0.1 of the in-band power at the band
# edge of twixtools' gre.dat), which would read low.
MARGIN_FRACTION = 1 / 16
# Background: the four corner blocks of the coil images, each this fraction of each side.
CORNER_FRACTION = 1 / 8
# Fewest samples per coil an estimate may rest on: its standard error is then <= 3%.
MIN_NOISE_SAMPLES = 1000
# A region is signal-free if its coefficient-of-variation test passes at this many SEs.
SIGNAL_FREE_SE = 5.0


def _centred_ifft(data: np.ndarray, axis: int) -> np.ndarray:
    """Centred orthonormal inverse FFT along one axis (``tasks.mr.fft``'s convention)."""
    shifted = np.fft.ifftshift(data, axes=axis)
    return np.fft.fftshift(np.fft.ifft(shifted, axis=axis, norm="ortho"), axes=axis)


def _per_acquisition(kspace: np.ndarray) -> np.ndarray:
    """k-space as ``(x, y, coils, acquisitions)``: slices and replicas as one axis."""
    kspace = np.asarray(kspace)
    if kspace.ndim < 3 or kspace.size == 0:
        raise InputError(f"kspace has shape {kspace.shape}; expected (x, y, coils[, ...])")
    return kspace.reshape(*kspace.shape[:3], -1)


def signal_free(samples: np.ndarray) -> tuple[bool, float]:
    """Whether noise samples look like pure complex Gaussian noise, coil by coil.

    For zero-mean complex Gaussian noise ``|n|^2`` is exponential, whose squared coefficient
    of variation ``var/mean^2`` is 1 with standard error about ``2/sqrt(Ns)``. Signal moves it:
    a steady signal lowers it (Rician ``(1 + 2a)/(1 + a)^2``, ``a`` = signal/noise power), a
    structured one (object edges, k-space energy near the centre) raises it.

    Args:
        samples: ``(samples, coils)``.

    Returns:
        ``(passed, worst)``: passed if every coil's CV^2 is within ``SIGNAL_FREE_SE`` standard
        errors of 1; ``worst`` is the coil's CV^2 furthest from 1.
    """
    power = np.abs(samples) ** 2
    mean = power.mean(axis=0)
    if np.any(mean <= 0):
        return False, float("nan")
    cv2 = power.var(axis=0) / mean**2
    worst = float(cv2[np.argmax(np.abs(cv2 - 1))])
    return bool(np.all(np.abs(cv2 - 1) <= SIGNAL_FREE_SE * 2 / np.sqrt(samples.shape[0]))), worst


def readout_margin_samples(kspace: np.ndarray) -> list[np.ndarray]:
    """Noise samples from the readout-oversampling margins of 2x oversampled k-space.

    Rule: a centred orthonormal inverse FFT along the readout (axis 0) of every acquired line
    (a line is acquired if any of its samples is non-zero: zero-filled partial-Fourier or
    undersampled lines carry no noise); the field of view is the central half
    ``[n/4, 3n/4)`` (what ``remove_readout_oversampling`` keeps); the samples are the
    ``n * MARGIN_FRACTION`` positions on each side next to it. These lie outside the
    prescribed FOV, so they hold no signal unless the object is wider than the FOV. Their
    variance is the k-space noise variance per oversampled sample (orthonormal transform).

    Args:
        kspace: k-space with its readout still 2x oversampled, ``(x, y, coils[, ...])``.

    Returns:
        One ``(samples, coils)`` array per side (the regions ``signal_free`` tests).
    """
    data = _per_acquisition(kspace)
    n = data.shape[0]
    width = max(1, int(n * MARGIN_FRACTION))
    sides = (np.arange(n // 4 - width, n // 4), np.arange(3 * n // 4, 3 * n // 4 + width))
    regions: list[list[np.ndarray]] = [[] for _ in sides]
    for index in range(data.shape[3]):  # one slice or replica at a time: bounded memory
        kspace_one = data[..., index]
        acquired = np.any(kspace_one != 0, axis=(0, 2))
        hybrid = _centred_ifft(kspace_one[:, acquired], axis=0)  # (x, lines, coils)
        for region, positions in zip(regions, sides, strict=True):
            region.append(hybrid[positions].reshape(-1, data.shape[2]))
    return [np.concatenate(r) for r in regions]


def background_samples(kspace: np.ndarray) -> list[np.ndarray]:
    """Noise samples from the background corners of the coil images.

    Rule: the centred orthonormal 2-D inverse FFT of each slice and replica; the four corner
    blocks, each ``CORNER_FRACTION`` of each side. Zero-filled lines (partial Fourier,
    undersampling) scale the image noise by the fraction ``f`` of lines acquired, so the
    samples are divided by ``sqrt(f)``: their covariance is the k-space noise per sample.

    Args:
        kspace: k-space ``(x, y, coils[, ...])``, readout oversampling removed or never there.

    Returns:
        One ``(samples, coils)`` array per corner (the regions ``signal_free`` tests).
    """
    data = _per_acquisition(kspace)
    nx, ny, coils, count = data.shape
    bx, by = max(1, int(nx * CORNER_FRACTION)), max(1, int(ny * CORNER_FRACTION))
    corners = [(slice(None, bx), slice(None, by)), (slice(None, bx), slice(-by, None))]
    corners += [(slice(-bx, None), slice(None, by)), (slice(-bx, None), slice(-by, None))]
    regions: list[list[np.ndarray]] = [[] for _ in corners]
    for index in range(count):
        kspace_one = data[..., index]
        fraction = np.count_nonzero(np.any(kspace_one != 0, axis=(0, 2))) / ny
        if fraction == 0:
            continue
        image = ifft2c(kspace_one.astype(np.complex128)) / np.sqrt(fraction)
        for region, (sx, sy) in zip(regions, corners, strict=True):
            region.append(image[sx, sy].reshape(-1, coils))
    return [np.concatenate(r) if r else np.empty((0, coils), complex) for r in regions]


@dataclass(frozen=True, slots=True)
class NoiseStatistics:
    """The noise a run's SNR maps are computed with.

    Attributes:
        noise_cov: ``Psi`` referred to the signal's sampling, shape (coils, coils); the
            identity (MR Optimum's rule) under ``source="identity (mroptimum)"``.
        measured_cov: ``Psi`` as measured from the noise samples, or None without noise.
        nbw: Noise bandwidth of the noise readouts, or None without a noise scan.
        samples: Noise samples the estimate used (0 without noise).
        source: Where the noise came from (``NoiseSource``).
        detail: The rule and regions behind ``source``, for the log and info.json.
        warning: Whether the log should warn (the identity: SNR in raw ADC units).
    """

    noise_cov: np.ndarray
    measured_cov: np.ndarray | None
    nbw: float | None
    samples: int
    source: NoiseSource = "noise scan"
    detail: str = ""
    warning: bool = False

    def describe(self) -> str:
        """One line for the log and the run summary."""
        text = f"{self.source}, {self.samples} samples per coil"
        return f"{text} ({self.detail})" if self.detail else text


def _estimate(regions: list[np.ndarray], what: str) -> tuple[np.ndarray | None, int, str]:
    """Pool the regions that pass ``signal_free``: (covariance or None, samples, detail)."""
    kept = [r for r in regions if r.shape[0] > 1 and signal_free(r)[0]]
    samples = sum(r.shape[0] for r in kept)
    detail = f"{what}: {len(kept)} of {len(regions)} regions signal-free"
    if samples < MIN_NOISE_SAMPLES:
        tests = ", ".join(
            f"CV^2 {signal_free(r)[1]:.2f} over {r.shape[0]}" for r in regions if r.shape[0] > 1
        )
        return None, samples, f"{detail}, {samples} samples (need {MIN_NOISE_SAMPLES}; {tests})"
    return noise_covariance(np.concatenate(kept)), samples, detail


def noise_statistics(
    raw: RawData, convention: Convention, *, oversampled: np.ndarray | None = None
) -> NoiseStatistics:
    """Measured covariance, its bandwidth, and ``Psi`` referred to the signal's sampling.

    Without a noise scan, ``Psi`` is estimated from signal-free samples (module docstring):
    the readout margins of ``oversampled`` (or of ``raw.signal`` when its 2x oversampling was
    kept), else the background corners of ``raw.signal``. A margin sample has the noise of
    one oversampled k-space sample, so it is halved when the signal's oversampling was
    removed; the margins next to the FOV are taken as in-band (NBW 1).

    Args:
        raw: The acquisition: noise ``(samples, coils)`` and the header's dwells.
        convention: ``"physical"`` or ``"mroptimum"`` (``signal_noise_covariance``).
        oversampled: The signal read with its readout oversampling kept, when ``raw``'s was
            removed (only read when there is no noise scan).

    Raises:
        InputError: No noise scan, ``convention="physical"``, and neither margins nor
            background hold enough signal-free samples; the message says how to pass noise.
    """
    info = raw.info
    coils = raw.signal.shape[2]
    if raw.noise is None and convention == "mroptimum":
        return NoiseStatistics(
            np.eye(coils, dtype=np.complex128),
            None,
            None,
            0,
            source="identity (mroptimum)",
            detail="no noise scan: Psi = I as MR Optimum, so SNR is in raw ADC units; pass "
            "noise= or convention='physical' for SNR in noise units",
            warning=True,
        )
    if raw.noise is None:
        tried = []
        readout_os = float(info.summary.get("readout_oversampling") or 1)
        if oversampled is None and not info.oversampling_removed and readout_os == 2:
            oversampled = raw.signal
        if oversampled is not None and info.kind == "2d":
            cov, samples, detail = _estimate(
                readout_margin_samples(oversampled), "readout margins next to the FOV"
            )
            if cov is not None:
                referred = cov / 2 if info.oversampling_removed else cov
                return NoiseStatistics(
                    referred, cov, None, samples, source="readout margins", detail=detail
                )
            tried.append(detail)
        cov, samples, detail = _estimate(background_samples(raw.signal), "background corners")
        if cov is not None:
            return NoiseStatistics(cov, cov, None, samples, source="background", detail=detail)
        tried.append(detail)
        raise InputError(
            "noise: the signal file has no noise scan and no signal-free samples to estimate "
            f"it from ({'; '.join(tried)}); pass noise=<URI of a noise-only scan with the "
            "same coils>, or convention='mroptimum' for MR Optimum's identity covariance"
        )
    measured = noise_covariance(raw.noise)
    nbw = noise_bandwidth(raw.noise_by_readout())
    referred = signal_noise_covariance(
        measured,
        noise_dwell_s=info.noise_dwell_s,
        signal_dwell_s=info.signal_dwell_s,
        oversampling_removed=info.oversampling_removed,
        nbw=nbw,
        convention=convention,
    )
    return NoiseStatistics(referred, measured, nbw, int(raw.noise.shape[0]))
