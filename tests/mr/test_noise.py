import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.fft import fft2c
from tasks.mr.io import read_raw, write_mrd
from tasks.mr.noise import (
    background_samples,
    noise_bandwidth,
    noise_coefficient,
    noise_covariance,
    noise_statistics,
    prewhiten,
    prewhitening_matrix,
    readout_margin_samples,
    signal_free,
    signal_noise_covariance,
)
from tasks.mr.phantom import complex_noise, correlated_covariance, phantom_acquisition
from tasks.mr.snr import ReconSpec, SnrSpec, snr_map


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


# Noise without a noise scan: estimated from signal-free samples of the signal itself.


def covariance_bound(psi: np.ndarray, samples: int) -> np.ndarray:
    """Primer section 5: |Psi_hat - Psi| <= 5 sqrt(Psi_ii Psi_jj / Ns)."""
    variances = np.real(np.diag(psi))
    return 5 * np.sqrt(np.outer(variances, variances) / samples)


def oversampled_acquisition(phantom, acquisitions: int, seed: int, *, wide: bool = False):
    """The phantom through a 2x oversampled readout: (2 nx, ny, coils, 1, acquisitions).

    The object sits in the central half of the readout (the FOV) unless ``wide``, where it
    fills the oversampled readout too; every k-space sample carries noise of covariance Psi.
    """
    nx = phantom.kspace.shape[0]
    images = phantom.image[..., None] * phantom.sensitivities
    if wide:
        images = np.concatenate([images, images], axis=0)
    else:
        images = np.pad(images, ((nx // 2, nx // 2), (0, 0), (0, 0)))
    clean = fft2c(images)
    noise = complex_noise((acquisitions, *clean.shape), phantom.noise_cov, rng_for(seed))
    return np.moveaxis(clean[None] + noise, 0, -1)[:, :, :, None, :]


def rng_for(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def mrd(tmp_path, name, signal, noise=None, oversampling=2):
    return write_mrd(
        tmp_path / name,
        signal,
        noise,
        fov_mm=(200, 200, 5),
        dwell_s=5e-6,
        oversampling=oversampling,
    )


def read_both(path):
    """The signal as the flow reads it (oversampling removed) and with its oversampling kept."""
    return read_raw(path), read_raw(path, remove_oversampling=False).signal


def test_readout_margins_estimate_the_known_psi_and_agree_with_a_noise_scan(phantom, tmp_path):
    signal = oversampled_acquisition(phantom, acquisitions=32, seed=11)
    scan = complex_noise((64 * 256, 4), phantom.noise_cov, rng_for(12))
    with_scan = read_raw(mrd(tmp_path, "scan.h5", signal, scan))
    raw, kept = read_both(mrd(tmp_path, "margins.h5", signal))
    assert raw.noise is None
    assert raw.info.oversampling_removed

    stats = noise_statistics(raw, "physical", oversampled=kept)
    # 2 sides x 4 positions (64/16) x 32 lines x 32 acquisitions.
    assert (stats.source, stats.samples) == ("readout margins", 8192)
    # The margins hold the oversampled k-space noise Psi; removing the oversampling halves it.
    assert np.all(
        np.abs(stats.measured_cov - phantom.noise_cov) <= covariance_bound(phantom.noise_cov, 8192)
    )
    np.testing.assert_allclose(stats.noise_cov, stats.measured_cov / 2, rtol=1e-12)

    # Against a separate noise scan of the same acquisition, referred the same way: the two
    # estimates are independent, so the bound adds both sample counts' variances.
    scanned = noise_statistics(with_scan, "physical")
    assert scanned.source == "noise scan"
    samples = 1 / (1 / 8192 + 1 / scan.shape[0])
    bound = covariance_bound(phantom.noise_cov / 2, int(samples))
    assert np.all(np.abs(stats.noise_cov - scanned.noise_cov * scanned.nbw) <= bound)

    # And the SNR they give: AC-B1 ROI means within the replica tests' ROI tolerance form,
    # max(1%, 3/sqrt(2 Ns M)), with the estimate's noise samples Ns standing for replicas.
    recon = ReconSpec(recon="b1")
    maps = [
        snr_map(raw.signal[..., 0, 0], cov, recon, SnrSpec(method="ac")).snr
        for cov in (stats.noise_cov, phantom.noise_cov / 2)
    ]
    inside = phantom.support
    assert abs(np.mean(maps[0][inside]) / np.mean(maps[1][inside]) - 1) < max(
        0.01, 3 / np.sqrt(2 * 8192)
    ) + 1 / np.sqrt(8192)


def test_background_corners_estimate_the_known_psi_and_agree_with_a_noise_scan(phantom, tmp_path):
    signal, scan = phantom_acquisition(phantom, slices=4, replicas=8, noise_samples=8192, seed=13)
    raw = read_raw(mrd(tmp_path, "plain.h5", signal, oversampling=1))
    stats = noise_statistics(raw, "physical")
    # 4 corners of 4 x 4 pixels (32/8), 4 slices x 8 replicas; no oversampling, no margins.
    assert (stats.source, stats.samples) == ("background", 2048)
    assert np.all(
        np.abs(stats.noise_cov - phantom.noise_cov) <= covariance_bound(phantom.noise_cov, 2048)
    )
    scanned = noise_covariance(scan)
    samples = 1 / (1 / 2048 + 1 / scan.shape[0])
    assert np.all(
        np.abs(stats.noise_cov - scanned) <= covariance_bound(phantom.noise_cov, int(samples))
    )


def test_background_rescales_zero_filled_lines(phantom):
    signal, _ = phantom_acquisition(phantom, slices=8, replicas=8, noise_samples=16, seed=14)
    signal[:, 1::2] = 0  # every other line not acquired: image noise Psi / 2
    regions = background_samples(signal)
    samples = np.concatenate(regions)
    assert np.all(
        np.abs(noise_covariance(samples) - phantom.noise_cov)
        <= covariance_bound(phantom.noise_cov, samples.shape[0])
    )


def test_margins_holding_signal_fall_back_to_the_background(phantom, tmp_path):
    wide = oversampled_acquisition(phantom, acquisitions=32, seed=15, wide=True)
    assert not any(signal_free(r)[0] for r in readout_margin_samples(wide[:, :, :, 0]))
    raw, kept = read_both(mrd(tmp_path, "wide.h5", wide))
    # The background corners of the FOV are still signal-free (the disc is inside the FOV).
    stats = noise_statistics(raw, "physical", oversampled=kept)
    assert stats.source == "background"
    assert "readout" not in stats.detail


def test_no_signal_free_samples_is_refused_saying_how_to_pass_noise(phantom, tmp_path):
    # The object fills the whole image: smooth coil sensitivities everywhere, no background.
    filled = fft2c(50 * phantom.sensitivities)
    noise = complex_noise((16, *filled.shape), phantom.noise_cov, rng_for(16))
    signal = np.moveaxis(filled[None] + noise, 0, -1)[:, :, :, None, :]
    raw = read_raw(mrd(tmp_path, "filled.h5", signal, oversampling=1))
    with pytest.raises(
        InputError, match=r"no signal-free samples.*background corners: 0 of 4.*pass noise="
    ):
        noise_statistics(raw, "physical")
    # Too small an image: 4 x 4 pixels leave 1-pixel corners, 64 samples.
    small = read_raw(mrd(tmp_path, "small.h5", signal[::8, ::8], oversampling=1))
    with pytest.raises(InputError, match=r"need 1000.*pass noise="):
        noise_statistics(small, "physical")


def test_mroptimum_convention_keeps_the_identity_with_a_warning(phantom, tmp_path):
    signal, _ = phantom_acquisition(phantom, slices=1, replicas=16, noise_samples=16, seed=17)
    raw = read_raw(mrd(tmp_path, "id.h5", signal, oversampling=1))
    stats = noise_statistics(raw, "mroptimum")
    np.testing.assert_array_equal(stats.noise_cov, np.eye(4))
    assert (stats.source, stats.samples, stats.warning) == ("identity (mroptimum)", 0, True)
    assert "raw ADC units" in stats.describe()
    assert "noise=" in stats.describe()
    assert not noise_statistics(raw, "physical").warning


def test_twix_example_without_a_noise_scan_gets_snr_in_noise_units(twix_example):
    """twixtools' gre.dat: no noise-adjust scan. With Psi = I (MR Optimum) its AC-B1 median
    SNR is 2e-5 (raw ADC units); from the readout margins it is about 13."""
    raw, kept = read_both(twix_example)
    assert raw.noise is None
    stats = noise_statistics(raw, "physical", oversampled=kept)
    # 2 sides x 20 positions (320/16) x 160 lines.
    assert (stats.source, stats.samples) == ("readout margins", 6400)
    # The background corners (1600 samples) agree within 5 standard errors of the two.
    corners = noise_statistics(raw, "physical")
    assert corners.source == "background"
    ratio = np.real(np.diag(corners.noise_cov)) / np.real(np.diag(stats.noise_cov))
    np.testing.assert_allclose(ratio, 1, atol=5 * np.sqrt(1 / 1600 + 1 / 6400))

    recon, spec = ReconSpec(recon="b1", mask="reference"), SnrSpec(method="ac")
    medians = {}
    for name, cov in (("margins", stats.noise_cov), ("identity", np.eye(2))):
        maps = snr_map(raw.signal[..., 0, 0], cov, recon, spec)
        medians[name] = float(np.median(maps.snr[maps.mask.astype(bool)]))
    assert medians["identity"] < 1e-3
    assert 5 < medians["margins"] < 50
