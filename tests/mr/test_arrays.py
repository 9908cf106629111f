"""``snr_map`` on torch (``SnrSpec.device``): torch's CPU and, when present, CUDA.

``device="torch-cpu"`` runs exactly the code ``device="cuda"`` runs, on the CPU, so these tests
cover the GPU path's numerics on machines without a GPU; the ``cuda`` tests skip with a reason.
Deterministic outputs (AC, MR, analytic g) match the NumPy path to rounding; PMR and CR draw
torch's own pseudo-noise, so they agree in their statistics.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.phantom import complex_noise, make_phantom
from tasks.mr.snr import ReconSpec, SnrSpec, snr_map

torch = pytest.importorskip("torch", reason="torch is not installed: the torch path is untested")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="torch.cuda.is_available() is False (CPU-only torch or no GPU)"
)
RSS, B1 = ReconSpec(recon="rss"), ReconSpec(recon="b1")
SENSE_R2 = ReconSpec(recon="sense", acceleration=(1, 2), decimate=True, acl=(None, 16))


def roi_tolerance(replicas: int, pixels: int) -> float:
    """Primer section 5: MR or PMR vs AC, ROI mean over M pixels."""
    return max(0.01, 3 / np.sqrt(2 * (replicas - 1) * pixels)) + 1 / (4 * replicas)


def rel_max(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def test_importing_the_numerics_does_not_import_torch():
    code = (
        "import sys, tasks.mr.snr, tasks.mr.arrays, tasks.mr.options; "
        "assert 'torch' not in sys.modules, 'torch imported at module level'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("dtype", "rtol"), [(np.complex128, 1e-10), (np.complex64, 1e-5)])
@pytest.mark.parametrize(
    "recon",
    [
        RSS,
        B1,
        ReconSpec(recon="b1", mask="reference"),
        ReconSpec(recon="b1", sensitivity="inneracl", acl=(None, 16)),
        ReconSpec(recon="b1", decimate=True, acl=(None, 16), mask="percentage", mask_value=10),
        SENSE_R2,
        ReconSpec(recon="sense", acceleration=(1, 2), decimate=True, sensitivity="espirit"),
    ],
    ids=["rss", "b1", "b1-mask", "b1-inneracl", "b1-decimate", "sense", "sense-espirit"],
)
def test_ac_on_torch_matches_the_numpy_path(phantom, recon, dtype, rtol):
    kspace = phantom.kspace.astype(dtype)
    spec = SnrSpec(method="ac", gfactor=True)
    ours = snr_map(
        kspace, phantom.noise_cov, recon, SnrSpec(**{**_fields(spec), "device": "torch-cpu"})
    )
    numpy = snr_map(kspace, phantom.noise_cov, recon, spec)
    assert ours.snr.dtype == numpy.snr.dtype
    assert rel_max(ours.snr, numpy.snr) < rtol
    if recon.recon == "sense":
        inside = phantom.support
        assert ours.g.dtype == numpy.g.dtype
        assert rel_max(ours.g[inside], numpy.g[inside]) < rtol
    if recon.recon in ("b1", "sense"):
        # Outside the object the noiseless images are rounding noise, so are the maps there.
        inside = phantom.support
        assert rel_max(ours.sensitivities[inside], numpy.sensitivities[inside]) < rtol
        np.testing.assert_array_equal(ours.mask, numpy.mask)
    assert ours.info["device"] == "torch-cpu"
    assert ours.info["device_name"] == "torch-cpu"


def test_ac_on_torch_equals_snr_opt_on_the_noiseless_phantom(phantom):
    truth = phantom.snr_optimal()
    inside = phantom.support
    for recon in (RSS, B1):
        maps = snr_map(phantom.kspace, phantom.noise_cov, recon, SnrSpec(device="torch-cpu"))
        np.testing.assert_allclose(maps.snr[inside], truth[inside], rtol=1e-10)


@pytest.mark.parametrize("recon", [RSS, B1], ids=["rss", "b1"])
@pytest.mark.parametrize("convention", ["physical", "mroptimum"])
def test_pmr_on_torch_agrees_with_ac_and_numpy_pmr_within_the_roi_tolerance(
    phantom, recon, convention
):
    replicas = 400
    spec = SnrSpec(method="pmr", replicas=replicas, convention=convention, seed=2)
    ours = snr_map(
        phantom.kspace,
        phantom.noise_cov,
        recon,
        SnrSpec(**{**_fields(spec), "device": "torch-cpu"}),
    )
    numpy = snr_map(phantom.kspace, phantom.noise_cov, recon, spec)
    truth = snr_map(phantom.kspace, phantom.noise_cov, recon).snr
    roi = phantom.support
    tolerance = roi_tolerance(replicas, int(roi.sum()))
    assert abs(ours.snr[roi].mean() / truth[roi].mean() - 1) < tolerance
    # Two independent estimates: their difference has sqrt(2) times one's spread.
    assert abs(ours.snr[roi].mean() / numpy.snr[roi].mean() - 1) < np.sqrt(2) * tolerance
    assert ours.info["replicas"] == replicas
    assert ours.info["seed"] == 2


def test_pmr_on_torch_depends_on_the_seed_but_not_the_batch(phantom):
    def run(**kwargs):
        spec = SnrSpec(method="pmr", replicas=10, device="torch-cpu", **kwargs)
        return snr_map(phantom.kspace, phantom.noise_cov, B1, spec).snr

    first = run(seed=1, batch=3)
    np.testing.assert_allclose(run(seed=1, batch=16), first, rtol=1e-12)
    assert not np.allclose(run(seed=2, batch=3), first)


def test_pmr_on_torch_streams_batches_and_reports_progress(phantom):
    calls = []
    spec = SnrSpec(method="pmr", replicas=10, batch=4, device="torch-cpu")
    snr_map(phantom.kspace, phantom.noise_cov, RSS, spec, lambda d, t: calls.append((d, t)))
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_cr_on_torch_agrees_with_the_numpy_cr():
    phantom = make_phantom(64, 64, 4, amplitude=50.0, correlation=0.3, seed=5)
    roi = phantom.support
    medians = []
    for device in ("cpu", "torch-cpu"):
        spec = SnrSpec(method="cr", replicas=50, box_size=3, device=device)
        maps = snr_map(phantom.kspace, phantom.noise_cov, B1, spec)
        medians.append(np.median(maps.snr[roi]))
    truth = np.median(phantom.snr_optimal()[roi])
    # Primer: CR vs truth within 5% (ROI); each side is an independent estimate.
    for median in medians:
        assert abs(median / truth - 1) < 0.07


@pytest.mark.parametrize("method", ["ac", "pmr"])
def test_the_torch_path_rejects_grappa(phantom, method):
    recon = ReconSpec(recon="grappa", acceleration=(1, 2), decimate=True)
    spec = SnrSpec(method=method, device="torch-cpu")
    with pytest.raises(
        InputError,
        match=r"device='torch-cpu' supports recon in \['rss', 'b1', 'sense'\]; got recon='grappa'",
    ):
        snr_map(phantom.kspace, phantom.noise_cov, recon, spec)


@pytest.mark.parametrize(("dtype", "rtol"), [(np.complex128, 1e-10), (np.complex64, 1e-4)])
@pytest.mark.parametrize("recon", [RSS, B1, SENSE_R2], ids=["rss", "b1", "sense"])
@pytest.mark.parametrize("convention", ["physical", "mroptimum"])
def test_mr_on_torch_matches_the_numpy_path(phantom, rng, recon, convention, dtype, rtol):
    # mean/std over 8 replicas amplifies a relative rounding e in |I| to about e * SNR in the
    # map: complex64's 1e-7 becomes ~1e-5 at SNR 50-100, hence 1e-4 there.
    kspace = noisy_replicas(phantom, 8, rng).astype(dtype)
    spec = SnrSpec(method="mr", convention=convention, batch=3, gfactor=True)
    ours = snr_map(
        kspace, phantom.noise_cov, recon, SnrSpec(**{**_fields(spec), "device": "torch-cpu"})
    )
    numpy = snr_map(kspace, phantom.noise_cov, recon, spec)
    assert ours.snr.dtype == numpy.snr.dtype
    assert rel_max(ours.snr, numpy.snr) < rtol
    assert ours.info["replicas"] == numpy.info["replicas"] == 8
    if recon.recon != "rss":
        np.testing.assert_array_equal(ours.mask, numpy.mask)
    if recon.recon == "sense":
        inside = phantom.support
        assert rel_max(ours.g[inside], numpy.g[inside]) < rtol


@pytest.mark.parametrize("convention", ["physical", "mroptimum"])
def test_pmr_sense_on_torch_agrees_with_ac_and_its_g_with_the_analytic_g(phantom, convention):
    replicas = 400
    spec = SnrSpec(method="pmr", replicas=replicas, convention=convention, gfactor=True, seed=2)
    ours = snr_map(
        phantom.kspace,
        phantom.noise_cov,
        SENSE_R2,
        SnrSpec(**{**_fields(spec), "device": "torch-cpu"}),
    )
    numpy = snr_map(phantom.kspace, phantom.noise_cov, SENSE_R2, spec)
    truth = snr_map(phantom.kspace, phantom.noise_cov, SENSE_R2, SnrSpec(gfactor=True))
    roi = phantom.support
    tolerance = roi_tolerance(replicas, int(roi.sum()))
    assert abs(ours.snr[roi].mean() / truth.snr[roi].mean() - 1) < tolerance
    assert abs(ours.snr[roi].mean() / numpy.snr[roi].mean() - 1) < np.sqrt(2) * tolerance
    # Pseudo-replica g (a ratio of two replica stds) against the analytic one, as on the CPU.
    assert ours.info["gfactor"] == numpy.info["gfactor"] == "pseudo-replica"
    assert abs(ours.g[roi].mean() / truth.g[roi].mean() - 1) < 2 * tolerance
    assert abs(numpy.g[roi].mean() / truth.g[roi].mean() - 1) < 2 * tolerance


def test_cr_sense_on_torch_agrees_with_the_numpy_cr():
    phantom = make_phantom(64, 64, 4, amplitude=50.0, correlation=0.3, seed=5)
    recon = ReconSpec(recon="sense", acceleration=(1, 2), decimate=True, acl=(None, 16))
    roi = phantom.support
    medians = []
    for device in ("cpu", "torch-cpu"):
        spec = SnrSpec(method="cr", replicas=50, box_size=3, device=device)
        medians.append(np.median(snr_map(phantom.kspace, phantom.noise_cov, recon, spec).snr[roi]))
    # SENSE's noise varies inside CR's box, so CR reads ~12% below AC on both paths (seeds 0-5
    # spread +-2%); the two independent estimates agree within sqrt(2) x 5%.
    assert abs(medians[1] / medians[0] - 1) < 0.07


def test_pmr_sense_on_torch_depends_on_the_seed_but_not_the_batch(phantom):
    def run(**kwargs):
        spec = SnrSpec(method="pmr", replicas=10, device="torch-cpu", gfactor=True, **kwargs)
        return snr_map(phantom.kspace, phantom.noise_cov, SENSE_R2, spec)

    first = run(seed=1, batch=3)
    again = run(seed=1, batch=16)
    np.testing.assert_allclose(again.snr, first.snr, rtol=1e-12)
    np.testing.assert_allclose(again.g, first.g, rtol=1e-12)
    assert not np.allclose(run(seed=2, batch=3).snr, first.snr)


def test_an_unknown_device_is_rejected():
    with pytest.raises(InputError, match="device='tpu' is unknown"):
        SnrSpec(device="tpu")  # type: ignore[arg-type]


@pytest.mark.skipif(CUDA, reason="CUDA is available: this checks the error without one")
def test_cuda_without_a_gpu_gives_one_clear_error(phantom):
    with pytest.raises(InputError, match="device='cuda' but torch sees no CUDA device"):
        snr_map(phantom.kspace, phantom.noise_cov, B1, SnrSpec(device="cuda"))


@needs_cuda
@pytest.mark.parametrize(
    "recon",
    [RSS, B1, ReconSpec(recon="b1", mask="reference"), SENSE_R2],
    ids=["rss", "b1", "b1-mask", "sense"],
)
def test_ac_on_cuda_matches_the_numpy_path_in_complex64(phantom, recon):
    kspace = phantom.kspace.astype(np.complex64)
    ours = snr_map(kspace, phantom.noise_cov, recon, SnrSpec(device="cuda"))
    numpy = snr_map(kspace, phantom.noise_cov, recon, SnrSpec())
    assert rel_max(ours.snr, numpy.snr) < 1e-5
    assert ours.info["device"] == "cuda"


@needs_cuda
@pytest.mark.parametrize("recon", [RSS, B1, SENSE_R2], ids=["rss", "b1", "sense"])
def test_pmr_on_cuda_agrees_with_ac_within_the_roi_tolerance(phantom, recon):
    replicas = 400
    kspace = phantom.kspace.astype(np.complex64)
    spec = SnrSpec(method="pmr", replicas=replicas, device="cuda", batch=64)
    ours = snr_map(kspace, phantom.noise_cov, recon, spec)
    truth = snr_map(kspace, phantom.noise_cov, recon).snr
    roi = phantom.support
    tolerance = roi_tolerance(replicas, int(roi.sum()))
    assert abs(ours.snr[roi].mean() / truth[roi].mean() - 1) < tolerance


@needs_cuda
@pytest.mark.parametrize("recon", [RSS, B1, SENSE_R2], ids=["rss", "b1", "sense"])
def test_mr_on_cuda_matches_the_numpy_path(phantom, rng, recon):
    kspace = noisy_replicas(phantom, 8, rng)
    ours = snr_map(kspace, phantom.noise_cov, recon, SnrSpec(method="mr", device="cuda"))
    numpy = snr_map(kspace, phantom.noise_cov, recon, SnrSpec(method="mr"))
    assert rel_max(ours.snr, numpy.snr) < 1e-10
    assert ours.info["device"] == "cuda"


@needs_cuda
def test_cr_on_cuda_agrees_with_the_numpy_cr():
    phantom = make_phantom(64, 64, 4, amplitude=50.0, correlation=0.3, seed=5)
    roi = phantom.support
    truth = np.median(phantom.snr_optimal()[roi])
    spec = SnrSpec(method="cr", replicas=50, box_size=3, device="cuda")
    maps = snr_map(phantom.kspace, phantom.noise_cov, B1, spec)
    assert abs(np.median(maps.snr[roi]) / truth - 1) < 0.07


def noisy_replicas(phantom, count: int, rng) -> np.ndarray:
    """Real replicas (x, y, coils, count) with the phantom's noise covariance."""
    noise = complex_noise((count, *phantom.kspace.shape), phantom.noise_cov, rng)
    return phantom.kspace[..., None] + np.moveaxis(noise, 0, -1)


def _fields(spec: SnrSpec) -> dict:
    return {name: getattr(spec, name) for name in SnrSpec.__slots__}
