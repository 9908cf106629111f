import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.coils import (
    MASK_METHODS,
    acl_kspace,
    coil_mask,
    sensitivities_acl,
    sensitivities_inner,
)
from tasks.mr.fft import ifft2c
from tasks.mr.noise import prewhiten, prewhitening_matrix


def test_inner_sensitivities_recover_prewhitened_maps_up_to_the_object_phase(phantom):
    whitener = prewhitening_matrix(phantom.noise_cov)
    images = ifft2c(prewhiten(phantom.kspace, whitener))
    maps = sensitivities_inner(images)
    inside = phantom.support
    np.testing.assert_allclose(np.sum(np.abs(maps[inside]) ** 2, axis=-1), 1, rtol=1e-12)
    truth = prewhiten(phantom.sensitivities, whitener)
    truth = truth / np.linalg.norm(truth, axis=-1, keepdims=True)
    phase = np.exp(1j * np.angle(phantom.image))[..., None]
    np.testing.assert_allclose(maps[inside], (truth * phase)[inside], atol=1e-10)


def test_inner_sensitivities_are_zero_where_the_reference_is_zero():
    images = np.zeros((4, 4, 2), dtype=complex)
    images[1, 1] = [3, 4j]
    maps = sensitivities_inner(images)
    np.testing.assert_allclose(maps[1, 1], [0.6, 0.8j])
    assert np.count_nonzero(maps) == 2
    assert np.all(np.isfinite(maps))


def test_acl_block_is_centred_as_mr_optimum_getaclgrids(rng):
    kspace = rng.standard_normal((10, 16, 2)) + 0j
    block = acl_kspace(kspace, 5)  # from 16 // 2 - 5 // 2 = 6 to 10, all x
    np.testing.assert_array_equal(np.flatnonzero(np.any(block != 0, axis=(0, 2))), range(6, 11))
    both = acl_kspace(kspace, (4, 6))
    rows = np.flatnonzero(np.any(both != 0, axis=(1, 2)))
    np.testing.assert_array_equal(rows, range(3, 7))


def test_acl_sensitivities_use_only_the_central_lines(phantom, rng):
    kspace = phantom.kspace.copy()
    maps = sensitivities_acl(kspace, 12)
    kspace[:, :4] += rng.standard_normal(kspace[:, :4].shape)
    np.testing.assert_array_equal(sensitivities_acl(kspace, 12), maps)
    inside = phantom.support
    np.testing.assert_allclose(np.sum(np.abs(maps[inside]) ** 2, axis=-1), 1, rtol=1e-12)


def test_acl_larger_than_the_kspace_raises(phantom):
    with pytest.raises(InputError, match=r"acl\[1\]=40 .* expected an integer in \[1, 32\]"):
        sensitivities_acl(phantom.kspace, 40)


def _disc_with_hole(n: int = 32, radius2: float = 0.5) -> np.ndarray:
    x = np.linspace(-1, 1, n)[:, None]
    y = np.linspace(-1, 1, n)[None, :]
    image = np.where(x**2 + y**2 < radius2, 10.0, 0.1)
    image[n // 2, n // 2] = 0.0  # a one-pixel hole inside the object
    return image


def test_no_mask_is_all_true():
    assert coil_mask(_disc_with_hole(), "no").all()


def test_reference_mask_covers_the_object_and_fills_its_holes():
    # A large object, so mean - std lies above the background (else MR Optimum's rule keeps all).
    image = _disc_with_hole(radius2=0.8)
    assert np.mean(image) - np.std(image) > 0.1
    mask = coil_mask(image, "reference")
    assert mask[16, 16]
    np.testing.assert_array_equal(mask, (image > 1) | (image == 0))  # the object, hole filled


@pytest.mark.parametrize(
    ("method", "value"), [("threshold", 5.0), ("percentage", 50.0), ("percentagemean", 1.5)]
)
def test_threshold_masks_select_the_object(method, value):
    image = _disc_with_hole()
    mask = coil_mask(image, method, value)
    np.testing.assert_array_equal(mask, (image > 1) | (image == 0))


def test_threshold_mask_without_a_value_raises():
    with pytest.raises(InputError, match="mask method 'threshold' needs a finite value"):
        coil_mask(_disc_with_hole(), "threshold")


def test_unknown_mask_method_raises_naming_the_allowed_set():
    with pytest.raises(InputError, match=r"mask method 'otsu' is unknown; expected one of \["):
        coil_mask(_disc_with_hole(), "otsu")
    assert "percentagemean" in MASK_METHODS
