"""MRD files round-trip through our writer and the ismrmrd package; 2-D and 3-D."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr import io as readers
from tasks.mr.io import read_info, read_raw, remove_readout_oversampling, write_mrd
from tasks.mr.io.hdf5 import _HDF5_LOCK, open_hdf5
from tests.mr.io.helpers import random_complex

# --- MRD ---------------------------------------------------------------------------------


def test_mrd_round_trip_with_noise_two_slices_three_replicas(rng, tmp_path):
    kspace, noise = random_complex(rng, (16, 12, 4, 2, 3)), random_complex(rng, (100, 4))
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
    kspace, noise = random_complex(rng, (16, 8, 2, 1, 1)), random_complex(rng, (64, 2))
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
        random_complex(rng, (8, 4, 2, 1, 1)),
        random_complex(rng, (8, 2)),
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
    )
    rf_off = random_complex(rng, (8, 4, 2, 1, 1))  # an RF-off run: its imaging readouts are noise
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
        random_complex(rng, (nx, ny, 2, 2, 1)),
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
        tmp_path / "ref.h5", random_complex(rng, (8, 3, 4, 1, 1)), fov_mm=(1, 1, 1), dwell_s=1e-6
    )
    with h5py.File(xml_path) as f:
        xml = f["dataset/xml"][0].decode()
    lines = random_complex(rng, (3, 4, 8))  # (y, coils, x)
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


def test_the_ismrmrd_package_reads_what_we_write_as_our_reader_does(tmp_path):
    pytest.importorskip("ismrmrd")
    from benchmarks.mrd_read import read_ours, read_with_ismrmrd, write_case

    path = write_case(tmp_path / "case.h5", (16, 12, 3, 2, 2))
    ours, theirs = read_ours(path), read_with_ismrmrd(path)
    assert ours[0].shape == (16, 12, 3, 2, 2)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def test_an_mrd_header_declaring_entities_is_refused_unexpanded(rng, tmp_path):
    path = write_mrd(
        tmp_path / "s.h5", random_complex(rng, (8, 3, 2, 1, 1)), fov_mm=(1, 1, 1), dwell_s=1e-6
    )
    with h5py.File(path, "r+") as f:
        xml = f["dataset/xml"][0].decode()
        laughs = '<!DOCTYPE h [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        body = xml.split("\n", 1)[1].replace("<systemVendor>sciflow", "<systemVendor>&b;")
        f["dataset/xml"][0] = f'<?xml version="1.0"?>\n{laughs}\n{body}'
    with pytest.raises(InputError, match="XML header declares entities"):
        read_raw(path)
    with pytest.raises(InputError, match="XML header declares entities"):
        read_info(path)


def test_mrd_3d_round_trip_partitions_geometry_and_noise(rng, tmp_path):
    volume = random_complex(rng, (8, 6, 10, 4, 2))  # (x, y, z, coils, replicas)
    noise = random_complex(rng, (8 * 50, 4))
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
    volume = random_complex(rng, (16, 4, 6, 2, 1))
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
    volume = random_complex(rng, (4, 16, 12, 3, 1))
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
    kspace = random_complex(rng, (8, 12, 2, 1, 1))
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


# --- multi-slab 3-D ---------------------------------------------------------------------------


def _two_slabs(rng, tmp_path, **kwargs):
    """Two contiguous 6-partition slabs (x, y, 2 * 6, coils, replicas), 3 mm partitions."""
    volume = random_complex(rng, (8, 6, 12, 3, 2))
    noise = random_complex(rng, (64, 3))
    angle = np.deg2rad(20)
    directions = np.array(
        [[np.cos(angle), np.sin(angle), 0.0], [-np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]]
    )
    options = {
        "fov_mm": (160.0, 120.0, 18.0),  # z: one slab, 6 partitions of 3 mm
        "dwell_s": 4e-6,
        "volume": True,
        "slabs": 2,
        "directions": directions,
        "positions_mm": np.array([[5.0, -10.0, 20.0], [5.0, -10.0, 38.0]]),
        **kwargs,
    }
    return volume, noise, write_mrd(tmp_path / "slabs.h5", volume, noise, **options)


def test_multi_slab_3d_round_trips_slab_by_slab_with_one_affine(rng, tmp_path):
    volume, noise, path = _two_slabs(rng, tmp_path)
    raw = read_raw(path)
    info = raw.info
    expected = np.concatenate(
        [readers.volume_as_slices(volume[:, :, 6 * b : 6 * (b + 1)]) for b in range(2)], axis=3
    )
    assert raw.signal.shape == (6, 6, 3, 16, 2)  # (y, z, coils, slabs * x, replicas)
    np.testing.assert_allclose(raw.signal, expected, atol=1e-5)
    np.testing.assert_array_equal(raw.noise, noise)
    assert (info.kind, info.slabs, info.volume_matrix) == ("3d", 2, (8, 6, 12))
    assert info.summary["slabs"] == 2
    assert read_info(path)[1] == raw.signal.shape
    # Voxel k of the stacked volume: slab k // 6, partition k % 6 around that slab's centre.
    read, phase, normal = np.array(
        [
            [np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20)), 0],
            [-np.sin(np.deg2rad(20)), np.cos(np.deg2rad(20)), 0],
            [0, 0, 1],
        ]
    )
    centres = np.array([[5.0, -10.0, 20.0], [5.0, -10.0, 38.0]])
    for i, j, k in [(0, 0, 0), (4, 3, 3), (7, 5, 9), (2, 1, 11)]:
        lps = centres[k // 6] + (i - 4) * 20.0 * read + (j - 3) * 20.0 * phase
        lps += (k % 6 - 3) * 3.0 * normal
        np.testing.assert_allclose(info.affine @ [i, j, k, 1], [*(lps * [-1, -1, 1]), 1], atol=1e-4)
    # Per-slice maps (y, z, slabs * x) go back to the stacked (x, y, slabs * z) volume.
    maps = rng.standard_normal((6, 6, 16))
    stacked = readers.maps_as_volume(maps, slabs=2)
    assert stacked.shape == (8, 6, 12)
    np.testing.assert_array_equal(stacked[3, :, 6:], maps[:, :, 8 + 3])
    np.testing.assert_array_equal(readers.volume_as_maps(stacked, slabs=2), maps)


def test_the_ismrmrd_package_reads_our_slabs_as_slices_and_partitions(rng, tmp_path):
    ismrmrd = pytest.importorskip("ismrmrd")
    volume, _, path = _two_slabs(rng, tmp_path, acceleration=(1, 2))
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as dset:
        header = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
        assert header.encoding[0].encodingLimits.slice.maximum == 1
        assert header.encoding[0].encodedSpace.matrixSize.z == 6
        for i in range(dset.number_of_acquisitions()):
            acq = dset.read_acquisition(i)
            if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
                continue
            slab, partition = acq.idx.slice, acq.idx.kspace_encode_step_2
            assert partition % 2 == 0  # R_z = 2 within each slab
            assert acq.position[2] == pytest.approx(20.0 + 18.0 * slab)
            y, r = acq.idx.kspace_encode_step_1, acq.idx.repetition
            np.testing.assert_array_equal(acq.data, volume[:, y, 6 * slab + partition, :, r].T)


def test_slabs_encoded_differently_are_refused_naming_what_differs(rng, tmp_path):
    _, _, path = _two_slabs(rng, tmp_path)
    with h5py.File(path, "r+") as f:
        data = f["dataset/data"][...]
        image = np.flatnonzero(data["head"]["idx"]["slice"] == 1)
        data["head"]["idx"]["slice"][image[:5]] = 0  # slab 1's first readouts filed in slab 0
        f["dataset/data"][...] = data
    with pytest.raises(
        InputError, match=r"slabs.h5: slab 1 has \d+ readouts .* expected every slab encoded alike"
    ):
        read_raw(path)


def test_overlapping_slabs_are_refused_naming_their_spacing(rng, tmp_path):
    centres = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 15.0]])  # 15 mm apart, 18 mm thick
    _, _, path = _two_slabs(rng, tmp_path, positions_mm=centres)
    with pytest.raises(InputError, match=r"slabs.h5: slab centres step \[15.0\] mm .* 18 mm apart"):
        read_raw(path)
    with pytest.raises(InputError, match="slab centres step"):
        read_info(path)


def test_slabs_in_other_orientations_or_missing_are_refused(rng, tmp_path):
    _, _, path = _two_slabs(rng, tmp_path)
    with h5py.File(path, "r+") as f:
        data = f["dataset/data"][...]
        slab1 = data["head"]["idx"]["slice"] == 1
        data["head"]["slice_dir"][slab1] = [0.0, 0.6, 0.8]
        f["dataset/data"][...] = data
    with pytest.raises(
        InputError, match=r"slab 1 has slice_dir \[0.0, 0.6, 0.8\].*expected parallel"
    ):
        read_raw(path)
    (tmp_path / "gap").mkdir()
    _, _, path = _two_slabs(rng, tmp_path / "gap")
    with h5py.File(path, "r+") as f:
        data = f["dataset/data"][...]
        data["head"]["idx"]["slice"][data["head"]["idx"]["slice"] == 1] = 2
        f["dataset/data"][...] = data
    with pytest.raises(InputError, match=r"3-D with 3 slabs but slabs \[1\] have no readouts"):
        read_raw(path)


def test_threads_reading_one_mrd_file_at_once_all_get_it_whole(rng, tmp_path):
    # h5py 3.16 on HDF5 2.0 crashed the process here without the HDF5 lock (h5py#2920): Dask
    # runs slice batches as threads that each open the signal file.
    kspace = random_complex(rng, (16, 12, 4, 4, 1))
    path = write_mrd(tmp_path / "raw.h5", kspace, fov_mm=(200.0, 150.0, 5.0), dwell_s=5e-6)
    with ThreadPoolExecutor(max_workers=4) as pool:
        signals = list(pool.map(lambda _: read_raw(path).signal, range(200)))
    for signal in signals:
        np.testing.assert_array_equal(signal, kspace)


def test_an_open_hdf5_file_holds_the_process_lock(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w"):
        pass
    with ThreadPoolExecutor(max_workers=1) as other, open_hdf5(tmp_path / "a.h5"):
        assert not other.submit(_HDF5_LOCK.acquire, blocking=False).result()
    assert _HDF5_LOCK.acquire(blocking=False)
    _HDF5_LOCK.release()


# --- calibration-only readouts ---------------------------------------------------------------


def test_calibration_only_readouts_the_ismrmrd_package_writes_are_the_reference(rng, tmp_path):
    # A separately acquired reference scan, as siemens_to_ismrmrd writes a PATREFSCAN: its
    # readouts carry ACQ_IS_PARALLEL_CALIBRATION (flag 20) alone and are not image data.
    ismrmrd = pytest.importorskip("ismrmrd")
    assert ismrmrd.ACQ_IS_PARALLEL_CALIBRATION == 20
    nx, ny, coils = 8, 12, 3
    xml_path = write_mrd(
        tmp_path / "hdr.h5",
        random_complex(rng, (nx, ny, coils, 1, 1)),
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
        acceleration=(2, 1),
    )
    with h5py.File(xml_path) as f:
        xml = f["dataset/xml"][0].decode()
    image = random_complex(rng, (ny, coils, nx))  # (y, coils, x)
    calibration = random_complex(rng, (ny, coils, nx))
    with ismrmrd.Dataset(str(tmp_path / "theirs.h5"), "dataset", create_if_needed=True) as dset:
        dset.write_xml_header(xml)
        for y in range(4, 8):  # the reference scan first, as the scanner acquires it
            acq = ismrmrd.Acquisition.from_array(calibration[y])
            acq.idx.kspace_encode_step_1 = y
            acq.set_flag(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION)
            dset.append_acquisition(acq)
        for y in range(0, ny, 2):
            acq = ismrmrd.Acquisition.from_array(image[y])
            acq.idx.kspace_encode_step_1 = y
            dset.append_acquisition(acq)
    raw = read_raw(tmp_path / "theirs.h5")
    expected = np.zeros((nx, ny, coils, 1, 1), dtype=np.complex64)
    expected[:, ::2, :, 0, 0] = image[::2].transpose(2, 0, 1)
    np.testing.assert_array_equal(raw.signal, expected)  # the reference is not in the signal
    reference = np.zeros((nx, ny, coils, 1), dtype=np.complex64)
    reference[:, 4:8, :, 0] = calibration[4:8].transpose(2, 0, 1)
    np.testing.assert_array_equal(raw.reference, reference)
    info = raw.info
    assert info.reference
    assert (info.acceleration, info.acs_block) == ((1, 2), (None, 4))
    assert info.summary["calibration_acquisitions"] == 4
    assert "calibration_only" not in info.summary["skipped_acquisitions"]


def test_the_ismrmrd_package_reads_our_calibration_only_readouts(rng, tmp_path):
    ismrmrd = pytest.importorskip("ismrmrd")
    kspace = random_complex(rng, (8, 12, 2, 2, 2))  # two slices, two repetitions
    reference = random_complex(rng, (8, 12, 2, 2))
    path = write_mrd(
        tmp_path / "ours.h5",
        kspace,
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
        acceleration=(3, 1),
        acs=(4, 1),
        reference=reference,
    )
    found = {}
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as dset:
        for i in range(dset.number_of_acquisitions()):
            acq = dset.read_acquisition(i)
            if acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION):
                assert not acq.is_flag_set(ismrmrd.ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING)
                found[acq.idx.slice, acq.idx.kspace_encode_step_1] = acq.data
    assert sorted(found) == [(s, y) for s in range(2) for y in range(4, 8)]
    for (s, y), data in found.items():
        np.testing.assert_array_equal(data, reference[:, y, :, s].T)
    raw = read_raw(path)
    lines = np.flatnonzero(np.any(raw.signal != 0, axis=(0, 2, 3, 4)))
    assert lines.tolist() == [0, 3, 6, 9]  # the grid alone
    np.testing.assert_array_equal(raw.reference[:, 4:8], reference[:, 4:8])
    assert not np.any(raw.reference[:, :4])
    assert not np.any(raw.reference[:, 8:])


def test_a_3d_reference_scan_is_returned_in_hybrid_space(rng, tmp_path):
    volume = random_complex(rng, (8, 12, 10, 3, 1))
    reference = random_complex(rng, (8, 12, 10, 3))
    path = write_mrd(
        tmp_path / "v.h5",
        volume,
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
        oversampling=2,
        volume=True,
        acceleration=(2, 2),
        acs=(6, 4),
        reference=reference,
    )
    raw = read_raw(path)
    block = np.zeros_like(reference)
    block[:, 3:9, 3:7] = reference[:, 3:9, 3:7]
    expected = readers.volume_as_slices(remove_readout_oversampling(block, axis=0))[..., 0]
    assert raw.reference.shape == raw.signal.shape[:4] == (12, 10, 3, 4)
    np.testing.assert_allclose(raw.reference, expected, atol=1e-5)
    assert raw.info.acs_block == (6, 4)
