"""A slice batch reads what read_raw reads, and its memory does not grow with the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tasks.errors import InputError
from tasks.mr.io import read_raw, write_mrd
from tasks.mr.io.slices import read_reference, read_slices, slice_source
from tests.mr.io.helpers import peak_bytes, random_complex


def _write(fmt: str, path: Path, kspace: np.ndarray, oversampling: int = 1) -> Path:
    """``kspace`` (x, y, coils, slices, replicas) as a .npy, MRD or MATLAB v5 file."""
    if fmt == "npy":
        np.save(path.with_suffix(".npy"), kspace)
        return path.with_suffix(".npy")
    if fmt == "mrd":
        noise = kspace[:, 0, :, 0, 0]
        return write_mrd(
            path.with_suffix(".h5"),
            kspace,
            noise,
            fov_mm=(200, 200, 5),
            dwell_s=5e-6,
            oversampling=oversampling,
        )
    scipy.io.savemat(path.with_suffix(".mat"), {"kspace": kspace})
    return path.with_suffix(".mat")


@pytest.mark.parametrize(("fmt", "reader"), [("npy", "npy"), ("mrd", "mrd"), ("mat", "npy")])
def test_a_batch_holds_what_read_raw_returns_for_those_slices(rng, tmp_path, fmt, reader):
    kspace = random_complex(rng, (16, 8, 3, 6, 2))
    path = _write(fmt, tmp_path / "s", kspace, oversampling=2 if fmt == "mrd" else 1)
    source = slice_source(path, tmp_path / "staged")
    assert source.reader == reader
    whole = read_raw(path).signal
    assert source.shape == whole.shape
    for batch in ([4, 1], [0], [5, 5, 2]):
        np.testing.assert_array_equal(read_slices(source, batch), whole[:, :, :, batch])


def test_formats_that_cannot_be_read_by_slice_are_staged_once(rng, tmp_path):
    path = _write("mat", tmp_path / "s", random_complex(rng, (8, 6, 2, 3, 1)))
    first = slice_source(path, tmp_path / "staged")
    assert first.path.parent == tmp_path / "staged"
    assert first.path.suffix == ".npy"
    written = first.path.stat().st_mtime_ns
    again = slice_source(path, tmp_path / "staged")
    assert again == first
    assert again.path.stat().st_mtime_ns == written
    assert [p.name for p in (tmp_path / "staged").iterdir()] == [first.path.name]


def test_a_volume_is_staged_in_hybrid_space(rng, tmp_path):
    volume = random_complex(rng, (6, 8, 4, 3, 1))  # (x, y, z, coils, replicas)
    np.save(tmp_path / "v.npy", volume)
    source = slice_source(tmp_path / "v.npy", tmp_path / "staged", layout="volume")
    assert source.path.parent == tmp_path / "staged"
    whole = read_raw(tmp_path / "v.npy", layout="volume").signal
    np.testing.assert_array_equal(read_slices(source, [1, 5]), whole[:, :, :, [1, 5]])


@pytest.mark.parametrize("volume", [False, True], ids=["2d-mrd", "3d-staged"])
def test_a_batchs_reference_is_what_read_raw_returns_for_those_slices(rng, tmp_path, volume):
    kspace = random_complex(rng, (16, 8, 3, 6, 1))  # 3-D: (x, y, z, coils, replicas)
    reference = random_complex(rng, kspace.shape[:4])
    if volume:
        kspace, reference = kspace.transpose(0, 1, 3, 2, 4), reference.transpose(0, 1, 3, 2)
    path = write_mrd(
        tmp_path / "s.h5",
        kspace,
        fov_mm=(1, 1, 1),
        dwell_s=1e-6,
        oversampling=2,
        volume=volume,
        acceleration=(2, 1),
        acs=(4, 2),
        reference=reference,
    )
    source = slice_source(path, tmp_path / "staged")
    assert source.reader == ("npy" if volume else "mrd")
    assert source.reference == (
        source.path.with_name(f"{source.path.stem}-reference.npy") if volume else path
    )
    whole = read_raw(path).reference
    for batch in ([4, 1], [0], [5, 5, 2]):
        np.testing.assert_array_equal(read_reference(source, batch), whole[:, :, :, batch])
    plain = slice_source(_write("mrd", tmp_path / "plain", kspace), tmp_path / "staged")
    assert plain.reference is None
    assert read_reference(plain, [0]) is None


def test_slices_outside_the_file_are_refused(rng, tmp_path):
    path = _write("npy", tmp_path / "s", random_complex(rng, (8, 6, 2, 3, 1)))
    source = slice_source(path, tmp_path / "staged")
    with pytest.raises(InputError, match=r"slices \[3\]; expected .* indices below 3"):
        read_slices(source, [3])


@pytest.mark.parametrize("fmt", ["npy", "mrd", "mat"])
def test_a_batchs_peak_memory_does_not_grow_with_the_slices_in_the_file(rng, tmp_path, fmt):
    # Readouts of 256 samples x 16 coils (32 KiB): MRD's acquisition headers (340 B each) are
    # read whole to find the batch's readouts, about 1% of the samples they describe.
    batch = [0, 1, 2, 3]
    peaks, whole = {}, {}
    for count in (4, 32):
        path = _write(fmt, tmp_path / f"s{count}", random_complex(rng, (256, 16, 16, count, 2)))
        source = slice_source(path, tmp_path / "staged")  # staging is once per run, not per task
        peaks[count] = peak_bytes(lambda source=source: read_slices(source, batch))
        whole[count] = peak_bytes(lambda path=path: read_raw(path))
    assert peaks[32] < 1.5 * peaks[4]
    assert whole[32] > 4 * peaks[4]  # what reading the whole file would have cost
