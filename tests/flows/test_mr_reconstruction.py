import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from flows.mr_reconstruction import mr_reconstruction
from tasks.credentials import REDACTED
from tasks.errors import InputError
from tasks.mr.io import write_mrd
from tasks.mr.phantom import make_phantom, phantom_acquisition

FOV_MM = (256.0, 256.0, 5.0)
DWELL_S = 5e-6


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(48, 48, 4, amplitude=40.0, correlation=0.3, seed=5)


@pytest.fixture
def mrd_file(tmp_path, phantom) -> Path:
    signal, noise = phantom_acquisition(phantom, slices=2, noise_samples=48 * 400, seed=6)
    return write_mrd(tmp_path / "phantom.h5", signal, noise, fov_mm=FOV_MM, dwell_s=DWELL_S)


def test_array_combining_b1_from_mrd_matches_the_closed_form(mrd_file, phantom, tmp_path):
    result = mr_reconstruction(
        signal=str(mrd_file), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "out")
    )
    snr = nib.load(result.snr).get_fdata()
    assert snr.shape == (48, 48, 2)
    assert snr.dtype == np.float64  # nibabel scales float32 up on read
    truth = phantom.snr_optimal()
    inside = phantom.support
    for index in range(2):
        ratio = np.median(snr[..., index][inside] / truth[inside])
        # Noise in the data and a 19,200-sample covariance estimate: a few percent at most.
        assert ratio == pytest.approx(1.0, abs=0.05)
    info = json.loads(Path(result.info).read_text())
    assert info["headers"]["options"]["method"] == "ac"
    assert set(result.previews) >= {"SNR", "noise_covariance", "noise_coefficient"}
    assert all(Path(uri).read_bytes().startswith(b"\x89PNG") for uri in result.previews.values())


def test_pseudo_replicas_agree_with_array_combining(mrd_file, tmp_path):
    common = {"recon": "b1"}
    ac = mr_reconstruction(
        signal=str(mrd_file), options={"method": "ac", **common}, output=str(tmp_path / "ac")
    )
    pmr = mr_reconstruction(
        signal=str(mrd_file),
        options={"method": "pmr", "replicas": 64, **common},
        output=str(tmp_path / "pmr"),
    )
    # ROI median over ~3,500 pixels of two slices: 64 replicas give ~1% per map.
    assert pmr.median_snr == pytest.approx(ac.median_snr, rel=0.05)


def test_an_mroptimum_job_runs_unchanged(tmp_path, phantom):
    signal, noise = phantom_acquisition(phantom, slices=1, noise_samples=48 * 200, seed=7)
    np.save(tmp_path / "signal.npy", signal[..., 0, 0])
    np.save(tmp_path / "noise.npy", noise)
    job = {
        "version": "v0",
        "acquisition": 2,
        "type": "SNR",
        "id": 0,
        "name": "AC",
        "options": {
            "reconstructor": {
                "type": "recon",
                "id": 1,
                "name": "RSS",
                "options": {
                    "signal": {
                        "type": "file",
                        "options": {
                            "type": "local",
                            "filename": str(tmp_path / "signal.npy"),
                            "vendor": "numpy",
                        },
                    },
                    "noise": {
                        "type": "file",
                        "options": {
                            "type": "local",
                            "filename": str(tmp_path / "noise.npy"),
                            "vendor": "numpy",
                        },
                    },
                },
            }
        },
    }
    from_job = mr_reconstruction(options=job, output=str(tmp_path / "job"))
    # The UI's JSON box: the same job in its own parameter gives the same maps.
    from_job_box = mr_reconstruction(job=job, output=str(tmp_path / "job-box"))
    physical = mr_reconstruction(
        signal=str(tmp_path / "signal.npy"),
        noise=str(tmp_path / "noise.npy"),
        options={"method": "ac", "recon": "rss"},
        output=str(tmp_path / "physical"),
    )
    info = json.loads(Path(from_job.info).read_text())
    assert info["sciflow"]["noise"]["convention"] == "mroptimum"
    np.testing.assert_array_equal(
        nib.load(from_job_box.snr).get_fdata(), nib.load(from_job.snr).get_fdata()
    )
    assert info["headers"]["options"]["name"] == "AC"  # the job as pasted
    inside = phantom.support
    job_snr = nib.load(from_job.snr).get_fdata()[..., 0][inside]
    physical_snr = nib.load(physical.snr).get_fdata()[..., 0][inside]
    # MR Optimum's Psi/2 on equal-sampling data reads sqrt(2) high (primer, "the sqrt(2) trap").
    assert np.median(job_snr / physical_snr) == pytest.approx(np.sqrt(2), rel=0.02)


FAKE_TOKEN = "Bearer canary-token-5f1e0c"  # noqa: S105 - a stand-in, checked never to be kept
FAKE_PRESIGNED = (
    "https://mrodata.s3.amazonaws.com/u1/signal.npy?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIAFAKE%2F20261205%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=canarysig7d2b"
)
CANARIES = ("canary-token-5f1e0c", "canarysig7d2b")


def gui_job_with_credentials(tmp_path, phantom) -> dict:
    """An RSS/AC job as the MR Optimum web GUI posts it: its bearer token at two levels and
    a presigned URL under an innocent key (``link``) beside the file it signs."""
    signal, noise = phantom_acquisition(phantom, slices=1, noise_samples=48 * 200, seed=7)
    np.save(tmp_path / "signal.npy", signal[..., 0, 0])
    np.save(tmp_path / "noise.npy", noise)

    def file(name: str) -> dict:
        path = str(tmp_path / f"{name}.npy")
        return {"type": "file", "options": {"type": "local", "filename": path, "vendor": "numpy"}}

    signal_ref = file("signal")
    signal_ref["options"]["extra"] = {"link": FAKE_PRESIGNED}
    task = {
        "version": "v0",
        "acquisition": 2,
        "type": "SNR",
        "name": "AC",
        "token": FAKE_TOKEN,
        "options": {
            "reconstructor": {
                "name": "RSS",
                "options": {"signal": signal_ref, "noise": file("noise")},
            }
        },
    }
    return {"version": "v0", "alias": "canary", "output": {}, "task": task, "token": FAKE_TOKEN}


def _run_records(flow_run_id) -> tuple[dict, list[str], list[str]]:
    """What the Prefect server holds for a run: parameters, artifact texts, log lines."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    # Logs reach the server in batches from a background worker: send what is queued, then
    # read until the run's lines are there (a run always logs its start).
    APILogWorker.drain_all(timeout=30)
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))
        while not (logs := client.read_logs(log_filter=log_filter)) and time.monotonic() < deadline:
            time.sleep(0.2)
    return (
        run.parameters,
        [json.dumps(a.data) + str(a.description) for a in artifacts],
        [log.message for log in logs],
    )


def test_a_pasted_job_with_credentials_is_refused_before_anything_runs(tmp_path, phantom):
    """Guards against a pasted GUI job running with its token: it ran, and the token and the
    presigned URL (under an innocent key) went on to info.json's headers.options."""
    out = tmp_path / "out"
    job = gui_job_with_credentials(tmp_path, phantom)
    with pytest.raises(InputError) as caught:
        mr_reconstruction(options=job, output=str(out))
    message = str(caught.value)
    assert "\n" not in message
    assert "options.token (secret-named key)" in message
    assert "options.task.options.reconstructor.options.signal.options.extra.link" in message
    assert "pass the MR Optimum job by URI" in message
    assert not any(canary in message for canary in CANARIES)
    assert not out.exists()
    written = [p for p in (tmp_path / "sciflow" / "runs").rglob("*") if p.is_file()]
    assert [p.name for p in written] == ["cleanup_validation.json"]  # cleanup's record only
    assert not any(canary.encode() in written[0].read_bytes() for canary in CANARIES)


def test_a_presigned_url_as_the_signal_is_refused(tmp_path):
    """Guards against a presigned URL passed as a file parameter being stored and read."""
    with pytest.raises(InputError, match=r"^parameters: signal \(presigned URL\) carries"):
        mr_reconstruction(signal=FAKE_PRESIGNED, output=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_job_by_uri_runs_and_keeps_no_credential(tmp_path, phantom):
    """Guards against a job file's token reaching info.json, artifacts, logs or the stored
    parameters: the job read from a file is the one with its credentials dropped."""
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(gui_job_with_credentials(tmp_path, phantom)))
    state = mr_reconstruction(
        options=str(job_file), output=str(tmp_path / "out"), return_state=True
    )
    result = state.result()
    info = json.loads(Path(result.info).read_text())
    assert info["headers"]["options"]["task"]["token"] == REDACTED
    assert info["headers"]["options"]["alias"] == "canary"  # the rest of the job is kept
    assert any("credentials dropped" in note for note in info["headers"]["log"])
    parameters, artifacts, logs = _run_records(state.state_details.flow_run_id)
    assert parameters["options"] == str(job_file)
    assert artifacts  # the summary artifact was read
    assert logs
    written = [p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    for text in [json.dumps(parameters), *artifacts, *logs]:
        assert not any(canary in text for canary in CANARIES)
    for data in written:
        assert not any(canary.encode() in data for canary in CANARIES)


def test_a_missing_signal_fails_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"cannot read .*nope\.h5: no such file"):
        mr_reconstruction(signal=str(tmp_path / "nope.h5"), output=str(out))
    assert not out.exists()


def test_no_signal_at_all_says_what_is_expected():
    with pytest.raises(InputError, match="no signal given: pass `signal` or an MR Optimum job"):
        mr_reconstruction()


def test_siemens_twix_example_runs_end_to_end(twix_example, tmp_path):
    """Real scanner data: twixtools' VE11 GRE, 2 coils, 2x oversampled, no noise scan.

    The noise comes from the readout-oversampling margins: the median AC-B1 SNR is about 13
    (it was 2e-5 with Psi = I, in raw ADC units).
    """
    result = mr_reconstruction(
        signal=str(twix_example),
        options={"method": "ac", "recon": "b1", "mask": "reference"},
        output=str(tmp_path / "out"),
    )
    snr = nib.load(result.snr)
    assert snr.shape == (160, 160, 1)
    assert np.isfinite(snr.get_fdata()).all()
    assert 5 < result.median_snr < 50
    info = json.loads(Path(result.info).read_text())
    assert info["sciflow"]["header"]["format"] == "twix"
    noise = info["sciflow"]["noise"]
    assert (noise["source"], noise["samples"], noise["convention"]) == (
        "readout margins",
        6400,
        "physical",
    )


def test_twix_example_under_mroptimum_keeps_the_identity_and_warns(twix_example, tmp_path, caplog):
    result = mr_reconstruction(
        signal=str(twix_example),
        options={"method": "ac", "recon": "b1", "mask": "reference", "convention": "mroptimum"},
        output=str(tmp_path / "out"),
    )
    assert result.median_snr < 1e-3  # raw ADC units, as MR Optimum without noise
    info = json.loads(Path(result.info).read_text())
    assert info["sciflow"]["noise"]["source"] == "identity (mroptimum)"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("noise: identity (mroptimum)" in m and "raw ADC units" in m for m in warnings)


def test_mrd_without_a_noise_scan_takes_the_background_or_is_refused(phantom, tmp_path):
    # Four 6 x 6 corners per 48 x 48 slice: two slices give 288 samples, too few.
    signal, _ = phantom_acquisition(phantom, slices=8, noise_samples=16, seed=21)
    few = write_mrd(tmp_path / "few.h5", signal[:, :, :, :2], fov_mm=FOV_MM, dwell_s=DWELL_S)
    with pytest.raises(InputError, match=r"no signal-free samples.*pass noise="):
        mr_reconstruction(signal=str(few), options={"method": "ac", "recon": "b1"})
    # Eight slices give 1,152: the SNR is in noise units and matches the closed form.
    plain = write_mrd(tmp_path / "plain.h5", signal, fov_mm=FOV_MM, dwell_s=DWELL_S)
    result = mr_reconstruction(
        signal=str(plain), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "out")
    )
    info = json.loads(Path(result.info).read_text())
    assert (info["sciflow"]["noise"]["source"], info["sciflow"]["noise"]["samples"]) == (
        "background",
        1152,
    )
    snr = nib.load(result.snr).get_fdata()
    inside = phantom.support
    ratio = np.median(snr[..., 0][inside] / phantom.snr_optimal()[inside])
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_flip_angle_correction_divides_the_snr_by_the_sine(mrd_file, tmp_path):
    angles = np.full((48, 48, 2), 30.0, dtype=np.float32)
    nib.save(nib.Nifti1Image(angles, np.eye(4)), tmp_path / "fa.nii.gz")
    plain = mr_reconstruction(
        signal=str(mrd_file), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "a")
    )
    corrected = mr_reconstruction(
        signal=str(mrd_file),
        options={
            "method": "ac",
            "recon": "b1",
            "flip_angle_correction": True,
            "flip_angle_map": str(tmp_path / "fa.nii.gz"),
        },
        output=str(tmp_path / "b"),
    )
    ratio = nib.load(corrected.snr).get_fdata() / nib.load(plain.snr).get_fdata()
    assert np.nanmedian(ratio) == pytest.approx(2.0, rel=1e-5)  # 1 / sin(30 deg)


# --- 3-D Cartesian ---------------------------------------------------------------------------

VOLUME = (8, 32, 32)  # (x, y, z)
VOLUME_FOV_MM = (160.0, 200.0, 100.0)


def _volume_phantom():
    """An ellipsoid in 8 coils on a ring around the (y, z) plane, with correlated noise.

    Returns the coil images (x, y, z, coils), the noise covariance, the closed-form SNR
    ``|m| sqrt(2 s^H Psi^-1 s)`` and the object's support, both (x, y, z).
    """
    from tasks.mr.phantom import coil_sensitivities, correlated_covariance

    nx, ny, nz = VOLUME
    coils = 8
    rng = np.random.default_rng(11)
    x = np.linspace(-1, 1, nx)[:, None, None]
    y = np.linspace(-1, 1, ny)[None, :, None]
    z = np.linspace(-1, 1, nz)[None, None, :]
    support = (x / 0.9) ** 2 + y**2 + z**2 < 0.7**2
    image = np.where(support, 60.0 * np.exp(0.3j), 0)
    sens = coil_sensitivities(ny, nz, coils)[None] * (1 + 0.2 * x)[..., None]
    cov = correlated_covariance(coils, 0.3, rng)
    quad = np.einsum("xyzi,ij,xyzj->xyz", sens.conj(), np.linalg.inv(cov), sens).real
    truth = np.abs(image) * np.sqrt(2 * quad)
    return image[..., None] * sens, cov, truth, support


def _kspace(images: np.ndarray) -> np.ndarray:
    """Centred orthonormal 3-D FFT of coil images (x, y, z, coils)."""
    import scipy.fft

    axes = (0, 1, 2)
    return scipy.fft.fftshift(
        scipy.fft.fftn(scipy.fft.ifftshift(images, axes=axes), axes=axes, norm="ortho"), axes=axes
    )


@pytest.fixture(scope="module")
def phantom_3d():
    """The volume phantom acquired as one slab.

    Returns the noisy k-space (x, y, z, coils, 1), a noise scan, and the closed-form SNR with
    the object's support, both (x, y, z).
    """
    from tasks.mr.phantom import complex_noise

    images, cov, truth, support = _volume_phantom()
    rng = np.random.default_rng(12)
    signal = _kspace(images) + complex_noise(images.shape, cov, rng)
    noise = complex_noise((VOLUME[1] * 600, images.shape[-1]), cov, rng)
    return signal[..., None], noise, truth, support


@pytest.fixture(scope="module")
def mrd_3d(tmp_path_factory, phantom_3d) -> Path:
    signal, noise, _, _ = phantom_3d
    path = tmp_path_factory.mktemp("volume") / "volume.h5"
    return write_mrd(path, signal, noise, fov_mm=VOLUME_FOV_MM, dwell_s=DWELL_S, volume=True)


def test_3d_volume_b1_matches_the_closed_form(mrd_3d, phantom_3d, tmp_path):
    _, _, truth, support = phantom_3d
    result = mr_reconstruction(
        signal=str(mrd_3d), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "b1")
    )
    image = nib.load(result.snr)
    snr = image.get_fdata()
    assert snr.shape == VOLUME  # written as (x, y, z), not the per-slice (y, z, x)
    ratio = np.median(snr[support] / truth[support])
    assert ratio == pytest.approx(1.0, abs=0.03)
    # Voxel sizes from the header: readout and phase (LPS -> RAS flips), partitions.
    np.testing.assert_allclose(np.diag(image.affine)[:3], [-20.0, -6.25, 100.0 / 32], rtol=1e-5)
    info = json.loads(Path(result.info).read_text())
    assert info["sciflow"]["header"]["partitions"] == 32


def test_3d_sense_with_2d_acceleration_divides_the_snr_by_g_sqrt_r(mrd_3d, phantom_3d, tmp_path):
    _, _, truth, support = phantom_3d
    full = mr_reconstruction(
        signal=str(mrd_3d), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "full")
    )
    accel = mr_reconstruction(
        signal=str(mrd_3d),
        options={
            "method": "ac",
            "recon": "sense",
            "acceleration": (2, 2),  # (R_y, R_z) of the (y, z) planes
            "decimate": True,
            "gfactor": True,
        },
        output=str(tmp_path / "sense"),
    )
    snr_full = nib.load(full.snr).get_fdata()
    snr_accel = nib.load(accel.snr).get_fdata()
    g = nib.load(str(Path(accel.snr).with_name("G.nii.gz"))).get_fdata()
    assert snr_accel.shape == g.shape == VOLUME
    assert g[support].min() >= 1 - 1e-5
    assert np.mean(g[support]) > 1.05  # 4-fold in 8 coils costs something
    ratio = snr_accel[support] * g[support] * 2 / snr_full[support]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    assert np.median(snr_accel[support] * g[support] * 2 / truth[support]) == pytest.approx(
        1.0, abs=0.05
    )
    assert accel.mean_g == pytest.approx(np.mean(g), rel=1e-4)


def test_3d_undersampled_file_takes_r_and_the_calibration_block_from_its_header(
    phantom_3d, tmp_path
):
    signal, noise, truth, support = phantom_3d
    path = write_mrd(
        tmp_path / "accelerated.h5",
        signal,
        noise,
        fov_mm=VOLUME_FOV_MM,
        dwell_s=DWELL_S,
        volume=True,
        acceleration=(2, 2),
        acs=(16, 16),
    )
    result = mr_reconstruction(
        signal=str(path),
        options={"method": "ac", "recon": "sense", "gfactor": True},
        output=str(tmp_path / "out"),
    )
    info = json.loads(Path(result.info).read_text())
    assert info["sciflow"]["acceleration"] == [2, 2]
    assert info["sciflow"]["acl"] == [16, 16]
    snr = nib.load(result.snr).get_fdata()
    g = nib.load(str(Path(result.snr).with_name("G.nii.gz"))).get_fdata()
    assert g[support].min() >= 1 - 1e-5
    assert np.median(snr[support] * g[support] * 2 / truth[support]) == pytest.approx(1.0, abs=0.05)


def test_3d_grappa_fills_both_phase_encoding_axes_as_pseudo_replicas_agree(phantom_3d, tmp_path):
    signal, noise, truth, support = phantom_3d
    path = write_mrd(
        tmp_path / "accelerated.h5",
        signal,
        noise,
        fov_mm=VOLUME_FOV_MM,
        dwell_s=DWELL_S,
        volume=True,
        acceleration=(2, 2),
        acs=(16, 16),
    )
    common = {"recon": "grappa", "gfactor": True}
    runs = {
        method: mr_reconstruction(
            signal=str(path), options={**common, **options}, output=str(tmp_path / method)
        )
        for method, options in (
            ("ac", {"method": "ac"}),
            ("pmr", {"method": "pmr", "replicas": 200}),
        )
    }
    maps = {}
    for method, result in runs.items():
        snr = nib.load(result.snr).get_fdata()
        g = nib.load(str(Path(result.snr).with_name("G.nii.gz"))).get_fdata()
        maps[method] = (snr[support], g[support])
    info = json.loads(Path(runs["ac"].info).read_text())
    assert info["sciflow"]["acceleration"] == [2, 2]
    snr, g = maps["ac"]
    assert np.median(g) > 1.05  # 4-fold in 8 coils, along y and z
    # Primer section 5 at N = 200: ROI means within 2% (SNR, and pseudo-replica vs analytic g).
    for k in (0, 1):
        assert np.mean(maps["pmr"][k]) == pytest.approx(np.mean(maps["ac"][k]), rel=0.02)
    # GRAPPA + RSS at high SNR: SNR g sqrt(R) is the unaccelerated optimum.
    assert np.median(snr * g * 2 / truth[support]) == pytest.approx(1.0, abs=0.05)


def test_3d_twix_b1_matches_the_closed_form(phantom_3d, tmp_path):
    from tests.mr.io.helpers import write_twix

    signal, noise, truth, support = phantom_3d
    # The noise scan as AdjCoilSens readouts of 16 samples (coils, samples) each.
    readouts = noise[: 16 * 1000].reshape(1000, 16, -1).transpose(0, 2, 1)
    path = write_twix(tmp_path / "volume.dat", signal, readouts, volume=True, oversampling=1.0)
    result = mr_reconstruction(
        signal=str(path), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "b1")
    )
    snr = nib.load(result.snr).get_fdata()
    assert snr.shape == VOLUME
    assert np.median(snr[support] / truth[support]) == pytest.approx(1.0, abs=0.03)
    info = json.loads(Path(result.info).read_text())
    assert info["sciflow"]["header"]["format"] == "twix"
    assert info["sciflow"]["header"]["partitions"] == VOLUME[2]


def test_two_contiguous_slabs_stack_into_one_volume_that_matches_the_closed_form(tmp_path):
    from tasks.mr.phantom import complex_noise

    images, cov, truth, support = _volume_phantom()
    rng = np.random.default_rng(14)
    half = VOLUME[2] // 2  # each slab is its own 3-D encoding of half the partitions
    kspace = np.concatenate([_kspace(images[:, :, :half]), _kspace(images[:, :, half:])], axis=2)
    signal = kspace + complex_noise(kspace.shape, cov, rng)
    noise = complex_noise((VOLUME[1] * 600, images.shape[-1]), cov, rng)
    fov = (VOLUME_FOV_MM[0], VOLUME_FOV_MM[1], VOLUME_FOV_MM[2] / 2)
    path = write_mrd(
        tmp_path / "slabs.h5",
        signal[..., None],
        noise,
        fov_mm=fov,
        dwell_s=DWELL_S,
        volume=True,
        slabs=2,
        positions_mm=np.array([[0.0, 0.0, -fov[2] / 2], [0.0, 0.0, fov[2] / 2]]),
    )
    result = mr_reconstruction(
        signal=str(path), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "b1")
    )
    image = nib.load(result.snr)
    snr = image.get_fdata()
    assert snr.shape == VOLUME
    for slab in (slice(0, half), slice(half, None)):
        ratio = np.median(
            snr[:, :, slab][support[:, :, slab]] / truth[:, :, slab][support[:, :, slab]]
        )
        assert ratio == pytest.approx(1.0, abs=0.03)
    np.testing.assert_allclose(np.diag(image.affine)[:3], [-20.0, -6.25, 100.0 / 32], rtol=1e-5)
    # The first partition of slab 0 sits half a slab below its centre.
    np.testing.assert_allclose(image.affine[2, 3], -fov[2] / 2 - (half // 2) * 100.0 / 32)
    info = json.loads(Path(result.info).read_text())
    assert info["sciflow"]["header"]["slabs"] == 2


# --- a separately acquired reference scan (MRD calibration-only readouts) -----------------


@pytest.fixture(scope="module")
def mrd_with_reference_scan(tmp_path_factory, phantom) -> Path:
    """R = 2 along y, the 24 central lines acquired again as calibration-only readouts.

    The reference scan carries its own noise: it is another acquisition of the same object.
    """
    signal, noise = phantom_acquisition(phantom, noise_samples=48 * 400, seed=12)
    reference, _ = phantom_acquisition(phantom, noise_samples=1, seed=13)
    path = tmp_path_factory.mktemp("refscan") / "refscan.h5"
    return write_mrd(
        path,
        signal,
        noise,
        fov_mm=FOV_MM,
        dwell_s=DWELL_S,
        acceleration=(2, 1),
        acs=(24, 1),
        reference=reference[..., 0],
    )


def test_a_reference_scan_gives_sense_its_maps_and_the_closed_form_g(
    mrd_with_reference_scan, phantom, tmp_path
):
    from tasks.mr.noise import prewhitening_matrix
    from tasks.mr.recon import sense_unmixing

    result = mr_reconstruction(
        signal=str(mrd_with_reference_scan),
        options={"method": "ac", "recon": "sense", "gfactor": True},
        output=str(tmp_path / "sense"),
    )
    info = json.loads(Path(result.info).read_text())
    assert info["sciflow"]["acceleration"] == [1, 2]
    assert info["sciflow"]["acl"] == [None, 24]
    assert info["sciflow"]["extra"]["reference"] == "given"
    snr = nib.load(result.snr).get_fdata()[..., 0]
    g = nib.load(str(Path(result.snr).with_name("G.nii.gz"))).get_fdata()[..., 0]
    # Closed form: SENSE g of the true, prewhitened sensitivities (Pruessmann 1999).
    whitened = phantom.sensitivities @ prewhitening_matrix(phantom.noise_cov).T
    _, g_true, _ = sense_unmixing(whitened, (1, 2))
    inside = phantom.support
    assert np.median(g[inside] / g_true[inside]) == pytest.approx(1.0, abs=0.03)
    truth = phantom.snr_optimal()
    ratio = np.median(snr[inside] * g[inside] * np.sqrt(2) / truth[inside])
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_a_reference_scan_calibrates_grappa_as_pseudo_replicas_agree(
    mrd_with_reference_scan, phantom, tmp_path
):
    # The signal holds only every other line: GRAPPA can only calibrate on the reference scan.
    common = {"recon": "grappa", "gfactor": True}
    ac = mr_reconstruction(
        signal=str(mrd_with_reference_scan),
        options={"method": "ac", **common},
        output=str(tmp_path / "ac"),
    )
    pmr = mr_reconstruction(
        signal=str(mrd_with_reference_scan),
        options={"method": "pmr", "replicas": 200, **common},
        output=str(tmp_path / "pmr"),
    )
    inside = phantom.support
    maps = {}
    for name, result in (("ac", ac), ("pmr", pmr)):
        snr = nib.load(result.snr).get_fdata()[..., 0]
        g = nib.load(str(Path(result.snr).with_name("G.nii.gz"))).get_fdata()[..., 0]
        maps[name] = (snr, g)
    # Primer section 5 at N = 200: ROI means within 2% (SNR, and pseudo-replica vs analytic g).
    for k in (0, 1):
        assert np.mean(maps["pmr"][k][inside]) == pytest.approx(
            np.mean(maps["ac"][k][inside]), rel=0.02
        )
    assert np.median(maps["ac"][1][inside]) > 1.0


def test_numpy_replicas_layout_feeds_multiple_replicas(tmp_path, phantom):
    signal, noise = phantom_acquisition(phantom, replicas=40, noise_samples=48 * 200, seed=9)
    np.save(tmp_path / "replicas.npy", signal[:, :, :, 0, :])  # MR Optimum's (x, y, c, replicas)
    np.save(tmp_path / "noise.npy", noise)
    result = mr_reconstruction(
        signal=str(tmp_path / "replicas.npy"),
        noise=str(tmp_path / "noise.npy"),
        options={"method": "mr", "recon": "b1", "layout": "replicas"},
        output=str(tmp_path / "out"),
    )
    snr = nib.load(result.snr).get_fdata()[..., 0]
    ratio = np.median(snr[phantom.support] / phantom.snr_optimal()[phantom.support])
    # 40 replicas: ~11% per pixel, well under 1% on the ROI median; bias ~3/(4N) high.
    assert ratio == pytest.approx(1.0, abs=0.05)


def test_a_slice_batch_tasks_peak_memory_does_not_grow_with_the_file(tmp_path):
    import tracemalloc

    from blocks.compute_unit import local_unit
    from flows.mr_reconstruction import SharedSlices, snr_for_slices
    from tasks.compute.run_context import RunContext
    from tasks.mr.io import read_info
    from tasks.mr.io.slices import slice_source
    from tasks.mr.options import MrOptions
    from tasks.storage.objects import ObjectStore

    run = RunContext(unit=local_unit(), run_id="r", flow="f", store=ObjectStore())

    rng = np.random.default_rng(8)
    peaks = {}
    for count in (4, 32):
        shape = (256, 16, 16, count, 1)
        kspace = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        path = write_mrd(tmp_path / f"s{count}.h5", kspace, fov_mm=FOV_MM, dwell_s=DWELL_S)
        info, _ = read_info(path)
        source = slice_source(path, tmp_path / "staged")
        options = MrOptions(method="ac", recon="rss")
        tracemalloc.start()
        try:
            shared = SharedSlices(str(source.path), source)
            snr_for_slices.fn(shared, [0, 1, 2, 3], np.eye(16), options, info, run)
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[32] < 1.5 * peaks[4]


def _aws_run(tmp_path):
    import boto3

    from blocks.compute_unit import ComputeUnit
    from tasks.compute.run_context import RunContext

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="lab")
    unit = ComputeUnit(name="lab", platform="aws", region="us-east-1", storage_root="s3://lab/runs")
    return RunContext(unit=unit, run_id="r1", flow="mr-reconstruction", store=unit.object_store())


def test_on_aws_workers_read_an_s3_input_that_reads_by_slice_where_it_is(aws, mrd_file, tmp_path):
    from flows.mr_reconstruction import local_slices, stage_slices

    run = _aws_run(tmp_path)
    run.store.upload_file(mrd_file, "s3://lab/in/phantom.h5")
    shared = stage_slices.fn("s3://lab/in/phantom.h5", str(mrd_file), None, "slices", run)
    assert shared.uri == "s3://lab/in/phantom.h5"
    on_worker = local_slices(shared, run)
    assert on_worker.path != mrd_file
    assert on_worker.path.read_bytes() == mrd_file.read_bytes()


def test_on_aws_a_staged_copy_goes_to_the_run_directory_not_only_this_disk(aws, phantom, tmp_path):
    from flows.mr_reconstruction import local_slices, stage_slices
    from tasks.mr.io.slices import read_slices

    signal, _ = phantom_acquisition(phantom, slices=2, noise_samples=48, seed=6)
    np.savez(tmp_path / "signal.npz", kspace=signal)  # an .npz member cannot be read by slice
    run = _aws_run(tmp_path)
    shared = stage_slices.fn(
        str(tmp_path / "signal.npz"), str(tmp_path / "signal.npz"), "kspace", "slices", run
    )
    assert shared.uri.startswith("s3://lab/runs/lab/r1/staged/")
    assert run.store.exists(shared.uri)
    shared.source.path.unlink()  # the flow host's copy: a worker must not need it
    np.testing.assert_array_equal(read_slices(local_slices(shared, run), [1]), signal[:, :, :, [1]])


def test_on_aws_a_staged_reference_scan_reaches_the_workers_too(aws, tmp_path):
    from flows.mr_reconstruction import local_slices, stage_slices
    from tasks.mr.io import read_raw
    from tasks.mr.io.slices import read_reference, read_slices

    rng = np.random.default_rng(15)
    shape = (8, 12, 6, 2, 1)  # a 3-D volume is staged, and so is its reference scan
    volume = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    path = write_mrd(
        tmp_path / "volume.h5",
        volume,
        fov_mm=FOV_MM,
        dwell_s=DWELL_S,
        volume=True,
        acceleration=(2, 1),
        acs=(4, 6),
        reference=volume[..., 0],
    )
    run = _aws_run(tmp_path)
    shared = stage_slices.fn(str(path), str(path), None, "slices", run)
    assert shared.reference_uri is not None
    assert shared.reference_uri.startswith("s3://lab/runs/lab/r1/staged/")
    assert run.store.exists(shared.reference_uri)
    for staged in (shared.source.path, shared.source.reference):
        staged.unlink()  # the flow host's copies: a worker must not need them
    raw = read_raw(path)
    on_worker = local_slices(shared, run)
    np.testing.assert_array_equal(read_slices(on_worker, [3]), raw.signal[:, :, :, [3]])
    np.testing.assert_array_equal(read_reference(on_worker, [3]), raw.reference[:, :, :, [3]])


def test_signal_and_noise_sharing_a_basename_in_two_prefixes_stay_two_files(aws, tmp_path, phantom):
    import boto3

    signal, noise = phantom_acquisition(phantom, slices=1, noise_samples=48 * 200, seed=7)
    np.save(tmp_path / "signal.npy", signal[..., 0, 0])
    np.save(tmp_path / "noise.npy", noise)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="scans")
    s3.upload_file(str(tmp_path / "signal.npy"), "scans", "signal/scan.npy")
    s3.upload_file(str(tmp_path / "noise.npy"), "scans", "noise/scan.npy")
    options = {"method": "ac", "recon": "rss"}

    same_name = mr_reconstruction(
        signal="s3://scans/signal/scan.npy",
        noise="s3://scans/noise/scan.npy",
        options=options,
        output=str(tmp_path / "same-name"),
    )
    distinct = mr_reconstruction(
        signal=str(tmp_path / "signal.npy"),
        noise=str(tmp_path / "noise.npy"),
        options=options,
        output=str(tmp_path / "distinct"),
    )

    np.testing.assert_array_equal(
        nib.load(same_name.snr).get_fdata(), nib.load(distinct.snr).get_fdata()
    )
