"""Siemens twix files written in tmp_path, and twixtools' example scan."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.io import read_info, read_raw, remove_readout_oversampling
from tests.mr.io.helpers import random_complex

# --- Siemens twix ------------------------------------------------------------------------


def _hdr_str(yaps: dict[str, object], meas: str = "", dicom: str = "") -> np.ndarray:
    """A twix measurement header: buffers of ASCCONV (MeasYaps) and XProtocol text."""
    ascconv = "".join(f"{key} = {value}\n" for key, value in yaps.items())
    buffers = {
        "Config": "",
        "Dicom": dicom,
        "Meas": meas,
        "MeasYaps": f"### ASCCONV BEGIN ###\n{ascconv}### ASCCONV END ###\n",
        "Phoenix": "",
    }
    body = b""
    for name, text in buffers.items():
        content = text.encode("latin1") + b"\x00"
        body += name.encode() + b"\x00" + struct.pack("<I", len(content)) + content
    length = 8 + len(body)
    length += -length % 32
    raw = (struct.pack("<II", length, len(buffers)) + body).ljust(length, b"\x00")
    return np.frombuffer(raw, dtype="S1").copy()


def _write_twix(path: Path, kspace_os: np.ndarray, noise_readouts: np.ndarray) -> Path:
    """A VE multi-RAID file: RAID 0 the AdjCoilSens noise scan, RAID 1 the image data.

    Args:
        kspace_os: (2*x, y, coils, slices, replicas), readout oversampled.
        noise_readouts: (readouts, coils, samples).
    """
    twixtools = pytest.importorskip("twixtools")
    from twixtools.mdb import Mdb_local

    def acqend() -> Mdb_local:
        mdb = Mdb_local()
        mdb.add_flag("ACQEND")
        return mdb

    noise = []
    for readout in noise_readouts:
        mdb = Mdb_local(readout)
        mdb.add_flag("NOISEADJSCAN")
        noise.append(mdb)
    nx, ny, _, slices, replicas = kspace_os.shape
    image = []
    for r in range(replicas):
        for s in range(slices):
            for y in range(ny):
                mdb = Mdb_local(np.ascontiguousarray(kspace_os[:, y, :, s, r].T))
                mdb.mdh.Counter.Lin, mdb.mdh.Counter.Sli, mdb.mdh.Counter.Rep = y, s, r
                mdb.mdh.SliceData.SlicePos.Tra = 5.0 * s
                mdb.mdh.SliceData.Quaternion[:] = (1.0, 0.0, 0.0, 0.0)
                image.append(mdb)
    yaps = {
        "tProtocolName": '"synthetic"',
        "sRXSPEC.alDwellTime[0]": 5000,
        "sKSpace.lBaseResolution": nx // 2,
        "sKSpace.lPhaseEncodingLines": ny,
        "sSliceArray.asSlice[0].dReadoutFOV": 200.0,
        "sSliceArray.asSlice[0].dPhaseFOV": 150.0,
        "sSliceArray.asSlice[0].dThickness": 5.0,
        "adFlipAngleDegree[0]": 15.0,
    }
    meas = '<ParamDouble."flReadoutOSFactor">  { <Precision> 6  2.000000  }\n'
    dicom = '<ParamString."Manufacturer">  { "SIEMENS"  }\n'
    scans = [
        {"hdr_str": _hdr_str({"tProtocolName": '"AdjCoilSens"'}), "mdb": [*noise, acqend()]},
        {"hdr_str": _hdr_str(yaps, meas, dicom), "mdb": [*image, acqend()]},
    ]
    twixtools.write_twix(scans, str(path))
    return path


def test_twix_multiraid_signal_oversampling_and_noise_adjust(rng, tmp_path):
    kspace = random_complex(rng, (16, 12, 3, 2, 2))
    noise = random_complex(rng, (4, 3, 32))
    path = _write_twix(tmp_path / "meas.dat", kspace, noise)
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
    signal = _write_twix(
        tmp_path / "signal.dat",
        random_complex(rng, (16, 12, 3, 1, 1)),
        random_complex(rng, (2, 3, 32)),
    )
    rf_off = random_complex(rng, (16, 4, 3, 1, 1))
    noise = _write_twix(tmp_path / "noise.dat", rf_off, random_complex(rng, (1, 3, 32)))
    raw = read_raw(signal, noise)
    np.testing.assert_array_equal(
        raw.noise, rf_off[:, :, :, 0, 0].transpose(1, 0, 2).reshape(-1, 3)
    )
    assert raw.info.noise_dwell_s == pytest.approx(5e-6)  # the RF-off run's alDwellTime
    assert raw.info.summary["noise"]["source"].startswith("image readouts of an RF-off run")
    assert raw.info.summary["noise"]["embedded_noise_ignored"] is True


def test_truncated_twix_is_refused(rng, tmp_path):
    path = _write_twix(
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
