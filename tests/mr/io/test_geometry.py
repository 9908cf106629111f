"""Readout oversampling and the 3-D hybrid space."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr import io as readers
from tasks.mr.io import read_info, read_raw, remove_readout_oversampling
from tests.mr.io.helpers import random_complex

# --- Oversampling removal ----------------------------------------------------------------


def test_oversampling_removal_keeps_in_band_signal_and_halves_white_noise(rng):
    n = 64
    inband = np.zeros((n, 1), dtype=np.complex128)
    inband[n // 2 - 4 : n // 2 + 4] = 1.0  # an object inside the central half of the FOV
    kspace = np.fft.fftshift(np.fft.fft(np.fft.ifftshift(inband, axes=0), axis=0), axes=0)
    cropped = remove_readout_oversampling(kspace)
    assert cropped.shape == (n // 2, 1)
    # Half the field of view = twice the k-space step over the same extent.
    np.testing.assert_allclose(cropped, kspace[::2], atol=1e-12 * n)
    noise = random_complex(rng, (n, 20_000), np.complex128) / np.sqrt(2)
    ratio = np.var(remove_readout_oversampling(noise)) / np.var(noise)
    assert ratio == pytest.approx(0.5, rel=0.02)


# --- 3-D Cartesian (hybrid space) ----------------------------------------------------------


def _ifft3c(volume: np.ndarray) -> np.ndarray:
    axes = (0, 1, 2)
    shifted = np.fft.ifftshift(volume, axes=axes)
    return np.fft.fftshift(np.fft.ifftn(shifted, axes=axes, norm="ortho"), axes=axes)


def test_volume_as_slices_is_the_x_transform_of_a_3d_fft(rng):
    from tasks.mr.fft import ifft2c

    volume = random_complex(rng, (6, 8, 10, 3, 2), np.complex128)
    hybrid = readers.volume_as_slices(volume)
    assert hybrid.shape == (8, 10, 3, 6, 2)
    assert hybrid.dtype == np.complex128
    # The per-slice 2-D transform of each (ky, kz) plane completes the 3-D centred transform.
    images = ifft2c(hybrid)  # (y, z, coils, x, replicas)
    np.testing.assert_allclose(images.transpose(3, 0, 1, 2, 4), _ifft3c(volume), atol=1e-12)
    np.testing.assert_allclose(readers.slices_as_volume(hybrid), volume, atol=1e-12)
    # Orthonormal: white noise keeps its variance.
    assert np.linalg.norm(hybrid) == pytest.approx(np.linalg.norm(volume), rel=1e-12)
    assert readers.volume_as_slices(volume[..., 0]).shape == (8, 10, 3, 6, 1)
    assert readers.maps_as_volume(np.zeros((8, 10, 6))).shape == (6, 8, 10)
    with pytest.raises(InputError, match=r"expected \(x, y, z, coils\[, replicas\]\)"):
        readers.volume_as_slices(volume[..., 0, 0])


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((6, 8, 10, 4), (8, 10, 4, 6, 1)), ((6, 8, 10, 4, 3), (8, 10, 4, 6, 3))],
)
def test_npy_volume_layout_is_read_in_hybrid_space(rng, tmp_path, shape, expected):
    kspace = random_complex(rng, shape, np.complex64)
    np.save(tmp_path / "v.npy", kspace)
    raw = read_raw(tmp_path / "v.npy", layout="volume")
    assert raw.signal.shape == expected
    assert raw.signal.dtype == np.complex64
    np.testing.assert_allclose(raw.signal, readers.volume_as_slices(kspace), atol=1e-5)
    info = raw.info
    assert (info.kind, info.volume_matrix, info.matrix) == ("3d", (6, 8, 10), (8, 10, 6))
    assert (info.coils, info.replicas) == (4, expected[4])
    assert read_info(tmp_path / "v.npy", layout="volume")[1] == expected
    # Without the layout a 2-D reading is unchanged (and the default kind is 2-D).
    assert read_raw(tmp_path / "v.npy").info.kind == "2d"


def test_volume_layout_refuses_other_shapes(rng, tmp_path):
    np.save(tmp_path / "v.npy", random_complex(rng, (6, 8, 4)))
    with pytest.raises(InputError, match=r"layout='volume'; expected \(x, y, z, coils\)"):
        read_raw(tmp_path / "v.npy", layout="volume")
    with pytest.raises(InputError, match="expected 'slices', 'replicas' or 'volume'"):
        read_raw(tmp_path / "v.npy", layout="3d")
