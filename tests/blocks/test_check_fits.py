"""A job's memory estimate against the unit's largest size class (``ComputeUnit.check_fits``)."""

import pytest

from blocks.compute_unit import DEFAULT_LIMITS, ComputeUnit, DaskWorkers
from tasks.errors import InputError

MIB = 2**20


def small_unit(memory_mib: int = 1024) -> ComputeUnit:
    """A unit whose every class holds ``memory_mib`` but ``large``, which holds twice that."""
    limits = {
        size: {**DEFAULT_LIMITS[size].model_dump(), "memory_mib": memory_mib}
        for size in ("small", "multinode", "gpu")
    }
    limits["large"] = {**DEFAULT_LIMITS["large"].model_dump(), "memory_mib": 2 * memory_mib}
    workers = {
        size: DaskWorkers(n_workers=1, worker_cpu=1024, worker_mem=512)
        for size in ("small", "large", "multinode", "gpu")
    }
    return ComputeUnit(name="tiny", limits=limits, dask_workers=workers)


def test_the_largest_size_is_the_one_with_the_most_memory():
    unit = small_unit()
    assert unit.largest_size() == "large"
    assert unit.largest_size(("small", "gpu")) == "small"  # a tie keeps the first
    assert ComputeUnit(name="x").largest_size() == "multinode"  # 384 GiB by default


def test_an_estimate_at_the_largest_class_fits_and_one_byte_more_is_refused():
    """Guards against a job sized past every class being started to run out of memory."""
    unit = small_unit()
    unit.check_fits(2048 * MIB, "job")
    with pytest.raises(
        InputError,
        match=(
            r"^matrix=\(64, 64\): estimated 2\.00 GiB \(2147483649 bytes\); expected at most "
            r"the 2048 MiB of unit 'tiny''s largest size class 'large' "
            r"\(limits\.large\.memory_mib\)$"
        ),
    ):
        unit.check_fits(2048 * MIB + 1, "matrix=(64, 64)")


def test_only_the_classes_a_job_may_use_count():
    """Guards against a job bound to one class being let through by a bigger other class."""
    unit = small_unit()
    unit.check_fits(1024 * MIB, "job", sizes=("gpu",))
    with pytest.raises(InputError, match=r"largest size class 'gpu' \(limits\.gpu\.memory_mib\)"):
        unit.check_fits(1024 * MIB + 1, "job", sizes=("gpu",))
