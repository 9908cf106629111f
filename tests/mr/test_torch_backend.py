"""The torch path of ``snr_map`` (``SnrSpec.device``), on torch's CPU and, when present, CUDA.

``device="torch-cpu"`` runs exactly the code ``device="cuda"`` runs, on the CPU, so these tests
cover the GPU path's numerics on machines without a GPU; the ``cuda`` tests skip with a reason.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.phantom import make_phantom
from tasks.mr.snr import ReconSpec, SnrSpec, snr_map

torch = pytest.importorskip("torch", reason="torch is not installed: the torch path is untested")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(
    not CUDA, reason="torch.cuda.is_available() is False (CPU-only torch or no GPU)"
)
RSS, B1 = ReconSpec(recon="rss"), ReconSpec(recon="b1")


def roi_tolerance(replicas: int, pixels: int) -> float:
    """Primer section 5: MR or PMR vs AC, ROI mean over M pixels."""
    return max(0.01, 3 / np.sqrt(2 * (replicas - 1) * pixels)) + 1 / (4 * replicas)


def rel_max(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def test_importing_the_numerics_does_not_import_torch():
    code = (
        "import sys, tasks.mr.snr, tasks.mr.torch_backend, tasks.mr.options; "
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
    ],
    ids=["rss", "b1", "b1-mask", "b1-inneracl", "b1-decimate"],
)
def test_ac_on_torch_matches_the_numpy_path(phantom, recon, dtype, rtol):
    kspace = phantom.kspace.astype(dtype)
    ours = snr_map(kspace, phantom.noise_cov, recon, SnrSpec(method="ac", device="torch-cpu"))
    numpy = snr_map(kspace, phantom.noise_cov, recon, SnrSpec(method="ac"))
    assert ours.snr.dtype == numpy.snr.dtype
    assert rel_max(ours.snr, numpy.snr) < rtol
    if recon.recon == "b1":
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


@pytest.mark.parametrize(
    ("recon", "spec"),
    [
        (ReconSpec(recon="sense", acceleration=(1, 2), decimate=True), SnrSpec(method="ac")),
        (ReconSpec(recon="grappa", acceleration=(1, 2), decimate=True), SnrSpec(method="pmr")),
        (RSS, SnrSpec(method="mr")),
    ],
    ids=["sense", "grappa", "mr"],
)
def test_the_torch_path_rejects_what_it_does_not_cover(phantom, recon, spec):
    spec = SnrSpec(**{**_fields(spec), "device": "torch-cpu"})
    kspace = phantom.kspace[..., None].repeat(2, -1) if spec.method == "mr" else phantom.kspace
    with pytest.raises(InputError, match="device='torch-cpu' supports recon"):
        snr_map(kspace, phantom.noise_cov, recon, spec)


def test_an_unknown_device_is_rejected():
    with pytest.raises(InputError, match="device='tpu' is unknown"):
        SnrSpec(device="tpu")  # type: ignore[arg-type]


@pytest.mark.skipif(CUDA, reason="CUDA is available: this checks the error without one")
def test_cuda_without_a_gpu_gives_one_clear_error(phantom):
    with pytest.raises(InputError, match="device='cuda' but torch sees no CUDA device"):
        snr_map(phantom.kspace, phantom.noise_cov, B1, SnrSpec(device="cuda"))


@needs_cuda
@pytest.mark.parametrize("recon", [RSS, B1, ReconSpec(recon="b1", mask="reference")])
def test_ac_on_cuda_matches_the_numpy_path_in_complex64(phantom, recon):
    kspace = phantom.kspace.astype(np.complex64)
    ours = snr_map(kspace, phantom.noise_cov, recon, SnrSpec(device="cuda"))
    numpy = snr_map(kspace, phantom.noise_cov, recon, SnrSpec())
    assert rel_max(ours.snr, numpy.snr) < 1e-5
    assert ours.info["device"] == "cuda"


@needs_cuda
@pytest.mark.parametrize("recon", [RSS, B1], ids=["rss", "b1"])
def test_pmr_on_cuda_agrees_with_ac_within_the_roi_tolerance(phantom, recon):
    replicas = 400
    kspace = phantom.kspace.astype(np.complex64)
    spec = SnrSpec(method="pmr", replicas=replicas, device="cuda", batch=64)
    ours = snr_map(kspace, phantom.noise_cov, recon, spec)
    truth = snr_map(kspace, phantom.noise_cov, recon).snr
    roi = phantom.support
    tolerance = roi_tolerance(replicas, int(roi.sum()))
    assert abs(ours.snr[roi].mean() / truth[roi].mean() - 1) < tolerance


def _fields(spec: SnrSpec) -> dict:
    return {name: getattr(spec, name) for name in SnrSpec.__slots__}
