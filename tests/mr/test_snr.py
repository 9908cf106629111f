import sys
import tracemalloc

import numpy as np
import pytest
import scipy.ndimage as ndi

from tasks.errors import InputError
from tasks.mr.fft import fft2c, ifft2c
from tasks.mr.phantom import complex_noise, make_phantom
from tasks.mr.recon import undersample
from tasks.mr.snr import ReconSpec, SnrSpec, box_std, snr_map

RSS, B1 = ReconSpec(recon="rss"), ReconSpec(recon="b1")
SENSE_R2 = ReconSpec(recon="sense", acceleration=(1, 2), decimate=True, acl=(None, 16))


def roi_tolerance(replicas: int, pixels: int) -> float:
    """Primer section 5: MR or PMR vs AC, ROI mean over M pixels.

    ``max(1%, 3/sqrt(2(N-1)M)) + 1/(4N)``. The mean/std estimator is biased high by about
    3/(4N) (E[1/s] ~ (1 + 3/(4N))/sigma), more than the 1/(4N) allowed, so the tests use
    N = 400, where that bias (0.19%) leaves > 4 standard errors of the ROI mean inside the bound.
    """
    return max(0.01, 3 / np.sqrt(2 * (replicas - 1) * pixels)) + 1 / (4 * replicas)


def relative_roi_error(estimate: np.ndarray, truth: np.ndarray, roi: np.ndarray) -> float:
    return abs(np.mean(estimate[roi]) / np.mean(truth[roi]) - 1)


def noisy_replicas(phantom, count: int, rng) -> np.ndarray:
    """Real replicas (x, y, coils, count) with the phantom's noise covariance."""
    noise = complex_noise((count, *phantom.kspace.shape), phantom.noise_cov, rng)
    return phantom.kspace[..., None] + np.moveaxis(noise, 0, -1)


def test_noiseless_phantom_gives_rss_and_b1_snr_within_1pct_of_the_closed_form(phantom):
    # The headline check: known coil maps and a known non-diagonal noise covariance.
    off_diagonal = phantom.noise_cov - np.diag(np.diag(phantom.noise_cov))
    assert np.abs(off_diagonal).max() > 0.1
    truth = phantom.snr_optimal()
    inside = phantom.support
    for recon in (RSS, B1):
        maps = snr_map(phantom.kspace, phantom.noise_cov, recon, SnrSpec(method="ac"))
        assert np.median(np.abs(maps.snr[inside] / truth[inside] - 1)) < 0.01


def test_ac_on_noiseless_kspace_with_exact_psi_equals_snr_opt(phantom):
    truth = phantom.snr_optimal()
    inside = phantom.support
    for recon in (RSS, B1):
        maps = snr_map(phantom.kspace, phantom.noise_cov, recon)
        # Primer section 5: AC on noise-free K with exact Psi = SNR_opt, rel 1e-10.
        np.testing.assert_allclose(maps.snr[inside], truth[inside], rtol=1e-10)
        assert maps.snr.dtype == np.float64


def test_ac_rss_on_noisy_data_follows_the_rss_bias_formula(rng):
    low = make_phantom(32, 32, 4, amplitude=3.0, seed=3)
    truth = low.snr_optimal()
    inside = low.support
    squares = [
        snr_map(
            low.kspace + complex_noise(low.kspace.shape, low.noise_cov, rng), low.noise_cov
        ).snr[inside]
        ** 2
        for _ in range(20)
    ]
    # Primer section 5: E[RSS^2] = SNR^2 + 2 Nc. Var(AC^2) = 4 (SNR^2 + Nc) per pixel; 4 sigma.
    expected = truth[inside] ** 2 + 2 * 4
    sigma = np.sqrt(np.mean(4 * (truth[inside] ** 2 + 4)) / (20 * inside.sum()))
    assert abs(np.mean(squares) - np.mean(expected)) < 4 * sigma
    assert np.mean(expected) - np.mean(truth[inside] ** 2) > 20 * sigma  # the bias is resolved


def test_b1_with_inner_maps_from_its_own_reference_equals_prewhitened_rss(phantom, rng):
    kspace = noisy_replicas(phantom, 1, rng)[..., 0]
    b1 = snr_map(kspace, phantom.noise_cov, ReconSpec(recon="b1", mask="reference"))
    rss = snr_map(kspace, phantom.noise_cov, RSS)
    # Primer section 5: B1(inner, self-reference) = prewhitened RSS, rel 1e-10 inside the mask.
    assert b1.mask is not None
    assert b1.mask.sum() > phantom.support.sum()
    np.testing.assert_allclose(b1.snr[b1.mask], rss.snr[b1.mask], rtol=1e-10)
    assert np.all(b1.snr[~b1.mask] == 0)


def test_sense_g_is_one_at_r1_and_at_least_one_at_r2(phantom):
    spec = SnrSpec(gfactor=True)
    r1 = snr_map(phantom.kspace, phantom.noise_cov, ReconSpec(recon="sense", decimate=True), spec)
    r2 = snr_map(phantom.kspace, phantom.noise_cov, SENSE_R2, spec)
    assert r1.g is not None
    assert r2.g is not None
    assert r2.inverse_g is not None
    # Primer section 5: g = 1 at R = 1 (1e-12); min g >= 1 - 1e-9.
    np.testing.assert_allclose(r1.g, 1, atol=1e-12)
    assert r2.g.min() >= 1 - 1e-9
    np.testing.assert_allclose(r2.inverse_g, 1 / r2.g, rtol=1e-12)
    assert r2.info["gfactor"] == "analytic"


def test_sense_snr_is_the_full_snr_over_g_sqrt_r(phantom):
    # Maps from the full noiseless reference span the data exactly, so both recons see the
    # same object and only the noise differs.
    zero_filled = undersample(phantom.kspace, 2)
    spec = SnrSpec(gfactor=True)
    full = snr_map(phantom.kspace, phantom.noise_cov, ReconSpec(recon="sense"), spec)
    accelerated = snr_map(
        zero_filled,
        phantom.noise_cov,
        ReconSpec(recon="sense", acceleration=(1, 2)),
        spec,
        reference=phantom.kspace,
    )
    inside = phantom.support
    assert accelerated.g is not None
    expected = full.snr / (accelerated.g * np.sqrt(2))
    # Primer section 5: deterministic, rel 1e-10.
    np.testing.assert_allclose(accelerated.snr[inside], expected[inside], rtol=1e-10)


@pytest.mark.parametrize("recon", [RSS, B1], ids=["rss", "b1"])
@pytest.mark.parametrize("convention", ["physical", "mroptimum"])
def test_multiple_replicas_match_ac_within_the_roi_tolerance(phantom, rng, recon, convention):
    replicas = 400
    kspace = noisy_replicas(phantom, replicas, rng)
    maps = snr_map(
        kspace, phantom.noise_cov, recon, SnrSpec(method="mr", convention=convention, batch=64)
    )
    truth = snr_map(phantom.kspace, phantom.noise_cov, recon).snr
    inside = phantom.support
    assert relative_roi_error(maps.snr, truth, inside) < roi_tolerance(replicas, inside.sum())
    assert maps.info["replicas"] == replicas


@pytest.mark.parametrize("recon", [RSS, B1, SENSE_R2], ids=["rss", "b1", "sense-R2"])
@pytest.mark.parametrize("convention", ["physical", "mroptimum"])
def test_pseudo_replicas_match_ac_within_the_roi_tolerance(phantom, recon, convention):
    replicas = 400
    spec = SnrSpec(method="pmr", replicas=replicas, convention=convention, batch=50, seed=7)
    maps = snr_map(phantom.kspace, phantom.noise_cov, recon, spec)
    truth = snr_map(phantom.kspace, phantom.noise_cov, recon).snr
    inside = phantom.support
    assert relative_roi_error(maps.snr, truth, inside) < roi_tolerance(replicas, inside.sum())


def test_pseudo_replica_g_matches_analytic_sense_g(phantom):
    replicas = 200
    spec = SnrSpec(method="pmr", replicas=replicas, gfactor=True, batch=50)
    pmr = snr_map(phantom.kspace, phantom.noise_cov, SENSE_R2, spec)
    analytic = snr_map(phantom.kspace, phantom.noise_cov, SENSE_R2, SnrSpec(gfactor=True))
    assert pmr.g is not None
    assert analytic.g is not None
    assert pmr.info["gfactor"] == "pseudo-replica"
    # Primer section 5: PMR g vs analytic g, 2% ROI at N >= 200.
    assert relative_roi_error(pmr.g, analytic.g, phantom.support) < 0.02


@pytest.fixture(scope="module")
def large_phantom():
    return make_phantom(128, 128, 4, amplitude=50.0, correlation=0.3, seed=3)


def test_cr_with_mr_optimum_semantics_reads_sqrt_n_over_n_minus_1_high(large_phantom):
    replicas, box = 20, 4
    spec = SnrSpec(method="cr", replicas=replicas, box_size=box, convention="mroptimum")
    maps = snr_map(large_phantom.kspace, large_phantom.noise_cov, RSS, spec)
    truth = large_phantom.snr_optimal() * np.sqrt(replicas / (replicas - 1))
    # Whole windows inside the object only; primer section 5: 5% ROI.
    roi = ndi.binary_erosion(large_phantom.support, iterations=box)
    assert relative_roi_error(maps.snr, truth, roi) < 0.05
    assert maps.info["box_size"] == box


def test_cr_physical_mode_corrects_the_last_replica_bias(large_phantom):
    spec = SnrSpec(method="cr", replicas=6, box_size=4, convention="physical")
    maps = snr_map(large_phantom.kspace, large_phantom.noise_cov, RSS, spec)
    roi = ndi.binary_erosion(large_phantom.support, iterations=4)
    # sqrt(6/5) = 1.095 would fail this 5% bound; the corrected mode removes it.
    assert relative_roi_error(maps.snr, large_phantom.snr_optimal(), roi) < 0.05


def test_cr_b1_with_mr_optimum_semantics_keeps_the_complex_reference(large_phantom):
    # MR Optimum subtracts the real mean from the complex last B1 replica, so the imaginary
    # noise joins the local std: CR-B1 reads truth / sqrt(2 - 1/N) (reading notes, section 1.7).
    replicas, box = 20, 4
    spec = SnrSpec(method="cr", replicas=replicas, box_size=box, convention="mroptimum")
    maps = snr_map(large_phantom.kspace, large_phantom.noise_cov, B1, spec)
    truth = large_phantom.snr_optimal() / np.sqrt(2 - 1 / replicas)
    roi = ndi.binary_erosion(large_phantom.support, iterations=box)
    assert relative_roi_error(maps.snr, truth, roi) < 0.05


def test_pmr_with_mr_optimum_semantics_divides_a_noisy_last_replica(phantom):
    spec = {"method": "pmr", "replicas": 50, "seed": 4}
    physical = snr_map(phantom.kspace, phantom.noise_cov, B1, SnrSpec(**spec)).snr
    mroptimum = snr_map(
        phantom.kspace, phantom.noise_cov, B1, SnrSpec(**spec, convention="mroptimum")
    ).snr
    inside = phantom.support
    ratio = mroptimum[inside] / physical[inside]  # same replicas: |I_last| / |I_0|
    truth = phantom.snr_optimal()[inside]
    # The last replica's magnitude scatters by one noise std around the noise-free value.
    np.testing.assert_allclose(np.std((ratio - 1) * truth), 1, rtol=0.2)
    assert abs(np.mean(ratio) - 1) < 3 / np.mean(truth) / np.sqrt(inside.sum())


def test_box_std_matches_mr_optimums_nan_padded_loop(rng):
    image = rng.standard_normal((9, 11)) + 1j * rng.standard_normal((9, 11))
    image[4, 5] = np.nan
    b = 2
    padded = np.pad(image, b, constant_values=np.nan)
    expected = np.array(
        [
            [np.nanstd(padded[i : i + 2 * b + 1, j : j + 2 * b + 1], ddof=1) for j in range(11)]
            for i in range(9)
        ]
    )
    np.testing.assert_allclose(box_std(image, b), expected, rtol=1e-10)
    np.testing.assert_allclose(box_std(image.real, b)[0, 0], np.std(image.real[:3, :3], ddof=1))


def _pmr_peak_bytes(phantom, replicas: int) -> int:
    spec = SnrSpec(method="pmr", replicas=replicas, batch=8)
    tracemalloc.start()
    snr_map(phantom.kspace, phantom.noise_cov, B1, spec)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_pseudo_replica_memory_does_not_grow_with_the_replica_count():
    phantom = make_phantom(64, 64, 8, seed=3)
    small, large = _pmr_peak_bytes(phantom, 8), _pmr_peak_bytes(phantom, 64)
    batch_bytes = 8 * 64 * 64 * 8 * 16
    assert large < 1.2 * small
    assert large < 64 * 64 * 8 * 16 * 64  # far below stacking 64 replicas of coil images
    assert small > batch_bytes  # the measurement sees the batch itself


def test_progress_is_reported_after_each_batch(phantom):
    calls = []
    spec = SnrSpec(method="pmr", replicas=10, batch=4)
    snr_map(phantom.kspace, phantom.noise_cov, RSS, spec, progress=lambda *a: calls.append(a))
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_single_precision_input_gives_single_precision_maps(phantom):
    maps = snr_map(phantom.kspace.astype(np.complex64), phantom.noise_cov, B1)
    assert maps.snr.dtype == np.float32
    assert maps.info["dtype"] == "complex64"
    inside = phantom.support
    np.testing.assert_allclose(maps.snr[inside], phantom.snr_optimal()[inside], rtol=1e-4)


def test_info_records_what_was_done(phantom):
    spec = SnrSpec(method="pmr", replicas=4, convention="mroptimum", seed=5)
    info = snr_map(phantom.kspace, phantom.noise_cov, SENSE_R2, spec).info
    assert info["method"] == "pmr"
    assert info["recon"] == "sense"
    assert info["replicas"] == 4
    assert info["seed"] == 5
    assert info["convention"] == "mroptimum"
    assert info["acceleration"] == [1, 2]
    assert info["acl"] == [None, 16]
    assert {"prewhiten", "setup", "snr"} <= info["timings_s"].keys()


def test_same_seed_gives_the_same_pseudo_replica_map(phantom):
    spec = SnrSpec(method="pmr", replicas=6, seed=11, batch=4)
    first = snr_map(phantom.kspace, phantom.noise_cov, B1, spec).snr
    np.testing.assert_array_equal(snr_map(phantom.kspace, phantom.noise_cov, B1, spec).snr, first)


@pytest.mark.parametrize(
    ("acceleration", "acl"), [((1, 2), (None, 16)), ((2, 2), (16, 16))], ids=["y", "x-and-y"]
)
def test_grappa_pseudo_replicas_match_its_analytic_snr_and_g(phantom, acceleration, acl):
    # (2, 2): the (y, z) planes of 3-D data accelerated along both axes.
    pytest.importorskip("tasks.mr.grappa")
    recon = ReconSpec(recon="grappa", acceleration=acceleration, decimate=True, acl=acl)
    analytic = snr_map(phantom.kspace, phantom.noise_cov, recon, SnrSpec(gfactor=True))
    spec = SnrSpec(method="pmr", replicas=400, gfactor=True, batch=100)
    pmr = snr_map(phantom.kspace, phantom.noise_cov, recon, spec)
    inside = phantom.support
    assert relative_roi_error(pmr.snr, analytic.snr, inside) < roi_tolerance(400, inside.sum())
    assert analytic.g is not None
    assert pmr.g is not None
    assert relative_roi_error(pmr.g, analytic.g, inside) < 0.02


# --- bad input -------------------------------------------------------------------------------


def test_coil_count_mismatch_between_kspace_and_psi_raises(phantom):
    with pytest.raises(InputError, match=r"noise_cov has shape \(3, 3\) but kspace has 4 coils"):
        snr_map(phantom.kspace, phantom.noise_cov[:3, :3])


def test_nan_in_kspace_or_psi_raises(phantom):
    kspace = phantom.kspace.copy()
    kspace[3, 4, 1] = np.nan
    with pytest.raises(InputError, match="kspace contains NaN or Inf"):
        snr_map(kspace, phantom.noise_cov)
    psi = phantom.noise_cov.copy()
    psi[0, 0] = np.inf
    with pytest.raises(InputError, match="noise_cov contains NaN or Inf"):
        snr_map(phantom.kspace, psi)


def test_acceleration_that_does_not_divide_the_lines_raises(phantom):
    recon = ReconSpec(recon="sense", acceleration=(1, 3), decimate=True)
    with pytest.raises(InputError, match=r"32 x 32, not divisible by acceleration \(1, 3\)"):
        snr_map(phantom.kspace, phantom.noise_cov, recon)


def test_unknown_mask_method_raises():
    with pytest.raises(InputError, match="mask method 'otsu' is unknown; expected one of"):
        ReconSpec(recon="b1", mask="otsu")


def test_not_positive_definite_psi_raises_through_snr_map(phantom):
    psi = np.diag([1.0, 1.0, 1.0, -0.5]).astype(complex)
    with pytest.raises(InputError, match=r"smallest eigenvalue -0\.5"):
        snr_map(phantom.kspace, psi)


def test_acceleration_without_sense_or_grappa_raises(phantom):
    with pytest.raises(InputError, match="acceleration=\\(1, 2\\) with recon 'b1'"):
        snr_map(phantom.kspace, phantom.noise_cov, ReconSpec(recon="b1", acceleration=(1, 2)))


def test_accelerated_data_without_calibration_lines_raise(phantom):
    recon = ReconSpec(recon="sense", acceleration=(1, 2))
    with pytest.raises(InputError, match="no data on calibration lines"):
        snr_map(undersample(phantom.kspace, 2), phantom.noise_cov, recon)


def test_multiple_replicas_need_a_replica_axis(phantom):
    with pytest.raises(InputError, match=r"method 'mr' expects \(x, y, coils, replicas\)"):
        snr_map(phantom.kspace, phantom.noise_cov, RSS, SnrSpec(method="mr"))


def test_bad_snr_spec_values_raise():
    with pytest.raises(InputError, match="replicas=1; expected an integer >= 2"):
        SnrSpec(method="pmr", replicas=1)
    with pytest.raises(InputError, match="box_size=0"):
        SnrSpec(box_size=0)
    with pytest.raises(InputError, match="acceleration=\\(1, 0\\)"):
        ReconSpec(acceleration=(1, 0))


def test_missing_grappa_module_raises_not_available(phantom, monkeypatch):
    monkeypatch.setitem(sys.modules, "tasks.mr.grappa", None)
    recon = ReconSpec(recon="grappa", acceleration=(1, 2), decimate=True)
    with pytest.raises(InputError, match="recon 'grappa' is not available yet"):
        snr_map(phantom.kspace, phantom.noise_cov, recon)


def test_real_valued_kspace_is_accepted_as_complex(phantom):
    image = np.abs(phantom.image)[..., None] * np.abs(phantom.sensitivities)
    kspace = fft2c(image).real
    assert snr_map(kspace, phantom.noise_cov).snr.max() > 0


def test_flip_angle_correction_divides_by_the_sine_and_zeroes_null_angles():
    from tasks.mr.snr import flip_angle_corrected

    snr = np.full((4, 4, 2), 10.0)
    angles = np.full((4, 4), 30.0)
    angles[0, 0] = 0.0
    corrected = flip_angle_corrected(snr, angles)
    assert corrected[1, 1, 1] == pytest.approx(20.0)
    assert corrected[0, 0, 0] == 0.0


def test_flip_angle_map_of_another_shape_is_refused():
    from tasks.mr.snr import flip_angle_corrected

    with pytest.raises(InputError, match=r"flip angle map has shape \(3, 3\)"):
        flip_angle_corrected(np.ones((4, 4)), np.ones((3, 3)))


def test_pseudo_replicas_do_not_depend_on_batch_or_thread_count(phantom, monkeypatch):
    from tasks.mr import snr as snr_module

    spec = SnrSpec(method="pmr", replicas=10, seed=3, batch=4)
    for recon in (B1, RSS):
        first = snr_map(phantom.kspace, phantom.noise_cov, recon, spec).snr
        monkeypatch.setattr(snr_module, "_threads", lambda: 1)
        single = snr_map(phantom.kspace, phantom.noise_cov, recon, spec).snr
        rebatched = SnrSpec(method="pmr", replicas=10, seed=3, batch=3)
        other = snr_map(phantom.kspace, phantom.noise_cov, recon, rebatched).snr
        monkeypatch.undo()
        np.testing.assert_array_equal(single, first)  # one stream per replica, not per thread
        np.testing.assert_allclose(other, first, rtol=1e-12)
        seed = SnrSpec(method="pmr", replicas=10, seed=4, batch=4)
        assert not np.allclose(snr_map(phantom.kspace, phantom.noise_cov, recon, seed).snr, first)


def test_linear_pseudo_replica_shortcut_equals_the_plain_sum(phantom):
    from tasks.mr import snr as snr_module

    arrays = snr_module.NUMPY
    maps = snr_map(phantom.kspace, phantom.noise_cov, B1)
    combine = snr_module._B1Combine(arrays, maps.sensitivities)
    spec = SnrSpec(method="pmr", replicas=6, batch=4)
    images = ifft2c(prewhiten_kspace(phantom))
    runs = []
    for linear in (True, False):
        streams = np.random.SeedSequence(9)
        runs.append(
            snr_module._pseudo_replicas(
                arrays, images, combine, linear, spec, streams, None, [0, 6]
            )
        )
    np.testing.assert_allclose(runs[0].last, runs[1].last, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(runs[0].moments.std(), runs[1].moments.std(), rtol=1e-9)
    # The noise really is CN(0, I) per coil: replica - clean image, per pixel, through B1.
    clean = combine(images)
    assert abs(np.var(runs[0].last - clean) - 1) < 5 * np.sqrt(2 / clean.size)


def prewhiten_kspace(phantom):
    from tasks.mr.noise import prewhiten, prewhitening_matrix

    return prewhiten(phantom.kspace, prewhitening_matrix(phantom.noise_cov))
