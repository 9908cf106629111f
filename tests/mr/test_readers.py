"""Readers round-trip every format through files written in tmp_path, and refuse bad input."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io

from tasks.errors import InputError
from tasks.mr import readers
from tasks.mr.readers import read_info, read_raw, remove_readout_oversampling, write_mrd


def _complex(rng: np.random.Generator, shape: tuple[int, ...], dtype=np.complex64) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _write_mat73(path: Path, **arrays: np.ndarray) -> Path:
    """A MATLAB v7.3 file as MATLAB writes one: HDF5 after a 512-byte text header, arrays
    transposed (column-major), complex as a {real, imag} compound, a MATLAB_class attribute."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            if np.iscomplexobj(array):
                data = np.empty(array.shape[::-1], dtype=[("real", "<f8"), ("imag", "<f8")])
                data["real"], data["imag"] = array.real.T, array.imag.T
            else:
                data = array.T
            f.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_("double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 24 12:00:00 2026"
    text += b" HDF5 schema 1.00 ."
    header = text.ljust(116) + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with path.open("r+b") as stream:
        stream.write(header.ljust(512, b"\x00"))
    return path


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


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
    kspace = _complex(rng, shape, np.complex128)
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
    kspace, other = _complex(rng, (8, 6, 4, 2)), _complex(rng, (8, 6, 4))
    noise = _complex(rng, (16, 5, 4))  # (readout, lines, coils)
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
    np.savez(tmp_path / "s.npz", a=_complex(rng, (4, 4, 2)), b=_complex(rng, (4, 4, 2)))
    with pytest.raises(
        InputError, match=r"holds 2 arrays \['a', 'b'\]; expected one, or pass key="
    ):
        read_raw(tmp_path / "s.npz")
    with pytest.raises(InputError, match=r"has no member 'c'"):
        read_raw(tmp_path / "s.npz", key="c")


def test_mroptimum_per_slice_noise_is_pooled(rng, tmp_path):
    noise = _complex(rng, (16, 5, 4, 2))  # (readout, lines, coils, slices)
    np.save(tmp_path / "s.npy", _complex(rng, (8, 6, 4, 2)))
    np.save(tmp_path / "n.npy", noise)
    raw = read_raw(tmp_path / "s.npy", tmp_path / "n.npy")
    # Readout-contiguous: (slices, lines, readout, coils) flattened.
    expected = np.moveaxis(noise, (3, 1), (0, 1)).reshape(-1, 4)
    np.testing.assert_array_equal(raw.noise, expected)
    assert raw.noise_by_readout().shape == (16, 10, 4)


def test_content_wins_over_a_vendor_hint(rng, tmp_path):
    np.save(tmp_path / "k.npy", _complex(rng, (4, 4, 2)))
    raw = read_raw(tmp_path / "k.npy", vendor="Siemens")
    assert raw.info.format == "numpy"
    assert raw.info.summary["vendor_hint_ignored"] == "Siemens (the content is numpy)"


def test_real_kspace_is_accepted_as_complex_and_noted(tmp_path):
    np.save(tmp_path / "k.npy", np.ones((4, 4, 2), dtype=np.float32))
    raw = read_raw(tmp_path / "k.npy")
    assert raw.signal.dtype == np.complex64
    assert raw.info.summary["converted_from_real"] is True


def test_structured_real_imag_npy_is_read_as_complex(rng, tmp_path):
    kspace = _complex(rng, (4, 4, 2), np.complex128)
    pairs = np.empty(kspace.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
    pairs["real"], pairs["imag"] = kspace.real, kspace.imag
    np.save(tmp_path / "k.npy", pairs)
    np.testing.assert_array_equal(read_raw(tmp_path / "k.npy").signal[..., 0, 0], kspace)


# --- MATLAB ------------------------------------------------------------------------------


def test_mat_v5_variable_by_key(rng, tmp_path):
    kspace, noise = _complex(rng, (8, 6, 4, 2, 3)), _complex(rng, (50, 4))
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
        _complex(rng, (8, 6, 4, 2), np.complex128),
        _complex(rng, (30, 4), np.complex128),
    )
    _write_mat73(tmp_path / "s.mat", data=kspace)
    _write_mat73(tmp_path / "n.mat", noise=noise, extra=np.arange(3.0))
    assert readers.detect_format(tmp_path / "s.mat") == "matlab"
    raw = read_raw(tmp_path / "s.mat", tmp_path / "n.mat", noise_key="noise")
    np.testing.assert_array_equal(raw.signal[..., 0], kspace)
    np.testing.assert_array_equal(raw.noise, noise)
    info, shape = read_info(tmp_path / "s.mat")
    assert shape == (8, 6, 4, 2, 1)
    assert info.summary["key"] == "data"


# --- MRD ---------------------------------------------------------------------------------


def test_mrd_round_trip_with_noise_two_slices_three_replicas(rng, tmp_path):
    kspace, noise = _complex(rng, (16, 12, 4, 2, 3)), _complex(rng, (100, 4))
    path = write_mrd(
        tmp_path / "raw.h5",
        kspace,
        noise,
        fov_mm=(200.0, 150.0, 5.0),
        dwell_s=5e-6,
        noise_dwell_s=8e-6,
        flip_angle_deg=20.0,
    )
    raw = read_raw(path)
    np.testing.assert_array_equal(raw.signal, kspace)
    np.testing.assert_array_equal(raw.noise, noise)
    info = raw.info
    assert info.format == "mrd"
    assert info.vendor == "sciflow"
    assert (info.matrix, info.coils, info.replicas) == ((16, 12, 2), 4, 3)
    assert info.signal_dwell_s == pytest.approx(5e-6)
    assert info.noise_dwell_s == pytest.approx(8e-6)
    assert info.flip_angle_deg == pytest.approx(20.0)
    assert info.fov_mm == pytest.approx((200.0, 150.0, 5.0))
    assert not info.oversampling_removed
    assert info.summary["noise_acquisitions"] == 7  # ceil(100 / 16) readouts
    json.dumps(info.summary)


def test_mrd_oversampling_is_removed_from_the_signal_only(rng, tmp_path):
    kspace, noise = _complex(rng, (16, 8, 2, 1, 1)), _complex(rng, (64, 2))
    path = write_mrd(
        tmp_path / "os.h5", kspace, noise, fov_mm=(100.0, 80.0, 4.0), dwell_s=2e-6, oversampling=2
    )
    raw = read_raw(path)
    assert raw.info.oversampling_removed
    np.testing.assert_allclose(raw.signal, remove_readout_oversampling(kspace), atol=1e-5)
    np.testing.assert_array_equal(raw.noise, noise)
    assert raw.info.fov_mm == pytest.approx((100.0, 80.0, 4.0))
    assert raw.info.signal_dwell_s == pytest.approx(2e-6)  # per ADC sample, before removal
    kept = read_raw(path, remove_oversampling=False)
    assert not kept.info.oversampling_removed
    np.testing.assert_array_equal(kept.signal, kspace)


def test_mrd_separate_noise_file_replaces_embedded_noise(rng, tmp_path):
    write_mrd(
        tmp_path / "s.h5",
        _complex(rng, (8, 4, 2, 1, 1)),
        _complex(rng, (8, 2)),
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
    )
    rf_off = _complex(rng, (8, 4, 2, 1, 1))  # an RF-off run: its imaging readouts are noise
    write_mrd(tmp_path / "n.h5", rf_off, fov_mm=(1, 1, 1), dwell_s=3e-6)
    raw = read_raw(tmp_path / "s.h5", tmp_path / "n.h5")
    np.testing.assert_array_equal(
        raw.noise, rf_off[:, :, :, 0, 0].transpose(1, 0, 2).reshape(-1, 2)
    )
    assert raw.info.noise_dwell_s == pytest.approx(3e-6)
    assert raw.info.summary["noise"]["embedded_noise_ignored"] is True


def test_mrd_affine_from_oblique_geometry(rng, tmp_path):
    angle = np.deg2rad(30)
    read = np.array([np.cos(angle), np.sin(angle), 0.0])
    phase = np.array([-np.sin(angle), np.cos(angle), 0.0])
    normal = np.array([0.0, 0.0, 1.0])
    centres = np.array([[10.0, -20.0, 30.0], [10.0, -20.0, 36.0]])  # LPS, 6 mm apart
    nx, ny = 8, 6
    path = write_mrd(
        tmp_path / "g.h5",
        _complex(rng, (nx, ny, 2, 2, 1)),
        fov_mm=(160.0, 90.0, 5.0),
        dwell_s=1e-6,
        positions_mm=centres,
        directions=np.stack([read, phase, normal]),
    )
    affine = read_raw(path).info.affine
    dx, dy = 160.0 / nx, 90.0 / ny
    for i, j, k in [(0, 0, 0), (nx // 2, ny // 2, 1), (nx - 1, 2, 1)]:
        lps = centres[k] + (i - nx // 2) * dx * read + (j - ny // 2) * dy * phase
        expected_ras = lps * np.array([-1, -1, 1])
        np.testing.assert_allclose(affine @ [i, j, k, 1], [*expected_ras, 1], atol=1e-4)


def test_mrd_reads_what_the_ismrmrd_package_writes(rng, tmp_path):
    ismrmrd = pytest.importorskip("ismrmrd")
    xml_path = write_mrd(
        tmp_path / "ref.h5", _complex(rng, (8, 3, 4, 1, 1)), fov_mm=(1, 1, 1), dwell_s=1e-6
    )
    with h5py.File(xml_path) as f:
        xml = f["dataset/xml"][0].decode()
    lines = _complex(rng, (3, 4, 8))  # (y, coils, x)
    with ismrmrd.Dataset(str(tmp_path / "theirs.h5"), "dataset", create_if_needed=True) as dset:
        dset.write_xml_header(xml)
        for y in range(3):
            acq = ismrmrd.Acquisition.from_array(lines[y])
            acq.idx.kspace_encode_step_1 = y
            dset.append_acquisition(acq)
    raw = read_raw(tmp_path / "theirs.h5")
    np.testing.assert_array_equal(raw.signal[..., 0, 0], lines.transpose(2, 0, 1))
    header = ismrmrd.xsd.CreateFromDocument(xml)
    assert header.encoding[0].encodedSpace.matrixSize.x == 8


# --- read_info: headers only -------------------------------------------------------------


def test_read_info_sizes_npy_without_reading_it(rng, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((256, 256, 8, 2, 2), dtype=np.complex64))  # 16 MiB
    peak = _peak_bytes(lambda: read_info(tmp_path / "big.npy"))
    info, shape = read_info(tmp_path / "big.npy")
    assert shape == (256, 256, 8, 2, 2)
    assert info.summary["dtype"] == "complex64"
    assert peak < 1 << 20


def test_read_info_sizes_npz_member_and_mrd_from_headers(rng, tmp_path):
    np.savez(tmp_path / "s.npz", kspace=np.zeros((128, 128, 8, 4), dtype=np.complex64))  # 4 MiB
    peak = _peak_bytes(lambda: read_info(tmp_path / "s.npz"))
    assert read_info(tmp_path / "s.npz")[1] == (128, 128, 8, 4, 1)
    assert peak < 1 << 20
    kspace = np.zeros((128, 64, 8, 4, 2), dtype=np.complex64)  # 4 MiB of samples
    write_mrd(tmp_path / "s.h5", kspace, kspace[:, 0, :, 0, 0], fov_mm=(1, 1, 1), dwell_s=1e-6)
    peak = _peak_bytes(lambda: read_info(tmp_path / "s.h5"))
    info, shape = read_info(tmp_path / "s.h5")
    assert shape == (128, 64, 8, 4, 2)
    assert info.summary["noise"]["samples"] == 128
    assert peak < 1 << 20


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
    kspace = _complex(rng, (16, 12, 3, 2, 2))
    noise = _complex(rng, (4, 3, 32))
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
        tmp_path / "signal.dat", _complex(rng, (16, 12, 3, 1, 1)), _complex(rng, (2, 3, 32))
    )
    rf_off = _complex(rng, (16, 4, 3, 1, 1))
    noise = _write_twix(tmp_path / "noise.dat", rf_off, _complex(rng, (1, 3, 32)))
    raw = read_raw(signal, noise)
    np.testing.assert_array_equal(
        raw.noise, rf_off[:, :, :, 0, 0].transpose(1, 0, 2).reshape(-1, 3)
    )
    assert raw.info.noise_dwell_s == pytest.approx(5e-6)  # the RF-off run's alDwellTime
    assert raw.info.summary["noise"]["source"].startswith("image readouts of an RF-off run")
    assert raw.info.summary["noise"]["embedded_noise_ignored"] is True


def test_truncated_twix_is_refused(rng, tmp_path):
    path = _write_twix(
        tmp_path / "meas.dat", _complex(rng, (16, 12, 3, 1, 1)), _complex(rng, (2, 3, 32))
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
    noise = _complex(rng, (n, 20_000), np.complex128) / np.sqrt(2)
    ratio = np.var(remove_readout_oversampling(noise)) / np.var(noise)
    assert ratio == pytest.approx(0.5, rel=0.02)


# --- Refusals ----------------------------------------------------------------------------


def test_coil_mismatch_between_signal_and_noise(rng, tmp_path):
    np.save(tmp_path / "s.npy", _complex(rng, (8, 6, 4)))
    np.save(tmp_path / "n.npy", _complex(rng, (100, 3)))
    with pytest.raises(
        InputError, match=r"noise file .*n\.npy has 3 coils but signal file .*s\.npy has 4"
    ):
        read_raw(tmp_path / "s.npy", tmp_path / "n.npy")


def test_nan_and_inf_are_counted(rng, tmp_path):
    kspace = _complex(rng, (8, 6, 4))
    kspace[0, 0, 0], kspace[1, 1, 1], kspace[2, 2, 2] = np.nan, np.inf, complex(0, -np.inf)
    np.save(tmp_path / "s.npy", kspace)
    with pytest.raises(
        InputError, match=r"signal file .*s\.npy has 3 non-finite values \(NaN or Inf\) out of 192"
    ):
        read_raw(tmp_path / "s.npy")
    noise = _complex(rng, (10, 4))
    noise[3, 2] = np.nan
    np.save(tmp_path / "ok.npy", _complex(rng, (8, 6, 4)))
    np.save(tmp_path / "n.npy", noise)
    with pytest.raises(InputError, match=r"noise file .*n\.npy has 1 non-finite"):
        read_raw(tmp_path / "ok.npy", tmp_path / "n.npy")


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".mat", ".h5"])
def test_truncated_files_are_refused(rng, tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    kspace = _complex(rng, (32, 32, 4, 1, 1))
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
    np.save(tmp_path / "flat.npy", _complex(rng, (4, 4)))
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


# --- 3-D Cartesian (hybrid space) ----------------------------------------------------------


def _ifft3c(volume: np.ndarray) -> np.ndarray:
    axes = (0, 1, 2)
    shifted = np.fft.ifftshift(volume, axes=axes)
    return np.fft.fftshift(np.fft.ifftn(shifted, axes=axes, norm="ortho"), axes=axes)


def test_volume_as_slices_is_the_x_transform_of_a_3d_fft(rng):
    from tasks.mr.fft import ifft2c

    volume = _complex(rng, (6, 8, 10, 3, 2), np.complex128)
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
    kspace = _complex(rng, shape, np.complex64)
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
    np.save(tmp_path / "v.npy", _complex(rng, (6, 8, 4)))
    with pytest.raises(InputError, match=r"layout='volume'; expected \(x, y, z, coils\)"):
        read_raw(tmp_path / "v.npy", layout="volume")
    with pytest.raises(InputError, match="expected 'slices', 'replicas' or 'volume'"):
        read_raw(tmp_path / "v.npy", layout="3d")


def test_mrd_3d_round_trip_partitions_geometry_and_noise(rng, tmp_path):
    volume = _complex(rng, (8, 6, 10, 4, 2))  # (x, y, z, coils, replicas)
    noise = _complex(rng, (8 * 50, 4))
    path = write_mrd(
        tmp_path / "v.h5",
        volume,
        noise,
        fov_mm=(160.0, 120.0, 50.0),
        dwell_s=4e-6,
        volume=True,
    )
    with h5py.File(path) as f:
        heads = f["dataset/data"]["head"]
    assert heads["idx"]["kspace_encode_step_2"].max() == 9
    assert heads["idx"]["slice"].max() == 0
    raw = read_raw(path)
    info = raw.info
    assert info.kind == "3d"
    assert raw.signal.shape == (6, 10, 4, 8, 2)
    np.testing.assert_allclose(raw.signal, readers.volume_as_slices(volume), atol=1e-5)
    np.testing.assert_array_equal(raw.noise, noise)
    assert (info.volume_matrix, info.matrix) == ((8, 6, 10), (6, 10, 8))
    assert info.acceleration == (1, 1)
    assert info.acs_block is None
    assert info.fov_mm == pytest.approx((160.0, 120.0, 50.0))
    # Voxel (i, j, k) of the (x, y, z) volume; centre voxel (N//2) at the slab position 0.
    np.testing.assert_allclose(np.diag(info.affine)[:3], [-20.0, -20.0, 5.0])
    np.testing.assert_allclose(info.affine @ [4, 3, 5, 1], [0, 0, 0, 1], atol=1e-9)
    assert info.summary["partitions"] == 10
    assert read_info(path)[1] == raw.signal.shape


def test_mrd_3d_oversampling_is_removed_before_the_x_transform(rng, tmp_path):
    volume = _complex(rng, (16, 4, 6, 2, 1))
    path = write_mrd(
        tmp_path / "os.h5",
        volume,
        fov_mm=(100.0, 80.0, 30.0),
        dwell_s=2e-6,
        oversampling=2,
        volume=True,
    )
    raw = read_raw(path)
    expected = readers.volume_as_slices(remove_readout_oversampling(volume, axis=0))
    assert raw.signal.shape == (4, 6, 2, 8, 1)
    np.testing.assert_allclose(raw.signal, expected, atol=1e-5)
    assert raw.info.oversampling_removed
    assert raw.info.volume_matrix == (8, 4, 6)


def test_mrd_3d_acceleration_and_calibration_block_from_the_header(rng, tmp_path):
    volume = _complex(rng, (4, 16, 12, 3, 1))
    path = write_mrd(
        tmp_path / "acc.h5",
        volume,
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
        volume=True,
        acceleration=(2, 3),
        acs=(6, 4),
    )
    raw = read_raw(path)
    assert raw.info.acceleration == (2, 3)
    assert raw.info.acs_block == (6, 4)
    assert raw.info.acs_lines == 6
    kspace = readers.slices_as_volume(raw.signal)[..., 0]
    sampled = np.any(np.abs(kspace) > 0, axis=(0, 3))  # (y, z)
    expected = np.zeros((16, 12), dtype=bool)
    expected[::2, ::3] = True
    expected[8 - 3 : 8 + 3, 6 - 2 : 6 + 2] = True  # the centred block, as coils.acl_region
    np.testing.assert_array_equal(sampled, expected)
    np.testing.assert_allclose(kspace[:, expected], volume[..., 0][:, expected], atol=1e-5)
    with pytest.raises(InputError, match="R_step2 = 1 unless volume=True"):
        write_mrd(tmp_path / "bad.h5", volume, fov_mm=(1, 1, 1), dwell_s=1e-6, acceleration=(1, 2))


def test_mrd_2d_acceleration_header_and_acs_lines(rng, tmp_path):
    kspace = _complex(rng, (8, 12, 2, 1, 1))
    path = write_mrd(
        tmp_path / "acc2d.h5",
        kspace,
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
        acceleration=(3, 1),
        acs=(4, 1),
    )
    raw = read_raw(path)
    assert raw.info.kind == "2d"
    assert (raw.info.acceleration, raw.info.acs_lines, raw.info.acs_block) == ((1, 3), 4, (None, 4))
    lines = np.flatnonzero(np.any(np.abs(raw.signal[..., 0, 0]) > 0, axis=(0, 2)))
    assert lines.tolist() == [0, 3, 4, 5, 6, 7, 9]


def test_multi_slab_3d_mrd_is_refused(rng, tmp_path):
    path = write_mrd(
        tmp_path / "slab.h5",
        _complex(rng, (4, 4, 4, 2, 1)),
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
        volume=True,
    )
    with h5py.File(path, "r+") as f:
        data = f["dataset/data"][...]
        data["head"]["idx"]["slice"][-4:] = 1
        f["dataset/data"][...] = data
    with pytest.raises(InputError, match="3-D with 2 slabs; expected one 3-D slab"):
        read_raw(path)
