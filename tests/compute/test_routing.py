"""The router's rules: thresholds on the unit, each tested just under, at and just over."""

import pytest

from blocks.compute_unit import (
    DEFAULT_LIMITS,
    ROUTE_SMALL_MEMORY_MIB,
    ROUTE_SMALL_SECONDS,
    ROUTE_SMALL_SPIN_SAMPLES,
    ClassRule,
    ComputeUnit,
)
from tasks.compute.routing import JobSize, choose_size, deployment_name, route, thresholds
from tasks.errors import InputError

MIB = 2**20
MR = ("small", "large")


def aws_unit(**fields) -> ComputeUnit:
    pools = {size: f"team-{size}" for size in ("small", "large", "multinode", "gpu")}
    return ComputeUnit(
        name="team",
        platform="aws",
        region="us-east-1",
        storage_root="s3://team/runs",
        work_pools=pools,
        **fields,
    )


def job(memory_bytes: int = MIB, **fields) -> JobSize:
    return JobSize(what="job", memory_bytes=memory_bytes, **fields)


@pytest.mark.parametrize(
    ("memory_bytes", "size"),
    [
        (ROUTE_SMALL_MEMORY_MIB * MIB - 1, "small"),
        (ROUTE_SMALL_MEMORY_MIB * MIB, "small"),
        (ROUTE_SMALL_MEMORY_MIB * MIB + 1, "large"),
    ],
)
def test_default_small_memory_threshold_is_mr_optimums_3_gib(memory_bytes, size):
    assert choose_size(aws_unit(), job(memory_bytes), MR)[0] == size


@pytest.mark.parametrize(
    ("seconds", "size"),
    [(ROUTE_SMALL_SECONDS - 0.1, "small"), (ROUTE_SMALL_SECONDS, "small"), (900.1, "large")],
)
def test_default_small_time_threshold_is_lambdas_900_s(seconds, size):
    assert choose_size(aws_unit(), job(seconds=seconds), MR)[0] == size


@pytest.mark.parametrize(
    ("spin_samples", "size"),
    [
        (ROUTE_SMALL_SPIN_SAMPLES - 1, "small"),
        (ROUTE_SMALL_SPIN_SAMPLES, "small"),
        (ROUTE_SMALL_SPIN_SAMPLES + 1, "large"),
    ],
)
def test_default_small_spin_sample_threshold(spin_samples, size):
    assert choose_size(aws_unit(), job(spin_samples=spin_samples), MR)[0] == size


def test_thresholds_are_the_units_data():
    unit = aws_unit(routing={"small": ClassRule(max_memory_mib=1024, max_seconds=60)})
    assert choose_size(unit, job(1024 * MIB, seconds=60), MR)[0] == "small"
    assert choose_size(unit, job(1024 * MIB + 1, seconds=60), MR)[0] == "large"
    assert choose_size(unit, job(1024 * MIB, seconds=60.5), MR)[0] == "large"


@pytest.mark.parametrize(
    ("memory_bytes", "refused"),
    [
        (DEFAULT_LIMITS["large"].memory_mib * MIB - 1, False),
        (DEFAULT_LIMITS["large"].memory_mib * MIB, False),
        (DEFAULT_LIMITS["large"].memory_mib * MIB + 1, True),
    ],
)
def test_a_class_without_a_rule_is_bound_by_its_limits_and_none_left_is_refused(
    memory_bytes, refused
):
    """Guards against a job past every class being started to run out of memory."""
    if not refused:
        assert choose_size(aws_unit(), job(memory_bytes), MR)[0] == "large"
        return
    with pytest.raises(
        InputError,
        match=(
            r"^job: no size class of unit 'team' holds it \(small: memory 122880 MiB > 3072 "
            r"MiB .*\| large: memory 122880 MiB > 122880 MiB \(routing\.large\.max_memory_mib, "
            r"limits\.large\.memory_mib\)\); expected a smaller job"
        ),
    ):
        choose_size(aws_unit(), job(memory_bytes), MR)


def test_the_large_classs_time_bound_is_its_wall_time():
    wall = DEFAULT_LIMITS["large"].wall_time_s
    assert choose_size(aws_unit(), job(seconds=wall), MR)[0] == "large"
    with pytest.raises(InputError, match=rf"large: time {wall + 1} s > {wall} s"):
        choose_size(aws_unit(), job(seconds=wall + 1), MR)


def test_a_rule_above_its_class_limits_counts_as_the_limits():
    """Guards against routing a job to a class its containers cannot hold."""
    unit = aws_unit(routing={"small": ClassRule(max_memory_mib=10**6, max_seconds=10**9)})
    bound = thresholds(unit, "small")
    assert (bound.memory_mib, bound.seconds) == (16384, 3600.0)
    assert choose_size(unit, job(16384 * MIB), MR)[0] == "small"
    assert choose_size(unit, job(16384 * MIB + 1), MR)[0] == "large"


def test_several_nodes_fit_only_multinode():
    unit = aws_unit()
    with pytest.raises(InputError, match=r"small: 2 nodes need the multinode class"):
        choose_size(unit, job(nodes=2), MR)
    size, reasons = choose_size(unit, job(nodes=2), ("multinode",))
    assert size == "multinode"
    assert reasons == ("multinode: holds memory 1 MiB, 2 nodes",)


def test_several_nodes_on_a_local_unit_are_refused():
    with pytest.raises(InputError, match=r"^job: nodes=2 on the local unit 'local'; expected 1"):
        choose_size(ComputeUnit(name="local"), job(nodes=2), ("multinode",))


def test_reasons_say_why_each_smaller_class_was_passed_over():
    _, reasons = choose_size(aws_unit(), job(4096 * MIB, seconds=10), MR)
    assert reasons == (
        "small: memory 4096 MiB > 3072 MiB (routing.small.max_memory_mib, limits.small.memory_mib)",
        "large: holds memory 4096 MiB, time 10 s",
    )


def test_deployments_are_named_by_unit_and_class():
    unit = aws_unit()
    assert deployment_name(unit, "small") == "team-small"
    assert deployment_name(unit, "multinode") == "team-multinode"
    chosen = route(unit, "mr-reconstruction", job(4096 * MIB), MR)
    assert (chosen.size, chosen.deployment, chosen.work_pool) == (
        "large",
        "mr-reconstruction/team-large",
        "team-large",
    )


def test_the_local_unit_sends_every_class_to_the_local_deployment():
    unit = ComputeUnit(name="local")
    assert {deployment_name(unit, s) for s in ("small", "large", "multinode", "gpu")} == {"local"}
    chosen = route(unit, "mr-reconstruction", job(4096 * MIB), MR)
    assert (chosen.deployment, chosen.work_pool) == ("mr-reconstruction/local", "sciflow-local")


def test_a_local_unit_with_its_own_large_pool_gets_its_own_large_deployment():
    pools = dict.fromkeys(("small", "multinode", "gpu"), "sciflow-local") | {"large": "lab-large"}
    unit = ComputeUnit(name="lab", work_pools=pools)
    small = route(unit, "mr-reconstruction", job(), MR)
    large = route(unit, "mr-reconstruction", job(4096 * MIB), MR)
    assert (small.deployment, small.work_pool) == ("mr-reconstruction/local", "sciflow-local")
    assert (large.deployment, large.work_pool) == ("mr-reconstruction/lab-large", "lab-large")


def test_routing_rules_are_checked_when_the_unit_is_made():
    with pytest.raises(ValueError, match=r"max_memory_mib"):
        ComputeUnit(name="x", routing={"small": {"max_memory_mib": 0}})
    with pytest.raises(ValueError, match=r"max_ram"):
        ComputeUnit(name="x", routing={"small": {"max_ram": 1}})
    with pytest.raises(ValueError, match=r"routing"):
        ComputeUnit(name="x", routing={"huge": {}})
