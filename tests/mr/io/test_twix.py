"""Siemens twix files written in tmp_path, and twixtools' example scan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.io import read_info, read_raw, remove_readout_oversampling, volume_as_slices
from tests.mr.io.helpers import random_complex, write_twix

# --- Siemens twix ------------------------------------------------------------------------


def test_twix_multiraid_signal_oversampling_and_noise_adjust(rng, tmp_path):
    kspace = random_complex(rng, (16, 12, 3, 2, 2))
    noise = random_complex(rng, (4, 3, 32))
    path = write_twix(tmp_path / "meas.dat", kspace, noise)
    raw = read_raw(path)
    np.testing.assert_allclose(raw.signal, remove_readout_oversampling(kspace), atol=1e-5)
    np.testing.assert_array_equal(raw.noise, noise.transpose(0, 2, 1).reshape(-1, 3))
    info = raw.info
    assert info.format == "twix"
    assert info.vendor == "SIEMENS"
    assert info.oversampling_removed
    assert info.signal_dwell_s == pytest.approx(5e-6)
    assert info.noise_dwell_s == pytest.approx(5e-6)  # AdjCoilSens (siemens_to_ismrmrd)
    assert info.fov_mm == pytest.approx((200.0, 150.0, 5.0))
    assert info.flip_angle_deg == pytest.approx(15.0)
    assert (info.matrix, info.coils, info.replicas) == ((8, 12, 2), 3, 2)
    assert info.summary["measurements"] == 2
    np.testing.assert_allclose(info.affine[:3, 2], [0.0, 0.0, 5.0], atol=1e-6)  # slices 5 mm apart
    json.dumps(info.summary)
    kept = read_raw(path, remove_oversampling=False)
    np.testing.assert_array_equal(kept.signal, kspace)
    assert read_info(path)[1] == (8, 12, 3, 2, 2)


def test_twix_rf_off_noise_file_keeps_its_oversampling_and_dwell(rng, tmp_path):
    signal = write_twix(
        tmp_path / "signal.dat",
        random_complex(rng, (16, 12, 3, 1, 1)),
        random_complex(rng, (2, 3, 32)),
    )
    rf_off = random_complex(rng, (16, 4, 3, 1, 1))
    noise = write_twix(tmp_path / "noise.dat", rf_off, random_complex(rng, (1, 3, 32)))
    raw = read_raw(signal, noise)
    np.testing.assert_array_equal(
        raw.noise, rf_off[:, :, :, 0, 0].transpose(1, 0, 2).reshape(-1, 3)
    )
    assert raw.info.noise_dwell_s == pytest.approx(5e-6)  # the RF-off run's alDwellTime
    assert raw.info.summary["noise"]["source"].startswith("image readouts of an RF-off run")
    assert raw.info.summary["noise"]["embedded_noise_ignored"] is True


def test_truncated_twix_is_refused(rng, tmp_path):
    path = write_twix(
        tmp_path / "meas.dat",
        random_complex(rng, (16, 12, 3, 1, 1)),
        random_complex(rng, (2, 3, 32)),
    )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(InputError, match=r"meas\.dat (is truncated|is unreadable)"):
        read_raw(path)


def test_twixtools_example_gre_end_to_end(twix_example):
    raw = read_raw(twix_example)
    assert raw.signal.shape == (160, 160, 2, 1, 1)
    assert raw.info.signal_dwell_s == pytest.approx(11.6e-6)
    assert raw.info.fov_mm == pytest.approx((200.0, 200.0, 4.0))
    assert raw.noise is None
    np.testing.assert_allclose(raw.info.affine[:3, 2] / 4.0, [0.0, -0.0384, 0.9993], atol=1e-3)


# --- 3-D twix ------------------------------------------------------------------------------


def test_3d_twix_round_trips_in_hybrid_space_with_its_slab_geometry(rng, tmp_path):
    volume = random_complex(rng, (16, 12, 10, 3, 2))  # (2*x, y, z, coils, replicas)
    noise = random_complex(rng, (4, 3, 32))
    path = write_twix(
        tmp_path / "vol.dat", volume, noise, volume=True, yaps={"sKSpace.lImagesPerSlab": 8}
    )
    raw = read_raw(path)
    expected = volume_as_slices(remove_readout_oversampling(volume, axis=0))
    assert raw.signal.shape == (12, 10, 3, 8, 2)
    np.testing.assert_allclose(raw.signal, expected, atol=1e-5)
    np.testing.assert_array_equal(raw.noise, noise.transpose(0, 2, 1).reshape(-1, 3))
    info = raw.info
    assert (info.kind, info.volume_matrix, info.matrix) == ("3d", (8, 12, 10), (12, 10, 8))
    assert info.fov_mm == pytest.approx((200.0, 150.0, 5.0))  # the slab thickness
    # Partitions of 5 mm / 8 images per slab; the slab centre (origin) at partition 10 // 2.
    np.testing.assert_allclose(np.linalg.norm(info.affine[:3, :3], axis=0), [25.0, 12.5, 0.625])
    np.testing.assert_allclose(info.affine @ [4, 6, 5, 1], [0, 0, 0, 1], atol=1e-9)
    assert info.summary["partitions"] == 10
    assert read_info(path)[1] == raw.signal.shape


def test_3d_twix_acceleration_and_calibration_block_from_the_protocol(rng, tmp_path):
    volume = random_complex(rng, (8, 16, 12, 2, 1))
    kept = np.zeros(volume.shape[1:3], dtype=bool)
    kept[::2, ::3] = True
    kept[8 - 3 : 8 + 3, 6 - 2 : 6 + 2] = True  # the centred ACS block, as coils.acl_region
    sampled = volume * kept[None, :, :, None, None]
    protocol = {
        "sPat.lAccelFactPE": 2,
        "sPat.lAccelFact3D": 3,
        "sPat.lRefLinesPE": 6,
        "sPat.lRefLines3D": 4,
    }
    path = write_twix(
        tmp_path / "acc.dat", sampled, random_complex(rng, (1, 2, 16)), volume=True, yaps=protocol
    )
    raw = read_raw(path)
    assert (raw.info.acceleration, raw.info.acs_block, raw.info.acs_lines) == ((2, 3), (6, 4), 6)
    expected = volume_as_slices(remove_readout_oversampling(sampled, axis=0))
    np.testing.assert_allclose(raw.signal, expected, atol=1e-5)


def test_3d_twix_layouts_not_read_are_refused_naming_what_was_found(rng, tmp_path):
    volume = random_complex(rng, (8, 4, 6, 2, 1))
    noise = random_complex(rng, (1, 2, 16))
    radial = write_twix(
        tmp_path / "radial.dat", volume, noise, volume=True, yaps={"sKSpace.ucTrajectory": 2}
    )
    with pytest.raises(InputError, match=r"radial\.dat is 3-D with a radial trajectory"):
        read_raw(radial)
    short = write_twix(
        tmp_path / "short.dat", volume, noise, volume=True, yaps={"sKSpace.lPartitions": 4}
    )
    with pytest.raises(InputError, match=r"short\.dat: partition counters reach 5 .*lPartitions=4"):
        read_info(short)
    write_twix(tmp_path / "slabs.dat", volume, noise, volume=True, slabs=2)
    with pytest.raises(InputError, match=r"slabs\.dat is 3-D with 2 slabs of 3 partitions"):
        read_raw(tmp_path / "slabs.dat")
