"""Numerical phantoms with known truth: object, coil sensitivities, noise covariance.

Used by tests (analytic SNR), by the demo pipeline until the simulator lands, and by the
benchmarks. Noise convention: ``Psi = E[n n^H]`` is the complex covariance, so each of the
real and imaginary parts of coil ``i`` has variance ``Psi[i, i] / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tasks.mr.fft import fft2c


@dataclass(frozen=True)
class Phantom:
    """A noiseless acquisition and everything needed to predict its SNR.

    Attributes:
        kspace: Noiseless multi-coil k-space, complex128, shape (x, y, coils).
        image: The object m, complex128, shape (x, y).
        sensitivities: Coil sensitivities s, complex128, shape (x, y, coils).
        noise_cov: Complex noise covariance Psi, shape (coils, coils), Hermitian PD.
        support: Where the object is, bool, shape (x, y).
    """

    kspace: np.ndarray
    image: np.ndarray
    sensitivities: np.ndarray
    noise_cov: np.ndarray
    support: np.ndarray

    def snr_optimal(self) -> np.ndarray:
        """Truth for B1 and prewhitened RSS (high SNR): ``|m| sqrt(2 s^H Psi^-1 s)``."""
        inv = np.linalg.inv(self.noise_cov)
        s = self.sensitivities
        quad = np.einsum("xyi,ij,xyj->xy", s.conj(), inv, s).real
        return np.abs(self.image) * np.sqrt(2 * quad)

    def snr_rss_unwhitened(self) -> np.ndarray:
        """Truth for RSS without prewhitening: ``sqrt(2)|m| (s^H s)/sqrt(s^H Psi s)``."""
        s = self.sensitivities
        power = np.einsum("xyi,xyi->xy", s.conj(), s).real
        quad = np.einsum("xyi,ij,xyj->xy", s.conj(), self.noise_cov, s).real
        return np.sqrt(2) * np.abs(self.image) * power / np.sqrt(quad)


def coil_sensitivities(nx: int, ny: int, coils: int) -> np.ndarray:
    """Smooth complex sensitivities of coils spaced on a ring around the field of view.

    Returns:
        complex128, shape (nx, ny, coils); each coil peaks near its position with a
        linear phase, so coils overlap the way surface coils do.
    """
    x = np.linspace(-1, 1, nx)[:, None]
    y = np.linspace(-1, 1, ny)[None, :]
    maps = np.empty((nx, ny, coils), dtype=np.complex128)
    for c in range(coils):
        angle = 2 * np.pi * c / coils
        cx, cy = 1.2 * np.cos(angle), 1.2 * np.sin(angle)
        distance2 = (x - cx) ** 2 + (y - cy) ** 2
        phase = np.pi / 3 * (x * np.cos(angle) - y * np.sin(angle)) + angle
        maps[..., c] = np.exp(-distance2 / 1.5) * np.exp(1j * phase)
    return maps


def correlated_covariance(coils: int, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """A Hermitian positive-definite covariance with unequal variances and complex coupling.

    Args:
        coils: Number of coils.
        correlation: Magnitude of neighbouring coils' correlation coefficient, in [0, 0.5).
        rng: Random generator for the variances and phases.
    """
    if not 0 <= correlation < 0.5:
        raise ValueError(f"correlation={correlation}; expected 0 <= correlation < 0.5")
    variances = rng.uniform(0.5, 2.0, coils)
    coefficient = np.eye(coils, dtype=np.complex128)
    for i in range(coils - 1):
        value = correlation * np.exp(1j * rng.uniform(-np.pi, np.pi))
        coefficient[i, i + 1], coefficient[i + 1, i] = value, np.conj(value)
    scale = np.sqrt(variances)
    return coefficient * np.outer(scale, scale)


def complex_noise(
    shape: tuple[int, ...], noise_cov: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Complex Gaussian noise with covariance ``noise_cov`` along the last axis (coils).

    ``n = chol(Psi) w`` with ``w ~ CN(0, I)``.

    Args:
        shape: Output shape, coils last, e.g. (x, y, coils) or (samples, coils).
        noise_cov: Complex covariance, shape (coils, coils).
        rng: Random generator.
    """
    white = rng.standard_normal((*shape, 2)).view(np.complex128)[..., 0] / np.sqrt(2)
    return white @ np.linalg.cholesky(noise_cov).T


def make_phantom(
    nx: int = 64,
    ny: int = 64,
    coils: int = 4,
    *,
    amplitude: float = 50.0,
    correlation: float = 0.3,
    seed: int = 0,
) -> Phantom:
    """A uniform disc in smooth multi-coil sensitivities with a known correlated noise.

    Args:
        nx: Readout samples.
        ny: Phase-encoding lines.
        coils: Receive coils.
        amplitude: Object magnitude |m| inside the disc.
        correlation: Neighbouring coils' noise correlation coefficient.
        seed: Seeds the covariance's variances and phases.
    """
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, nx)[:, None]
    y = np.linspace(-1, 1, ny)[None, :]
    support = x**2 + y**2 < 0.6**2
    image = np.where(support, amplitude * np.exp(1j * 0.3), 0).astype(np.complex128)
    sensitivities = coil_sensitivities(nx, ny, coils)
    kspace = fft2c(image[..., None] * sensitivities)
    noise_cov = correlated_covariance(coils, correlation, rng)
    return Phantom(kspace, image, sensitivities, noise_cov, support)


def phantom_acquisition(
    phantom: Phantom,
    *,
    slices: int = 1,
    replicas: int = 1,
    noise_samples: int = 4096,
    seed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy acquisition of ``phantom`` and a matching noise-only scan.

    Every slice and replica is the phantom's k-space plus fresh noise with its covariance.

    Returns:
        Signal, complex128 (x, y, coils, slices, replicas), and noise, (samples, coils).
    """
    rng = np.random.default_rng(seed)
    nx, ny, coils = phantom.kspace.shape
    signal = np.repeat(phantom.kspace[..., None, None], slices, axis=3)
    signal = np.repeat(signal, replicas, axis=4)
    shape = (nx, ny, slices, replicas, coils)
    signal += np.moveaxis(complex_noise(shape, phantom.noise_cov, rng), -1, 2)
    noise = complex_noise((noise_samples, coils), phantom.noise_cov, rng)
    return signal, noise
