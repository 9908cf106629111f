import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.coils import sensitivities_inner
from tasks.mr.fft import fft2c, ifft2c
from tasks.mr.noise import prewhiten, prewhitening_matrix
from tasks.mr.recon import (
    aliased_images,
    b1_combine,
    rss,
    sense_unfold,
    sense_unmixing,
    undersample,
    zero_filled_images,
)


def _random_coils(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def test_rss_of_one_coil_is_its_magnitude_and_batches_broadcast(rng):
    images = _random_coils(rng, (3, 8, 6, 1))
    np.testing.assert_allclose(rss(images), np.abs(images[..., 0]), rtol=1e-14)
    assert rss(images.astype(np.complex64)).dtype == np.float32


def test_b1_with_true_sensitivities_returns_the_object_times_their_norm(rng):
    sens = _random_coils(rng, (8, 6, 4))
    obj = _random_coils(rng, (8, 6))
    combined = b1_combine(obj[..., None] * sens, sens)
    np.testing.assert_allclose(combined, obj * np.linalg.norm(sens, axis=-1), rtol=1e-12)


def test_b1_with_inner_maps_from_its_own_reference_equals_rss(phantom, rng):
    whitener = prewhitening_matrix(phantom.noise_cov)
    images = ifft2c(prewhiten(phantom.kspace, whitener)) + 0.1 * _random_coils(rng, (32, 32, 4))
    combined = b1_combine(images, sensitivities_inner(images))
    # Primer section 5: B1(inner, self-reference) = prewhitened RSS, rel 1e-10.
    np.testing.assert_allclose(combined.real, rss(images), rtol=1e-10)
    np.testing.assert_allclose(combined.imag, 0, atol=1e-10 * rss(images).max())


def test_b1_is_zero_where_the_sensitivities_are_masked(rng):
    sens = _random_coils(rng, (4, 4, 2))
    sens[0, 0] = 0
    assert b1_combine(_random_coils(rng, (4, 4, 2)), sens)[0, 0] == 0


def test_undersampling_keeps_every_rth_line_from_zero(rng):
    kspace = _random_coils(rng, (6, 12, 2))
    out = undersample(kspace, 3)
    kept = np.flatnonzero(np.any(out != 0, axis=(0, 2)))
    np.testing.assert_array_equal(kept, [0, 3, 6, 9])
    np.testing.assert_array_equal(out[:, ::3], kspace[:, ::3])


def test_undersampling_raises_when_r_does_not_divide_the_lines(rng):
    with pytest.raises(InputError, match="12 lines on axis 1, not divisible by acceleration 5"):
        undersample(_random_coils(rng, (6, 12, 2)), 5)


@pytest.mark.parametrize(
    ("shape", "acceleration"),
    [((16, 16), (1, 2)), ((16, 18), (1, 3)), ((16, 30), (1, 2)), ((12, 20), (2, 2))],
    ids=["R2", "R3", "R2-odd-fold", "2D-R2x2"],
)
def test_sense_recovers_a_noiseless_object_exactly(rng, shape, acceleration):
    sens = _random_coils(rng, (*shape, 8))
    obj = _random_coils(rng, shape)
    kspace = fft2c(obj[..., None] * sens)
    sampled = undersample(undersample(kspace, acceleration[1], 1), acceleration[0], 0)
    image, g, _ = sense_unfold(aliased_images(sampled, acceleration), sens, acceleration)
    # 30 / 2 = 15 aliased lines: MR Optimum would need 2R | Ny; the aliasing phase handles it.
    np.testing.assert_allclose(image, obj, atol=1e-10)
    assert g.min() >= 1 - 1e-9  # Primer section 5: min g >= 1 - 1e-9.


def test_aliased_images_fold_back_to_the_zero_filled_image(rng):
    sampled = undersample(_random_coils(rng, (10, 12, 3)), 3)
    aliased = aliased_images(sampled, 3)
    assert aliased.shape == (10, 4, 3)
    np.testing.assert_allclose(zero_filled_images(aliased, 3), ifft2c(sampled), atol=1e-14)


def test_sense_g_is_exactly_one_at_r1(phantom):
    whitener = prewhitening_matrix(phantom.noise_cov)
    _, g, _ = sense_unmixing(prewhiten(phantom.sensitivities, whitener), 1)
    # Primer section 5: g = 1 at R = 1 within 1e-12.
    np.testing.assert_allclose(g, 1, atol=1e-12)


def test_sense_noise_is_the_full_noise_times_g_sqrt_r(phantom):
    whitener = prewhitening_matrix(phantom.noise_cov)
    sens = prewhiten(phantom.sensitivities, whitener)
    _, _, full = sense_unmixing(sens, 1)
    _, g, accelerated = sense_unmixing(sens, 2)
    assert g.min() >= 1 - 1e-9
    assert g.max() > 1.05
    # SNR_acc = SNR_full / (g sqrt R) for the same object (rel 1e-10, primer section 5).
    np.testing.assert_allclose(accelerated, full * g * np.sqrt(2), rtol=1e-10)


def test_sense_with_more_folds_than_coils_still_returns_finite_maps(rng):
    sens = _random_coils(rng, (8, 8, 2))
    _, g, weights = sense_unmixing(sens, (2, 2))
    assert np.all(np.isfinite(g))
    assert np.all(np.isfinite(weights))


def test_sense_rejects_sizes_r_does_not_divide(rng):
    with pytest.raises(InputError, match=r"expected sizes divisible by acceleration \(1, 3\)"):
        sense_unmixing(_random_coils(rng, (8, 8, 2)), 3)


# --- fast paths: centred FFT by modulation, fused coil reductions, blocked prewhitening ------


def _shifted_ifft2c(data, axes):
    import scipy.fft

    shifted = scipy.fft.ifftshift(data, axes=axes)
    return scipy.fft.fftshift(scipy.fft.ifft2(shifted, axes=axes, norm="ortho"), axes=axes)


@pytest.mark.parametrize(
    ("shape", "axes"),
    [
        ((8, 6, 3), (0, 1)),  # M_x + M_y odd
        ((8, 8, 3), (0, 1)),  # M_x + M_y even
        ((2, 10, 6, 3), (-3, -2)),  # batched, negative axes
        ((4, 6, 8), (2, 0)),  # axes out of order
        ((7, 6, 2), (0, 1)),  # odd size: the shift path
    ],
)
def test_ifft2c_equals_the_shift_definition_on_every_path(rng, shape, axes):
    data = _random_coils(rng, shape)
    expected = _shifted_ifft2c(data, axes)
    np.testing.assert_allclose(ifft2c(data, axes=axes), expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(
        ifft2c(data.real, axes=axes), _shifted_ifft2c(data.real, axes), atol=1e-13
    )
    single = data.astype(np.complex64)
    assert ifft2c(single, axes=axes).dtype == np.complex64
    np.testing.assert_allclose(ifft2c(single, axes=axes), expected, atol=1e-5)

    from tasks.mr.fft import ifft2c_inplace

    copy = data.copy()
    np.testing.assert_allclose(ifft2c_inplace(copy, axes=axes), expected, atol=1e-13)
    before = data.copy()
    ifft2c(data, axes=axes)
    fft2c(data, axes=axes)
    np.testing.assert_array_equal(data, before)  # the public transforms never write their input


def test_coil_reductions_match_their_definitions(rng):
    from tasks.mr.recon import coil_dot, coil_power

    images = _random_coils(rng, (3, 8, 6, 4))
    weights = _random_coils(rng, (8, 6, 4))
    np.testing.assert_allclose(coil_power(images), np.sum(np.abs(images) ** 2, -1), rtol=1e-13)
    strided = images[..., ::2]  # non-contiguous coil axis: the fallback
    np.testing.assert_allclose(coil_power(strided), np.sum(np.abs(strided) ** 2, -1), rtol=1e-13)
    np.testing.assert_allclose(
        coil_dot(weights, images), np.sum(weights.conj() * images, -1), rtol=1e-13
    )


def test_b1_is_zero_where_the_sensitivities_are_zero_and_matches_the_formula(rng):
    sens = _random_coils(rng, (8, 6, 4))
    sens[2, 3] = 0
    images = _random_coils(rng, (2, 8, 6, 4))
    norm = np.sqrt(np.sum(np.abs(sens) ** 2, -1))
    expected = np.sum(sens.conj() * images, -1) / np.where(norm > 0, norm, 1)
    combined = b1_combine(images, sens)
    np.testing.assert_allclose(combined, expected, rtol=1e-13)
    assert np.all(combined[:, 2, 3] == 0)
    assert b1_combine(images.astype(np.complex64), sens).dtype == np.complex64


def test_inner_maps_are_unit_norm_and_survive_subnormal_rss(rng):
    from tasks.mr.coils import inner_maps

    images = _random_coils(rng, (8, 6, 4)).astype(np.complex64)
    images[1, 1] = 1e-40  # subnormal in float32: 1/rss overflows
    images[2, 2] = 0
    maps = sensitivities_inner(images)
    assert np.all(np.isfinite(maps))
    power = np.sum(np.abs(maps) ** 2, -1)
    np.testing.assert_allclose(power[power > 0], 1, rtol=1e-5)
    assert power[2, 2] == 0
    mask = np.ones((8, 6), dtype=bool)
    mask[0] = False
    masked = inner_maps(images, np.sqrt(np.sum(np.abs(images) ** 2, -1)), mask)
    assert np.all(masked[0] == 0)
    np.testing.assert_allclose(masked[1:], maps[1:], rtol=1e-6)


def test_blocked_prewhitening_equals_one_matrix_product(rng):
    cov = np.array([[2.0, 0.5 + 0.2j], [0.5 - 0.2j, 1.0]])
    whitener = prewhitening_matrix(cov)
    data = _random_coils(rng, (64, 40, 2))  # 2560 rows: several blocks
    np.testing.assert_allclose(prewhiten(data, whitener), data @ whitener.T, rtol=1e-13)
    strided = _random_coils(rng, (64, 80, 2))[:, ::2]
    np.testing.assert_allclose(prewhiten(strided, whitener), strided @ whitener.T, rtol=1e-13)
    lower = np.linalg.cholesky(cov)
    np.testing.assert_allclose(whitener @ lower, np.eye(2), atol=1e-14)
    assert np.all(np.triu(whitener, 1) == 0)
