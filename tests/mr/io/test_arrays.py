"""NumPy and MATLAB arrays round-trip through files written in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from tasks.errors import InputError
from tasks.mr import io as readers
from tasks.mr.io import read_info, read_raw
from tests.mr.io.helpers import random_complex, write_mat73

# --- NumPy -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "layout", "expected"),
    [
        ((8, 6, 4), "slices", (8, 6, 4, 1, 1)),
        ((8, 6, 4, 2), "slices", (8, 6, 4, 2, 1)),
        ((8, 6, 4, 3), "replicas", (8, 6, 4, 1, 3)),
        ((8, 6, 4, 2, 3), "slices", (8, 6, 4, 2, 3)),
    ],
)
def test_npy_shapes_map_to_coils_last_five_axes(rng, tmp_path, shape, layout, expected):
    kspace = random_complex(rng, shape, np.complex128)
    np.save(tmp_path / "k.npy", kspace)
    raw = read_raw(tmp_path / "k.npy", layout=layout)
    assert raw.signal.shape == expected
    assert raw.signal.dtype == np.complex128
    np.testing.assert_array_equal(raw.signal.reshape(shape), kspace)
    assert raw.noise is None
    assert raw.info.format == "numpy"
    assert (raw.info.matrix, raw.info.coils, raw.info.replicas) == (
        (expected[0], expected[1], expected[3]),
        4,
        expected[4],
    )
    assert raw.info.acceleration == (1, 1)
    assert raw.info.affine is None


def test_npz_member_by_key_and_noise_lines_flattened(rng, tmp_path):
    kspace, other = random_complex(rng, (8, 6, 4, 2)), random_complex(rng, (8, 6, 4))
    noise = random_complex(rng, (16, 5, 4))  # (readout, lines, coils)
    np.savez(tmp_path / "s.npz", kspace=kspace, reference=other)
    np.savez_compressed(tmp_path / "n.npz", noise=noise)
    raw = read_raw(tmp_path / "s.npz", tmp_path / "n.npz", key="reference")
    np.testing.assert_array_equal(raw.signal[..., 0, 0], other)
    np.testing.assert_array_equal(raw.noise, np.moveaxis(noise, 0, 1).reshape(-1, 4))
    np.testing.assert_array_equal(raw.noise_by_readout(), noise)
    assert raw.info.summary["key"] == "reference"
    assert raw.info.summary["noise"]["samples"] == 80
    # Without a key, MR Optimum's default member name "kspace" is the obvious choice.
    np.testing.assert_array_equal(read_raw(tmp_path / "s.npz").signal[..., 0], kspace)


def test_npz_with_several_members_and_no_obvious_one_asks_for_a_key(rng, tmp_path):
    np.savez(tmp_path / "s.npz", a=random_complex(rng, (4, 4, 2)), b=random_complex(rng, (4, 4, 2)))
    with pytest.raises(
        InputError, match=r"holds 2 arrays \['a', 'b'\]; expected one, or pass key="
    ):
        read_raw(tmp_path / "s.npz")
    with pytest.raises(InputError, match=r"has no member 'c'"):
        read_raw(tmp_path / "s.npz", key="c")


def test_mroptimum_per_slice_noise_is_pooled(rng, tmp_path):
    noise = random_complex(rng, (16, 5, 4, 2))  # (readout, lines, coils, slices)
    np.save(tmp_path / "s.npy", random_complex(rng, (8, 6, 4, 2)))
    np.save(tmp_path / "n.npy", noise)
    raw = read_raw(tmp_path / "s.npy", tmp_path / "n.npy")
    # Readout-contiguous: (slices, lines, readout, coils) flattened.
    expected = np.moveaxis(noise, (3, 1), (0, 1)).reshape(-1, 4)
    np.testing.assert_array_equal(raw.noise, expected)
    assert raw.noise_by_readout().shape == (16, 10, 4)


def test_content_wins_over_a_vendor_hint(rng, tmp_path):
    np.save(tmp_path / "k.npy", random_complex(rng, (4, 4, 2)))
    raw = read_raw(tmp_path / "k.npy", vendor="Siemens")
    assert raw.info.format == "numpy"
    assert raw.info.summary["vendor_hint_ignored"] == "Siemens (the content is numpy)"


def test_real_kspace_is_accepted_as_complex_and_noted(tmp_path):
    np.save(tmp_path / "k.npy", np.ones((4, 4, 2), dtype=np.float32))
    raw = read_raw(tmp_path / "k.npy")
    assert raw.signal.dtype == np.complex64
    assert raw.info.summary["converted_from_real"] is True


def test_structured_real_imag_npy_is_read_asrandom_complex(rng, tmp_path):
    kspace = random_complex(rng, (4, 4, 2), np.complex128)
    pairs = np.empty(kspace.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
    pairs["real"], pairs["imag"] = kspace.real, kspace.imag
    np.save(tmp_path / "k.npy", pairs)
    np.testing.assert_array_equal(read_raw(tmp_path / "k.npy").signal[..., 0, 0], kspace)


# --- MATLAB ------------------------------------------------------------------------------


def test_mat_v5_variable_by_key(rng, tmp_path):
    kspace, noise = random_complex(rng, (8, 6, 4, 2, 3)), random_complex(rng, (50, 4))
    scipy.io.savemat(tmp_path / "s.mat", {"kspace": kspace, "other": np.ones(3)})
    scipy.io.savemat(tmp_path / "n.mat", {"noise": noise})
    raw = read_raw(tmp_path / "s.mat", tmp_path / "n.mat", key="kspace")
    np.testing.assert_array_equal(raw.signal, kspace)
    np.testing.assert_array_equal(raw.noise, noise)
    assert raw.info.format == "matlab"
    info, shape = read_info(tmp_path / "s.mat", key="kspace")
    assert shape == (8, 6, 4, 2, 3)
    assert info.summary["dtype"] == "complex64"  # MATLAB 'single'


def test_mat_v73_complex_compound_is_transposed_back(rng, tmp_path):
    kspace, noise = (
        random_complex(rng, (8, 6, 4, 2), np.complex128),
        random_complex(rng, (30, 4), np.complex128),
    )
    write_mat73(tmp_path / "s.mat", data=kspace)
    write_mat73(tmp_path / "n.mat", noise=noise, extra=np.arange(3.0))
    assert readers.detect_format(tmp_path / "s.mat") == "matlab"
    raw = read_raw(tmp_path / "s.mat", tmp_path / "n.mat", noise_key="noise")
    np.testing.assert_array_equal(raw.signal[..., 0], kspace)
    np.testing.assert_array_equal(raw.noise, noise)
    info, shape = read_info(tmp_path / "s.mat")
    assert shape == (8, 6, 4, 2, 1)
    assert info.summary["key"] == "data"
