import numpy as np

from tasks.mr.fft import fft2c, ifft2c


def test_round_trip_recovers_kspace_in_double_and_single_precision(rng):
    kspace = rng.standard_normal((24, 20, 3)) + 1j * rng.standard_normal((24, 20, 3))
    # Primer section 5: round trip 1e-12 (f64), 1e-5 (f32).
    np.testing.assert_allclose(fft2c(ifft2c(kspace)), kspace, rtol=0, atol=1e-12)
    single = kspace.astype(np.complex64)
    back = fft2c(ifft2c(single))
    assert back.dtype == np.complex64
    np.testing.assert_allclose(back, single, rtol=0, atol=1e-5)


def test_centred_delta_transforms_to_flat_spectrum_of_one_over_sqrt_n():
    nx, ny = 16, 12
    image = np.zeros((nx, ny), dtype=np.complex128)
    image[nx // 2, ny // 2] = 1
    np.testing.assert_allclose(fft2c(image), np.full((nx, ny), 1 / np.sqrt(nx * ny)), atol=1e-15)
    np.testing.assert_allclose(ifft2c(fft2c(image)), image, atol=1e-15)


def test_white_kspace_noise_keeps_its_variance_per_pixel(rng):
    shape = (64, 64, 4)
    noise = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * np.sqrt(1.5)
    ratio = np.sum(np.abs(ifft2c(noise)) ** 2) / np.sum(np.abs(noise) ** 2)
    # Parseval: the transform is unitary, so the total power is kept exactly up to rounding.
    assert abs(ratio - 1) < 1e-12
    # Each image pixel's variance matches the k-space variance (3.0) within 3 sqrt(2/M).
    per_pixel = np.mean(np.abs(ifft2c(noise)) ** 2) / 3.0
    assert abs(per_pixel - 1) < 3 * np.sqrt(2 / noise.size)
