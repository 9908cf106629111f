"""ESPIRiT maps and mask against the phantom's known sensitivities."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.espirit import _image_gram, espirit_eigen, espirit_maps, espirit_mask
from tasks.mr.fft import ifft2c
from tasks.mr.phantom import Phantom, complex_noise, make_phantom


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(64, 64, 8, seed=11)


def radius(shape: tuple[int, int]) -> np.ndarray:
    """Distance from the centre in the phantom's [-1, 1] coordinates."""
    x = np.linspace(-1, 1, shape[0])[:, None]
    y = np.linspace(-1, 1, shape[1])[None, :]
    return np.sqrt(x**2 + y**2)


def coherence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|<a, b>| / (||a|| ||b||) over the last (coil) axis: 1 when equal up to a complex scale."""
    inner = np.abs(np.einsum("...c,...c->...", a.conj(), b))
    return inner / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("method", ["power", "eigh"])
def test_maps_match_the_true_sensitivities_up_to_a_pixel_phase(phantom, method):
    maps = espirit_maps(phantom.kspace, method=method)
    support = phantom.support
    match = coherence(maps[support], phantom.sensitivities[support])
    assert np.mean(match > 0.99) >= 0.95
    # Unit norm over coils wherever the map is kept, phase referenced to coil 0.
    np.testing.assert_allclose(np.linalg.norm(maps[support], axis=-1), 1, rtol=1e-6)
    np.testing.assert_allclose(maps[support][:, 0].imag, 0, atol=1e-6)
    assert np.all(maps[support][:, 0].real > 0)


def test_power_iteration_and_eigendecomposition_agree_inside_the_object(phantom):
    power, power_value = espirit_eigen(phantom.kspace, method="power")
    exact, exact_value = espirit_eigen(phantom.kspace, method="eigh")
    support = phantom.support
    np.testing.assert_allclose(power_value[support], exact_value[support], rtol=1e-6)
    np.testing.assert_allclose(power[support], exact[support], atol=1e-4)


def test_eigenvalue_is_one_on_the_object_and_never_above(phantom):
    _, eigenvalue = espirit_eigen(phantom.kspace, method="eigh")
    assert eigenvalue[phantom.support].min() > 0.99
    assert eigenvalue.max() < 1 + 1e-9


def test_mask_covers_the_object_and_drops_the_far_field(phantom, rng):
    noisy = phantom.kspace + complex_noise(phantom.kspace.shape, phantom.noise_cov, rng)
    for kspace in (phantom.kspace, noisy):
        mask = espirit_mask(kspace)
        assert mask.dtype == bool
        assert mask[phantom.support].all()
        assert not mask[radius(mask.shape) > 0.9].any()


def test_maps_are_zero_where_the_mask_is_false(phantom):
    maps = espirit_maps(phantom.kspace, crop=0.95)
    mask = espirit_mask(phantom.kspace, crop=0.95)
    assert np.all(maps[~mask] == 0)
    assert np.all(np.linalg.norm(maps[mask], axis=-1) > 0.999)


def test_image_space_gram_equals_the_per_kernel_sum_sigpy_forms(rng):
    # sigpy places each kernel at N // 2 - w // 2, takes ifft2c and sums v v^H * N / w^2.
    nx, ny, coils, width = 20, 18, 3, 4
    kernels = rng.standard_normal((5, width * width * coils, 2)).view(np.complex128)[..., 0]
    expected = np.zeros((nx, ny, coils, coils), dtype=np.complex128)
    for kernel in kernels:
        grid = np.zeros((nx, ny, coils), dtype=np.complex128)
        x0, y0 = nx // 2 - width // 2, ny // 2 - width // 2
        grid[x0 : x0 + width, y0 : y0 + width] = kernel.reshape(width, width, coils)
        v = ifft2c(grid)
        expected += np.einsum("xyc,xyd->xycd", v, v.conj()) * nx * ny / width**2
    np.testing.assert_allclose(
        _image_gram(kernels, width, coils, (nx, ny)), expected, atol=1e-12 * np.abs(expected).max()
    )


def test_complex64_kspace_gives_complex64_maps(phantom):
    assert espirit_maps(phantom.kspace.astype(np.complex64)).dtype == np.complex64


def test_kspace_smaller_than_the_calibration_region_is_rejected(phantom):
    with pytest.raises(
        InputError, match=r"kspace has 20 x 64 samples; calib_width=24 needs at least 24"
    ):
        espirit_maps(phantom.kspace[22:42])


def test_undersampled_calibration_region_is_rejected(phantom):
    # R = 2 with only 12 ACS lines: the central 24 x 24 block has 6 empty lines.
    kspace = phantom.kspace.copy()
    kspace[:, 1::2] = 0
    kspace[:, 26:38] = phantom.kspace[:, 26:38]
    with pytest.raises(InputError, match=r"calibration region is not fully sampled: 6 of its 24"):
        espirit_maps(kspace)
    assert espirit_mask(kspace, calib_width=12).any()


def test_bad_parameters_are_rejected(phantom):
    with pytest.raises(InputError, match=r"calib_width=6; expected an integer > kernel_width=6"):
        espirit_maps(phantom.kspace, calib_width=6)
    with pytest.raises(InputError, match=r"thresh=1.5; expected 0 <= thresh < 1"):
        espirit_maps(phantom.kspace, thresh=1.5)
    with pytest.raises(InputError, match=r"crop=2; expected 0 <= crop <= 1"):
        espirit_mask(phantom.kspace, crop=2)
    with pytest.raises(InputError, match=r"method='svd'; expected 'power' or 'eigh'"):
        espirit_maps(phantom.kspace, method="svd")
    with pytest.raises(InputError, match=r"kspace has shape \(64, 64\); expected \(x, y, coils\)"):
        espirit_maps(phantom.kspace[..., 0])
