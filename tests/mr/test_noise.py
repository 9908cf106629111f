import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.noise import (
    noise_bandwidth,
    noise_coefficient,
    noise_covariance,
    prewhiten,
    prewhitening_matrix,
    signal_noise_covariance,
)
from tasks.mr.phantom import complex_noise, correlated_covariance


@pytest.fixture
def psi(rng):
    return correlated_covariance(4, 0.4, rng)


def test_covariance_estimate_matches_known_psi(psi, rng):
    samples = 200_000
    estimate = noise_covariance(complex_noise((samples, 4), psi, rng))
    # Primer section 5: |Psi_hat - Psi| <= 5 sqrt(Psi_ii Psi_jj / Ns).
    variances = np.real(np.diag(psi))
    bound = 5 * np.sqrt(np.outer(variances, variances) / samples)
    assert np.all(np.abs(estimate - psi) <= bound)
    np.testing.assert_allclose(estimate, estimate.conj().T, atol=0)


def test_covariance_pools_readout_and_lines_without_removing_the_mean(rng):
    noise = rng.standard_normal((32, 8, 2)) + 1j * rng.standard_normal((32, 8, 2))
    flat = noise.reshape(-1, 2)
    expected = flat.T @ flat.conj() / flat.shape[0]
    np.testing.assert_allclose(noise_covariance(noise), expected, rtol=1e-12)
    # A constant offset is kept: the mean is not removed (as MR Optimum).
    shifted = noise_covariance(flat + 10)
    assert np.all(np.real(np.diag(shifted)) > 100)


def test_coefficients_are_complex_with_unit_diagonal_and_magnitude_at_most_one(psi):
    rho = noise_coefficient(psi)
    assert np.iscomplexobj(rho)
    np.testing.assert_allclose(np.diag(rho), 1, atol=1e-15)
    assert np.all(np.abs(rho) <= 1 + 1e-15)
    np.testing.assert_allclose(np.abs(rho[0, 1]), 0.4, rtol=1e-12)


def test_prewhitening_matrix_turns_psi_into_identity(psi):
    whitener = prewhitening_matrix(psi)
    np.testing.assert_allclose(whitener @ psi @ whitener.conj().T, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(np.triu(whitener, 1), 0, atol=0)


def test_prewhitened_noise_has_identity_covariance(psi, rng):
    samples = 100_000
    white = prewhiten(complex_noise((samples, 4), psi, rng), prewhitening_matrix(psi))
    # Primer section 5: within 5/sqrt(Ns) of I.
    assert np.max(np.abs(noise_covariance(white) - np.eye(4))) < 5 / np.sqrt(samples)


def test_prewhiten_keeps_single_precision_and_any_leading_shape(psi, rng):
    data = complex_noise((6, 5, 4), psi, rng).astype(np.complex64)
    out = prewhiten(data, prewhitening_matrix(psi))
    assert out.dtype == np.complex64
    assert out.shape == (6, 5, 4)


def test_not_positive_definite_covariance_raises_with_its_smallest_eigenvalue():
    psi = np.array([[1.0, 2.0], [2.0, 1.0]], dtype=np.complex128)  # eigenvalues -1 and 3
    with pytest.raises(InputError, match=r"not positive definite: smallest eigenvalue -1\b"):
        prewhitening_matrix(psi)


def test_non_hermitian_or_non_square_covariance_raises():
    with pytest.raises(InputError, match="not Hermitian"):
        prewhitening_matrix(np.array([[1.0, 0.5j], [0.5j, 1.0]]))
    with pytest.raises(InputError, match=r"shape \(2, 3\); expected a square"):
        prewhitening_matrix(np.ones((2, 3)))


def test_prewhiten_rejects_a_coil_count_mismatch(psi):
    with pytest.raises(InputError, match="data has 3 coils"):
        prewhiten(np.ones((5, 3), dtype=complex), prewhitening_matrix(psi))


def test_white_noise_bandwidth_is_one(rng):
    # Primer section 5: NBW of white noise = 1 +- 0.02 with >= 6e4 samples per coil.
    noise = rng.standard_normal((256, 256, 2)) + 1j * rng.standard_normal((256, 256, 2))
    assert noise_bandwidth(noise) == pytest.approx(1.0, abs=0.02)


def test_filtered_noise_bandwidth_matches_its_filter(rng):
    n = 256
    noise = rng.standard_normal((n, 256, 2)) + 1j * rng.standard_normal((n, 256, 2))
    freq = np.fft.fftfreq(n)
    gain = 1 / np.sqrt(1 + (freq / 0.3) ** 8)  # receiver roll-off near the band edge
    filtered = np.fft.ifft(np.fft.fft(noise, axis=0) * gain[:, None, None], axis=0)
    power = gain**2
    central = np.concatenate([power[: n // 4], power[3 * n // 4 - 1 :]])
    expected = np.mean(power) / np.mean(central)
    assert expected < 0.9
    assert noise_bandwidth(filtered) == pytest.approx(expected, abs=0.02)


def test_physical_convention_refers_psi_to_the_signal_sampling(psi):
    referred = signal_noise_covariance(
        psi, noise_dwell_s=5e-6, signal_dwell_s=10e-6, oversampling_removed=True, nbw=0.8
    )
    np.testing.assert_allclose(referred, psi * 0.5 * 0.5 / 0.8, rtol=1e-15)
    np.testing.assert_allclose(signal_noise_covariance(psi), psi, rtol=0)


def test_mroptimum_convention_halves_psi_and_divides_by_nbw_ignoring_dwell(psi):
    referred = signal_noise_covariance(
        psi, noise_dwell_s=5e-6, signal_dwell_s=10e-6, nbw=0.8, convention="mroptimum"
    )
    np.testing.assert_allclose(referred, psi / (2 * 0.8), rtol=1e-15)


def test_signal_covariance_needs_both_dwell_times_and_a_known_convention(psi):
    with pytest.raises(InputError, match="expected both dwell times or neither"):
        signal_noise_covariance(psi, noise_dwell_s=5e-6)
    with pytest.raises(InputError, match="convention='gadgetron'"):
        signal_noise_covariance(psi, convention="gadgetron")
    with pytest.raises(InputError, match="nbw=0"):
        signal_noise_covariance(psi, nbw=0)
