"""Any format: headers without data, and refusals of bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import scipy.io

from tasks.errors import InputError
from tasks.mr.io import read_info, read_raw, write_mrd
from tests.mr.io.helpers import peak_bytes, random_complex

# --- read_info: headers only -------------------------------------------------------------


def test_read_info_sizes_npy_without_reading_it(rng, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((256, 256, 8, 2, 2), dtype=np.complex64))  # 16 MiB
    peak = peak_bytes(lambda: read_info(tmp_path / "big.npy"))
    info, shape = read_info(tmp_path / "big.npy")
    assert shape == (256, 256, 8, 2, 2)
    assert info.summary["dtype"] == "complex64"
    assert peak < 1 << 20


def test_read_info_sizes_npz_member_and_mrd_from_headers(rng, tmp_path):
    np.savez(tmp_path / "s.npz", kspace=np.zeros((128, 128, 8, 4), dtype=np.complex64))  # 4 MiB
    peak = peak_bytes(lambda: read_info(tmp_path / "s.npz"))
    assert read_info(tmp_path / "s.npz")[1] == (128, 128, 8, 4, 1)
    assert peak < 1 << 20
    kspace = np.zeros((128, 64, 8, 4, 2), dtype=np.complex64)  # 4 MiB of samples
    write_mrd(tmp_path / "s.h5", kspace, kspace[:, 0, :, 0, 0], fov_mm=(1, 1, 1), dwell_s=1e-6)
    peak = peak_bytes(lambda: read_info(tmp_path / "s.h5"))
    info, shape = read_info(tmp_path / "s.h5")
    assert shape == (128, 64, 8, 4, 2)
    assert info.summary["noise"]["samples"] == 128
    assert peak < 1 << 20


# --- Refusals ----------------------------------------------------------------------------


def test_coil_mismatch_between_signal_and_noise(rng, tmp_path):
    np.save(tmp_path / "s.npy", random_complex(rng, (8, 6, 4)))
    np.save(tmp_path / "n.npy", random_complex(rng, (100, 3)))
    with pytest.raises(
        InputError, match=r"noise file .*n\.npy has 3 coils but signal file .*s\.npy has 4"
    ):
        read_raw(tmp_path / "s.npy", tmp_path / "n.npy")


def test_nan_and_inf_are_counted(rng, tmp_path):
    kspace = random_complex(rng, (8, 6, 4))
    kspace[0, 0, 0], kspace[1, 1, 1], kspace[2, 2, 2] = np.nan, np.inf, complex(0, -np.inf)
    np.save(tmp_path / "s.npy", kspace)
    with pytest.raises(
        InputError, match=r"signal file .*s\.npy has 3 non-finite values \(NaN or Inf\) out of 192"
    ):
        read_raw(tmp_path / "s.npy")
    noise = random_complex(rng, (10, 4))
    noise[3, 2] = np.nan
    np.save(tmp_path / "ok.npy", random_complex(rng, (8, 6, 4)))
    np.save(tmp_path / "n.npy", noise)
    with pytest.raises(InputError, match=r"noise file .*n\.npy has 1 non-finite"):
        read_raw(tmp_path / "ok.npy", tmp_path / "n.npy")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".h5"])
def test_truncated_files_are_refused(rng, tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    kspace = random_complex(rng, (32, 32, 4, 1, 1))
    if suffix == ".npy":
        np.save(path, kspace)
    elif suffix == ".npz":
        np.savez(path, kspace=kspace)
    elif suffix == ".mat":
        scipy.io.savemat(path, {"kspace": kspace})
    else:
        write_mrd(path, kspace, fov_mm=(1, 1, 1), dwell_s=1e-6)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"cut\{suffix} cannot be (read|opened)"):
        read_raw(path)


def test_wrong_format_and_vendor_are_refused(rng, tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not k-space\n")
    with pytest.raises(
        InputError, match=r"notes\.h5: unrecognised content .* expected ISMRMRD HDF5"
    ):
        read_raw(text)
    with pytest.raises(InputError, match=r"notes\.h5: unrecognised content .*vendor='ge'; known"):
        read_raw(text, vendor="ge")
    with pytest.raises(InputError, match=r"notes\.h5 .*; expected a Siemens twix raw file"):
        read_raw(text, vendor="Siemens")
    np.save(tmp_path / "flat.npy", random_complex(rng, (4, 4)))
    with pytest.raises(InputError, match=r"flat\.npy has shape \(4, 4\); expected \(x, y, coils\)"):
        read_raw(tmp_path / "flat.npy")
    np.save(tmp_path / "mask.npy", np.ones((4, 4, 2), dtype=bool))
    with pytest.raises(InputError, match=r"mask\.npy holds bool values; expected complex"):
        read_raw(tmp_path / "mask.npy")
    with pytest.raises(InputError, match=r"missing\.npy does not exist"):
        read_raw(tmp_path / "missing.npy")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match=r"plain\.h5 has no ISMRMRD group 'dataset'"):
        read_raw(tmp_path / "plain.h5")


def test_noise_keeps_its_readout_axis_for_the_noise_bandwidth(tmp_path, rng):
    signal = rng.standard_normal((16, 12, 2)) + 1j * rng.standard_normal((16, 12, 2))
    noise = rng.standard_normal((64, 10, 2)) + 1j * rng.standard_normal((64, 10, 2))
    np.save(tmp_path / "signal.npy", signal)
    np.save(tmp_path / "noise.npy", noise)
    raw = read_raw(tmp_path / "signal.npy", tmp_path / "noise.npy")
    np.testing.assert_array_equal(raw.noise_by_readout(), noise)
    # Consecutive samples run along the readout.
    np.testing.assert_array_equal(raw.noise[:64, 0], noise[:, 0, 0])
