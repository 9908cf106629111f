"""MR Optimum's SNR algorithms, run the way its reference code runs them.

The baseline for ``benchmarks.mr_snr``. Reimplemented (not copied) from reading
cloudmrhub/cloudmr-tools (``cmtools/cm.py``, ``cmtools/cm2D.py``, main @aa6df88) and
cloudmrhub/mroptimum-tools (``mrotools/mro.py``, main @58b79441). What is kept, because it is
what the timings stand for:

- the layout (freq, phase, coil) and precision: ``mro.customizerecontructor`` sets every
  reconstructor's ``complexType`` to complex64, so signal, noise covariance, Cholesky factor
  and prewhitening are complex64;
- the loop structure: the Kellman (AC) classes and ``cm2DReconB1`` combine coils in a Python
  loop over every (x, y) pixel; the plain ``cm2DReconRSS`` is vectorised;
- PMR: one Python iteration per replica that draws pseudo noise ``Rn^(1/2) w`` in k-space,
  adds it to the un-whitened signal, prewhitens again (new Cholesky each time), fully
  reconstructs, and appends the image to a growing stack with ``np.concatenate``; the std is
  taken over the whole stack at the end, and the numerator is the last replica;
- the random draws use NumPy's legacy ``randn`` (MR Optimum calls the global ``np.random``;
  here a seeded ``RandomState`` with the same algorithm, so runs are repeatable).

Dropped, because it costs nothing measurable or is not on these paths: the reconstructor
classes and their caches (the coil maps are computed once, as the cache does), logging,
acceleration patterns (RSS/B1 are unaccelerated), masks other than ``"no"`` (``mrotools/snr.py``'s
default when the job has no mask).

``rn`` everywhere is MR Optimum's noise covariance as it is handed to the reconstructor
(``Rn = Psi/(2 NBW)`` from a noise scan, or whatever matrix the caller gives); the formulas use
it as given, so passing the same matrix to ``tasks.mr.snr.snr_map`` gives the same maps.
"""

from __future__ import annotations

import numpy as np

#: ``mro.customizerecontructor``: ``reconstructor.complexType = np.complex64``.
COMPLEX = np.complex64


def mr_ifft(kspace: np.ndarray, scaled: bool = True) -> np.ndarray:
    """Coil images from k-space (freq, phase, coil).

    Mirrors ``cmtools/cm.py: MRifft(k, [0, 1])`` (``ifftshift`` over *all* axes, the coil axis
    included, ``np.fft.ifft`` along freq then phase, ``ifftshift`` over all axes again) and,
    with ``scaled``, ``cm2D.cm2DRecon.get2DKSIFFT`` (times ``sqrt(Nf Np)``, a float64 scalar, so
    under NumPy 2 promotion the images come out complex128, as they do in MR Optimum there).
    """
    data = np.fft.ifftshift(kspace)
    for axis in (0, 1):
        data = np.fft.ifft(data, axis=axis)
    data = np.fft.ifftshift(data)
    if scaled:
        data = data * np.sqrt(np.prod(np.array(kspace.shape[0:2])))
    return data


def prewhiten(kspace: np.ndarray, rn: np.ndarray) -> np.ndarray:
    """Prewhitened k-space ``L^-1 K`` per sample, ``L = cholesky(rn)``, in the data's precision.

    Mirrors ``cmtools/cm.py: prewhiteningSignal``: the factor and its inverse are computed on
    every call (MR Optimum resets the prewhitened signal whenever a new signal is set) and cast
    to the data's dtype; the data are reordered to a coil-major (coil, phase*freq) matrix in
    Fortran order, multiplied, and reordered back.
    """
    lower = np.linalg.cholesky(rn).astype(kspace.dtype)
    whitener = np.linalg.inv(lower).astype(kspace.dtype)
    nf, nph, nc = kspace.shape
    coil_major = np.transpose(kspace, [2, 1, 0]).reshape(nc, nph * nf, order="F")
    white = np.matmul(whitener, coil_major)
    return np.transpose(np.reshape(white, [nc, nph, nf], order="F"), [2, 1, 0])


def inner_sensitivities(kspace_pw: np.ndarray) -> np.ndarray:
    """Inner ("simple SENSE") coil maps ``I_c / RSS`` from prewhitened reference k-space.

    Mirrors ``cmtools/cm.py: calculate_simple_sense_sensitivitymaps2D`` with mask ``"no"``
    (``calculateCoilsSensitivityMask2D``: ones tiled over coils): unscaled ``MRifft``, RSS over
    coils, division by the RSS tiled over coils, times the mask. For B1 the reference is the
    signal itself (``mrotools/snr.py``), so ``s^H s = 1`` everywhere the RSS is non-zero.
    """
    images = mr_ifft(kspace_pw, scaled=False)
    nc = kspace_pw.shape[-1]
    reference = np.sqrt(np.sum(np.abs(images) ** 2, axis=-1))
    maps = images / np.tile(np.expand_dims(reference, axis=-1), [1, 1, nc])
    mask = np.tile(np.ones(reference.shape)[..., None], [1, 1, nc]).astype(np.uint8)
    return maps * mask


def recon_rss(kspace_pw: np.ndarray) -> np.ndarray:
    """Plain RSS image ``sqrt(sum_c |rho_c|^2)``, vectorised.

    Mirrors ``cmtools/cm2D.py: cm2DReconRSS.getOutput``.
    """
    images = mr_ifft(kspace_pw)
    return np.sqrt(np.sum(np.abs(images) ** 2, axis=-1))


def recon_b1(kspace_pw: np.ndarray, sensitivities: np.ndarray) -> np.ndarray:
    """B1 (Roemer) image ``s^H Rn^-1 rho`` with a Python loop over every pixel.

    Mirrors ``cmtools/cm2D.py: cm2DReconB1.getOutput``: ``Rn^-1`` is the identity after
    prewhitening (``getInverseNoiseCovariancePrewhitened``), pixels whose maps sum to 0 stay 0,
    and the output is complex (``complexType``).
    """
    images = mr_ifft(kspace_pw)
    inverse_rn = np.eye(kspace_pw.shape[-1])
    nf, nph = kspace_pw.shape[0:2]
    out = np.zeros((nf, nph), dtype=COMPLEX)
    for irow in range(nf):
        for icol in range(nph):
            s = sensitivities[irow, icol, :]
            if s.sum() != 0:
                out[irow, icol] = s.conj().T @ inverse_rn @ images[irow, icol, :]
    return out


def kellman_rss(kspace_pw: np.ndarray) -> np.ndarray:
    """AC (Kellman) RSS SNR ``|sqrt(2 rho^H rho)|`` with a Python loop over every pixel.

    Mirrors ``cmtools/cm2D.py: cm2DKellmanRSS.getOutput``; complex output with zero imaginary
    part, as MR Optimum stores it. MR Optimum assigns the (1, 1) product ``B^H B`` to a pixel
    directly, which older NumPy converted with a DeprecationWarning and NumPy 2.4 refuses
    (TypeError: only 0-dimensional arrays can be converted), so its element is taken here.
    """
    images = mr_ifft(kspace_pw)
    nf, nph = kspace_pw.shape[0:2]
    snr = np.zeros((nf, nph), dtype=COMPLEX)
    for irow in range(nf):
        for icol in range(nph):
            column = np.expand_dims(images[irow, icol], axis=-1)
            snr[irow, icol] = np.abs(np.sqrt(2 * (column.conj().T @ column)))[0, 0]
    return snr


def kellman_b1(kspace_pw: np.ndarray, sensitivities: np.ndarray) -> np.ndarray:
    """AC (Kellman) B1 SNR ``sqrt(2)|s^H rho| / sqrt(|s^H s|)`` with a per-pixel Python loop.

    Mirrors ``cmtools/cm2D.py: cm2DKellmanB1.getOutput`` (``Rn^-1`` = identity after
    prewhitening; pixels whose maps sum to 0 stay 0; complex output with real values).
    """
    images = mr_ifft(kspace_pw)
    inverse_rn = np.eye(kspace_pw.shape[-1])
    nf, nph = kspace_pw.shape[0:2]
    snr = np.zeros((nf, nph), dtype=COMPLEX)
    root2 = np.sqrt(2.0)
    for irow in range(nf):
        for icol in range(nph):
            s = sensitivities[irow, icol, :]
            if s.sum() != 0:
                rho = images[irow, icol, :]
                numerator = np.dot(root2, np.abs(s.conj().T @ inverse_rn @ rho))
                denominator = np.sqrt(np.abs(s.conj().T @ inverse_rn @ s))
                snr[irow, icol] = np.divide(numerator, denominator)
    return snr


def correlation_factor(rn: np.ndarray) -> np.ndarray:
    """``Rn^(1/2) = V sqrt(D) V^-1`` from ``eigh(Rn, UPLO='U')``.

    Mirrors ``cmtools/cm.py: get_correlation_factor``.
    """
    values, vectors = np.linalg.eigh(rn, UPLO="U")
    return vectors @ np.sqrt(np.diag(values)) @ np.linalg.inv(vectors)


def pseudo_noise(
    shape: tuple[int, int, int], factor: np.ndarray, rng: np.random.RandomState
) -> np.ndarray:
    """Correlated complex128 noise ``Rn^(1/2) w``, ``w = sqrt(1/2)(randn + i randn)``.

    Mirrors ``cmtools/cm.py: get_pseudo_noise`` (flatten to (samples, coils), multiply the
    transpose, reshape back), with a seeded legacy generator in place of global ``np.random``.
    """
    white = np.sqrt(0.5) * (rng.randn(*shape) + 1j * rng.randn(*shape))
    nrow, ncol, nchan = shape
    flat = np.reshape(white, (nrow * ncol, nchan))
    correlated = np.matmul(factor, flat.T)
    return np.reshape(correlated.T, (nrow, ncol, nchan))


def _prepare(kspace: np.ndarray, rn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signal and covariance as the reconstructor holds them (``checkKSpacePixelType``)."""
    return np.asarray(kspace).astype(COMPLEX), np.asarray(rn).astype(COMPLEX)


def ac_snr(kspace: np.ndarray, rn: np.ndarray, recon: str = "b1") -> np.ndarray:
    """AC (array combining, Kellman) SNR map of one slice, RSS or B1.

    Mirrors ``mrotools/mro.py: calcKellmanSNR`` with ``cm2DKellmanRSS``/``cm2DKellmanB1``:
    prewhiten the signal with ``rn``, take the inner maps from the prewhitened signal (B1's
    reference is the signal), then the per-pixel Kellman formula.

    Args:
        kspace: Signal k-space (freq, phase, coil).
        rn: Noise covariance as handed to MR Optimum's reconstructor, (coil, coil).
        recon: ``"rss"`` or ``"b1"``.

    Returns:
        SNR, complex64 with real values (freq, phase), as MR Optimum stores it.
    """
    signal, cov = _prepare(kspace, rn)
    signal_pw = prewhiten(signal, cov)
    if recon == "rss":
        return kellman_rss(signal_pw)
    if recon == "b1":
        return kellman_b1(signal_pw, inner_sensitivities(prewhiten(signal, cov)))
    raise ValueError(f"recon={recon!r}; expected 'rss' or 'b1'")


def pmr_snr(
    kspace: np.ndarray,
    rn: np.ndarray,
    recon: str = "b1",
    replicas: int = 20,
    seed: int = 0,
    *,
    per_pixel: bool = True,
) -> np.ndarray:
    """PMR (pseudo multiple replicas, Robson 2008) SNR map of one slice, RSS or B1.

    Mirrors ``mrotools/mro.py: calcPseudoMultipleReplicasSNR`` and
    ``cmtools/cm2D.py: cm2DSignalToNoiseRatioPseudoMultipleReplicas.getOutput``:

    1. ``F = Rn^(1/2)`` from the complex64 covariance (``get_correlation_factor``);
    2. per replica: ``S + F w`` (complex128, cast to complex64 by ``setSignalKSpace``),
       prewhitened again, reconstructed by the plain recon (RSS vectorised, B1 per pixel) with
       the coil maps computed once from the noise-free signal (cached), and appended to the
       stack with ``np.concatenate`` (``add2DImage``);
    3. numerator = the reconstructor's output after the loop, i.e. the *last* replica;
       ``D = nanstd(|stack| + max|stack|, ddof=1)`` over replicas, ``D <= eps`` set to 1;
       ``SNR = I_ref / D``.

    Args:
        kspace: Signal k-space (freq, phase, coil).
        rn: Noise covariance as handed to MR Optimum's reconstructor, (coil, coil).
        recon: ``"rss"`` or ``"b1"``.
        replicas: NR.
        seed: Seed of the legacy ``RandomState`` that replaces global ``np.random``.
        per_pixel: B1 as MR Optimum runs it (a Python loop over pixels). False swaps in a
            vectorised ``s^H rho`` with the same allocations per replica, for measuring the
            replica stack's memory at replica counts the loop would take hours for.

    Returns:
        SNR (freq, phase): float for RSS; complex64 for B1, as MR Optimum returns it.
    """
    if recon not in ("rss", "b1"):
        raise ValueError(f"recon={recon!r}; expected 'rss' or 'b1'")
    signal, cov = _prepare(kspace, rn)
    rng = np.random.RandomState(seed)
    factor = correlation_factor(cov)
    sensitivities = inner_sensitivities(prewhiten(signal, cov)) if recon == "b1" else None

    def reconstruct(noisy_pw: np.ndarray) -> np.ndarray:
        if sensitivities is None:
            return recon_rss(noisy_pw)
        if per_pixel:
            return recon_b1(noisy_pw, sensitivities)
        images = mr_ifft(noisy_pw)
        return np.einsum("xyc,xyc->xy", sensitivities.conj(), images).astype(COMPLEX)

    stack = np.array([])
    image = None
    for _ in range(replicas):
        noisy = (signal + pseudo_noise(signal.shape, factor, rng)).astype(COMPLEX)
        image = reconstruct(prewhiten(noisy, cov))
        layer = np.expand_dims(image, axis=-1)
        stack = layer if stack.size == 0 else np.concatenate((stack, layer), axis=-1)
    assert image is not None
    peak = np.nanmax(np.abs(stack), axis=-1)
    denominator = np.nanstd(np.abs(stack) + np.max(np.abs(peak)), axis=-1, ddof=1)
    denominator[denominator <= np.finfo(np.float64).eps] = 1
    return np.divide(image, denominator)
