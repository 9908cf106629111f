import gzip
import json
from io import BytesIO

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.export import (
    PNG_SIZE_PX,
    display_limits,
    info_json,
    map_png,
    matrix_png,
    mro_output,
    nifti_bytes,
    output_entry,
    sensitivity_nifti_bytes,
)
from tasks.mr.options import MrOptions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MRO_ENTRY_KEYS = {"filename", "id", "dim", "name", "type", "numpyPixelType", "pixelType"}


def load_nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def load_png(data: bytes) -> np.ndarray:
    assert data.startswith(PNG_SIGNATURE)
    return mpimg.imread(BytesIO(data), format="png")


def test_nifti_loads_back_as_float32_with_nan_and_inf_set_to_zero(rng):
    volume = rng.uniform(1, 100, size=(32, 24, 3))
    volume[0, 0, 0], volume[1, 2, 1], volume[3, 3, 2] = np.nan, np.inf, -np.inf
    image = load_nifti(nifti_bytes(volume, voxel_mm=(2.0, 1.5, 4.0)))
    assert image.get_data_dtype() == np.float32
    assert image.shape == (32, 24, 3)
    data = np.asanyarray(image.dataobj)
    assert data[0, 0, 0] == data[1, 2, 1] == data[3, 3, 2] == 0
    finite = np.isfinite(volume)
    np.testing.assert_allclose(data[finite], volume[finite].astype(np.float32), rtol=0)
    np.testing.assert_array_equal(image.affine, np.diag([2.0, 1.5, 4.0, 1.0]))
    assert image.header.get_xyzt_units()[0] == "mm"


def test_nifti_without_geometry_is_one_millimetre_and_a_2d_map_is_one_slice():
    image = load_nifti(nifti_bytes(np.ones((8, 6))))
    assert image.shape == (8, 6, 1)
    np.testing.assert_array_equal(image.affine, np.eye(4))
    assert load_nifti(nifti_bytes(np.ones((8, 6, 1)), voxel_mm=(2, 3))).affine[2, 2] == 1


def test_nifti_keeps_a_given_affine():
    affine = np.array([[0, -2, 0, 10], [1, 0, 0, -5], [0, 0, 3, 7], [0, 0, 0, 1]], float)
    image = load_nifti(nifti_bytes(np.zeros((4, 4, 2)), affine, voxel_mm=(9, 9, 9)))
    np.testing.assert_array_equal(image.affine, affine)


def test_nifti_bytes_are_reproducible():
    volume = np.arange(24.0).reshape(2, 3, 4)
    assert nifti_bytes(volume) == nifti_bytes(volume)


@pytest.mark.parametrize(
    ("volume", "match"),
    [
        (np.ones((4, 4, 2), complex), r"volume is complex; expected a real map"),
        (np.ones((4, 4, 2, 2)), r"volume has shape \(4, 4, 2, 2\); expected \(x, y, slices\)"),
    ],
)
def test_nifti_refuses_what_is_not_a_real_map(volume, match):
    with pytest.raises(InputError, match=match):
        nifti_bytes(volume)


def test_nifti_refuses_a_bad_voxel_size_or_affine():
    with pytest.raises(InputError, match=r"voxel_mm=\(1, 0\); expected 2 or 3 positive sizes"):
        nifti_bytes(np.ones((2, 2)), voxel_mm=(1, 0))
    with pytest.raises(InputError, match=r"affine has shape \(3, 3\)"):
        nifti_bytes(np.ones((2, 2)), np.eye(3))


def test_sensitivity_maps_as_magnitude_are_4d_float32(rng):
    maps = rng.normal(size=(16, 12, 2, 4)) + 1j * rng.normal(size=(16, 12, 2, 4))
    maps[0, 0, 0, 0] = np.nan
    image = load_nifti(sensitivity_nifti_bytes(maps))
    assert image.shape == (16, 12, 2, 4)
    assert image.get_data_dtype() == np.float32
    data = np.asanyarray(image.dataobj)
    assert data[0, 0, 0, 0] == 0
    np.testing.assert_allclose(data[1:], np.abs(maps[1:]), rtol=1e-6)


def test_sensitivity_maps_as_complex_put_coils_on_the_fifth_axis(rng):
    maps = rng.normal(size=(8, 6, 3, 5)) + 1j * rng.normal(size=(8, 6, 3, 5))
    image = load_nifti(sensitivity_nifti_bytes(maps, voxel_mm=(2, 2, 5), store="complex"))
    assert image.shape == (8, 6, 3, 1, 5)
    assert image.get_data_dtype() == np.complex64
    np.testing.assert_allclose(np.asanyarray(image.dataobj)[:, :, :, 0, :], maps, rtol=1e-6)
    assert image.affine[2, 2] == 5
    with pytest.raises(InputError, match=r"store='phase' is not supported"):
        sensitivity_nifti_bytes(maps, store="phase")


def test_display_limits_put_vmax_at_the_99th_percentile():
    values = np.arange(1, 1001, dtype=float).reshape(10, 100)
    values[0, 0] = 1e9  # one hot pixel must not wash out the map
    values[0, 1] = np.nan
    vmin, vmax = display_limits(values, "snr")
    assert vmin == 0
    finite = values[np.isfinite(values)]
    assert vmax == pytest.approx(np.percentile(finite, 99))
    assert vmax < 1000


def test_g_limits_start_at_one_and_ignore_undefined_zeros():
    g = np.concatenate([np.zeros(500), np.linspace(1, 3, 500)])
    vmin, vmax = display_limits(g, "g")
    assert vmin == 1
    assert vmax == pytest.approx(np.percentile(np.linspace(1, 3, 500), 99))


def test_limits_stay_readable_for_flat_or_empty_maps():
    assert display_limits(np.zeros((4, 4)), "snr") == (0.0, 1.0)
    assert display_limits(np.full((4, 4), np.nan), "g") == (1.0, 2.0)
    assert display_limits(np.ones((4, 4)), "mask") == (0.0, 1.0)
    assert display_limits(np.full((2, 2), 3 + 4j), "sensitivity") == (0.0, 5.0)


@pytest.mark.parametrize("kind", ["snr", "g", "mask", "sensitivity"])
def test_map_png_is_a_png_of_the_fixed_size(rng, kind):
    values = rng.uniform(0, 50, size=(48, 32))
    values[0, 0] = np.nan
    image = load_png(map_png(values, title=f"{kind} slice 0", label="value", kind=kind))
    width, height = PNG_SIZE_PX
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0  # something was drawn


def test_map_png_colours_by_display_limits(monkeypatch):
    import tasks.mr.export as export

    seen = []

    def spy(values, kind):
        seen.append(kind)
        return display_limits(values, kind)

    monkeypatch.setattr(export, "display_limits", spy)
    map_png(np.ones((8, 8)), title="g", label="g", kind="g")
    assert seen == ["g"]


def test_map_png_refuses_a_volume():
    with pytest.raises(InputError, match=r"values has shape \(4, 4, 2\); expected \(x, y\)"):
        map_png(np.ones((4, 4, 2)), title="t", label="l", kind="snr")


@pytest.mark.parametrize("kind", ["covariance", "coefficient"])
def test_matrix_png_draws_a_square_matrix(rng, kind):
    noise = rng.normal(size=(4000, 12)) + 1j * rng.normal(size=(4000, 12))
    psi = noise.T @ noise.conj() / noise.shape[0]
    image = load_png(matrix_png(psi, title="noise", kind=kind))
    assert image.shape[:2] == (PNG_SIZE_PX[1], PNG_SIZE_PX[0])


def test_matrix_png_refuses_a_non_square_matrix():
    with pytest.raises(InputError, match=r"matrix has shape \(3, 4\); expected \(coils, coils\)"):
        matrix_png(np.ones((3, 4)), title="t", kind="covariance")


def test_output_entries_follow_mr_optimum():
    assert mro_output("snr") == {
        "filename": "data/SNR.nii.gz",
        "id": 0,
        "dim": 3,
        "name": "SNR",
        "type": "output",
        "numpyPixelType": "float32",
        "pixelType": "real",
    }
    nc = mro_output("noise_covariance", np.complex64)
    assert (nc["id"], nc["dim"], nc["pixelType"]) == (1, 2, "complex")
    coil = mro_output("sensitivity", np.complex64, coil=3)
    assert (coil["id"], coil["filename"]) == (13, "data/sensitivity_03.nii.gz")
    assert mro_output("mask", np.uint8)["type"] == "mask"
    with pytest.raises(InputError, match=r"output 'snr2' is unknown"):
        mro_output("snr2")


def test_info_json_has_mr_optimum_keys_and_ours():
    options = MrOptions(method="pmr", recon="sense", acceleration=(1, 2), decimate=True, seed=5)
    job = {"version": "v0", "acquisition": 2, "name": "PMR", "options": {"NR": 20}}
    outputs = [
        mro_output("g"),
        mro_output("snr"),
        output_entry("data/extra.nii.gz", output_id=200, name="Extra", dtype="float64"),
    ]
    document = json.loads(
        info_json(
            options=options.model_dump(mode="json"),
            header={"matrix": (128, 96), "coils": np.int64(8), "slices": [0, 1, 2]},
            outputs=outputs,
            timings_s={"read": 1.5, "snr": np.float64(2.0)},
            extra={
                "job": job,
                "log": [{"what": "start"}],
                "nbw": 0.79,
                "noise_samples": 65536,
                "noise_convention": "mroptimum",
                "psi_max": np.float32(np.inf),
            },
        )
    )
    assert set(document) >= {"headers", "data", "info"}
    assert set(document["headers"]) == {"calculation_time", "options", "log"}
    assert document["headers"]["options"] == job
    assert document["headers"]["calculation_time"] == pytest.approx(3.5)
    assert [entry["id"] for entry in document["data"]] == [0, 4, 200]
    for entry in document["data"]:
        assert set(entry) == {
            "filename",
            "id",
            "dim",
            "name",
            "type",
            "numpyPixelType",
            "pixelType",
        }
    assert document["info"] == {"calculation_time": pytest.approx(3.5), "slices": 3}
    ours = document["sciflow"]
    assert ours["noise"] == {"convention": "mroptimum", "nbw": 0.79, "samples": 65536}
    assert ours["acceleration"] == [1, 2]
    assert (ours["replicas"], ours["box_size"], ours["seed"]) == (20, 2, 5)
    assert ours["grappa_kernel"] == [3, 4]
    assert ours["timings_s"] == {"read": 1.5, "snr": 2.0}
    assert ours["header"]["coils"] == 8
    assert ours["extra"] == {"psi_max": None}
    assert set(ours["packages"]) >= {"python", "numpy", "scipy", "nibabel", "sciflow"}
    assert ours["packages"]["numpy"] == np.__version__


def test_info_json_without_a_job_stores_the_options_and_a_total():
    options = {"method": "ac", "recon": "rss"}
    document = json.loads(
        info_json(
            options=options,
            header={"slices": 1},
            outputs=[mro_output("snr")],
            timings_s={"read": 1.0, "snr": 2.0, "total": 4.0},
            extra={},
        )
    )
    assert document["headers"]["options"] == options
    assert document["headers"]["log"] == []
    assert document["info"] == {"calculation_time": 4.0, "slices": 1}


def test_info_json_writes_no_credential_whatever_reaches_it():
    """Guards against a credential reaching info.json by a path other than the job parser:
    a presigned URL in a provenance note or an extra field was written as given."""
    presigned = "https://b.s3.amazonaws.com/k?X-Amz-Signature=feedc0ffee"
    text = info_json(
        options={"method": "ac", "recon": "rss"},
        header={"slices": 1},
        outputs=[mro_output("snr")],
        timings_s={"total": 1.0},
        extra={"log": [f"fetched {presigned}"], "source": {"link": presigned, "bucket": "b"}},
    )
    assert b"feedc0ffee" not in text
    document = json.loads(text)
    assert document["headers"]["log"] == ["<redacted>"]
    assert document["sciflow"]["extra"]["source"] == {"link": "<redacted>", "bucket": "b"}


def test_info_json_refuses_an_output_without_a_filename():
    with pytest.raises(InputError, match=r"outputs\[0\] has no filename"):
        info_json(options={}, header={}, outputs=[{"name": "SNR"}], timings_s={}, extra={})


def test_info_json_completes_entries_named_like_mr_optimum_outputs():
    outputs = [
        {"name": "SNR", "filename": "SNR.nii.gz", "shape": [4, 4, 1]},
        {"name": "G", "filename": "G.nii.gz"},
        {"name": "noise_covariance", "filename": "noise_covariance.nii.gz"},
        {"filename": "data/sensitivity_03.nii.gz", "numpyPixelType": "complex64"},
        {"name": "extra map", "filename": "extra.nii.gz"},
    ]
    document = json.loads(
        info_json(
            options={"method": "ac"},
            header={"slices": 2},
            outputs=outputs,
            timings_s={},
            extra={"noise": {"nbw": 0.8, "samples": 100, "convention": "physical"}},
        )
    )
    by_file = {entry["filename"]: entry for entry in document["data"]}
    assert by_file["SNR.nii.gz"] == {
        "filename": "SNR.nii.gz",
        "id": 0,
        "dim": 3,
        "name": "SNR",
        "type": "output",
        "numpyPixelType": "float32",
        "pixelType": "real",
        "shape": [4, 4, 1],
    }
    assert (by_file["G.nii.gz"]["id"], by_file["G.nii.gz"]["type"]) == (4, "accessory")
    assert by_file["noise_covariance.nii.gz"]["dim"] == 2
    coil = by_file["data/sensitivity_03.nii.gz"]
    assert (coil["id"], coil["pixelType"], coil["name"]) == (13, "complex", "Coils Sensitivity 03")
    assert by_file["extra.nii.gz"]["id"] >= 1000
    assert document["sciflow"]["noise"] == {"convention": "physical", "nbw": 0.8, "samples": 100}
    assert document["sciflow"]["extra"] == {}


def test_info_json_records_where_the_noise_came_from():
    noise = {"source": "readout margins", "detail": "2 of 2 regions", "samples": 6400}
    document = json.loads(
        info_json(
            options={"convention": "physical"},
            header={},
            outputs=[],
            timings_s={},
            extra={"noise": {**noise, "nbw": None}},
        )
    )
    assert document["sciflow"]["noise"] == {**noise, "convention": "physical", "nbw": None}


def test_a_multi_slab_run_over_some_slices_is_written_as_the_whole_stacked_volume(tmp_path, rng):
    # Two slabs of (x, y, z) = (4, 3, 2): slices are x positions, slab 1's after slab 0's.
    from tasks.mr.export import write_snr_outputs
    from tasks.mr.io import AcquisitionInfo, maps_as_volume
    from tasks.mr.noise import NoiseStatistics
    from tasks.mr.snr import SnrMaps

    info = AcquisitionInfo(
        format="mrd",
        vendor=None,
        matrix=(3, 2, 8),  # (y, z, slabs * x)
        coils=2,
        replicas=1,
        signal_dwell_s=None,
        noise_dwell_s=None,
        oversampling_removed=False,
        fov_mm=None,
        affine=None,
        flip_angle_deg=None,
        acceleration=(1, 1),
        acs_lines=None,
        summary={},
        kind="3d",
        volume_matrix=(4, 3, 4),
        slabs=2,
    )
    slices = [1, 6]  # x = 1 of slab 0, x = 2 of slab 1
    snr = [rng.uniform(1, 2, size=(3, 2)) for _ in slices]
    flip = np.full((4, 3, 4), 30.0)  # sin = 1/2
    nib.save(nib.Nifti1Image(flip, np.eye(4)), tmp_path / "fa.nii.gz")
    files: dict[str, bytes] = {}

    def put(name: str, data: bytes) -> str:
        files[name] = data
        return name

    stats = NoiseStatistics(np.eye(2), None, None, 0)
    written = write_snr_outputs(
        put,
        [SnrMaps(snr=s) for s in snr],
        stats,
        info,
        MrOptions(),
        {},
        {},
        slices,
        "run",
        str(tmp_path / "fa.nii.gz"),
    )
    volume = load_nifti(files["SNR.nii.gz"]).get_fdata()
    assert volume.shape == (4, 3, 4)
    expected = np.zeros((3, 2, 8))
    expected[:, :, slices] = 2 * np.stack(snr, axis=-1)
    np.testing.assert_allclose(volume, maps_as_volume(expected, slabs=2), rtol=1e-6)
    np.testing.assert_allclose(volume[2, :, 2:], 2 * snr[1], rtol=1e-6)  # slab 1: z 2..3
    assert written.median_snr == pytest.approx(np.median(2 * np.stack(snr)), rel=1e-6)
