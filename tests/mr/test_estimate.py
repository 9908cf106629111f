import pytest

from tasks.errors import InputError
from tasks.mr.estimate import GIB, SMALL_MEMORY_BYTES, SMALL_SECONDS, JobEstimate, estimate_job
from tasks.mr.options import MrOptions

PMR = MrOptions(method="pmr", replicas=128)


def test_defaults_are_the_old_lambda_limits():
    assert SMALL_MEMORY_BYTES == 3 * GIB
    assert SMALL_SECONDS == 900


def test_a_2d_16_coil_pmr_with_128_replicas_is_small():
    estimate = estimate_job((256, 256, 16, 1, 1), PMR)
    assert isinstance(estimate, JobEstimate)
    assert estimate.size_class == "small"
    assert estimate.memory_bytes < 1.5 * GIB
    assert 5 < estimate.seconds < 120
    assert estimate.reasons[0].startswith("peak memory ")
    assert "is within the small limit 3.00 GiB" in estimate.reasons[0]
    assert "is within the small limit 900 s" in estimate.reasons[1]


def test_a_3d_32_coil_acquisition_is_large_and_says_why():
    estimate = estimate_job((256, 256, 32, 128), MrOptions(method="pmr"))
    assert estimate.size_class == "large"
    assert estimate.memory_bytes > SMALL_MEMORY_BYTES
    assert estimate.seconds > SMALL_SECONDS
    assert estimate.memory_parts["input k-space"] == 256 * 256 * 32 * 128 * 16
    assert "exceeds the small limit 3.00 GiB (input k-space 4.00 GiB" in estimate.reasons[0]
    assert "exceeds the small limit 900 s" in estimate.reasons[1]
    assert "128 slice(s)" in estimate.reasons[1]


def test_memory_alone_can_make_a_job_large():
    estimate = estimate_job((256, 256, 32, 128), MrOptions(method="ac"))
    assert estimate.size_class == "large"
    assert estimate.seconds < SMALL_SECONDS
    assert "exceeds" in estimate.reasons[0]
    assert "is within" in estimate.reasons[1]


def test_time_alone_puts_the_reason_that_decided_first():
    estimate = estimate_job((256, 256, 16, 1), PMR, small_seconds=10)
    assert estimate.size_class == "large"
    assert estimate.reasons[0].startswith("estimated time")
    assert "exceeds the small limit 10 s" in estimate.reasons[0]


def test_more_pseudo_replicas_take_longer_but_no_more_memory():
    shape = (256, 256, 16, 4)
    few = estimate_job(shape, MrOptions(method="pmr", replicas=20))
    many = estimate_job(shape, MrOptions(method="pmr", replicas=2000))
    assert many.seconds > 50 * few.seconds
    assert many.memory_bytes == few.memory_bytes


def test_more_coils_need_more_memory_and_time():
    small = estimate_job((256, 256, 8, 4), PMR)
    big = estimate_job((256, 256, 32, 4), PMR)
    assert big.memory_bytes > small.memory_bytes
    assert big.seconds > small.seconds


def test_real_replicas_are_held_in_memory_for_mr():
    one = estimate_job((128, 128, 8, 1, 10), MrOptions(method="mr"))
    many = estimate_job((128, 128, 8, 1, 100), MrOptions(method="mr"))
    assert many.memory_parts["input k-space"] == 10 * one.memory_parts["input k-space"]
    assert many.seconds > one.seconds


def test_complex64_halves_the_input():
    wide = estimate_job((256, 256, 16, 8), PMR)
    narrow = estimate_job((256, 256, 16, 8), PMR, bytes_per_sample=8)
    assert narrow.memory_parts["input k-space"] * 2 == wide.memory_parts["input k-space"]


def test_more_cores_and_fewer_slices_take_less_time():
    base = estimate_job((256, 256, 16, 8), PMR)
    assert estimate_job((256, 256, 16, 8), PMR, cores=4).seconds < base.seconds
    two = MrOptions(method="pmr", replicas=128, slices=[0, 5])
    assert estimate_job((256, 256, 16, 8), two).seconds < base.seconds / 3


def test_accelerated_recons_and_g_factors_cost_more():
    shape = (256, 256, 16, 1)
    rss = estimate_job(shape, MrOptions(method="pmr"))
    sense = estimate_job(
        shape, MrOptions(method="pmr", recon="sense", acceleration=(1, 2), decimate=True)
    )
    with_g = estimate_job(
        shape,
        MrOptions(method="pmr", recon="sense", acceleration=(1, 2), decimate=True, gfactor=True),
    )
    assert rss.seconds < sense.seconds < with_g.seconds
    grappa = estimate_job(
        shape, MrOptions(method="ac", recon="grappa", acceleration=(1, 3), gfactor=True)
    )
    assert "GRAPPA g-factor weights" in grappa.memory_parts


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((256, 256), r"shape=\(256, 256\); expected 3 to 5 positive ints"),
        ((256, 256, 0), r"shape=\(256, 256, 0\)"),
        ((256, 256, 8, 1, 1, 1), r"expected 3 to 5"),
        ((256.0, 256, 8), r"expected 3 to 5 positive ints"),
    ],
)
def test_a_bad_shape_is_refused(shape, match):
    with pytest.raises(InputError, match=match):
        estimate_job(shape, PMR)


def test_a_slice_beyond_the_data_is_refused():
    with pytest.raises(InputError, match=r"names slice 9, but the data have 4 slices \(0\.\.3\)"):
        estimate_job((64, 64, 4, 4), MrOptions(slices=[0, 9]))
