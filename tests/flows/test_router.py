"""route-job on the test harness: real deployments and pools, runs created where the rules say.

The deployments here sit in their pool's ``default`` queue, as ``<flow>/local`` does on
sciflow-local: a run found in its class's queue was put there by the router.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectAlreadyExists

from blocks.compute_unit import LOCAL_WORK_POOL, ClassRule, ComputeUnit
from blocks.registration import apply_pools
from flows.router import route_job
from tasks.errors import InputError
from tasks.mr.estimate import estimate_job
from tasks.mr.options import MrOptions
from tasks.mr.phantom import make_phantom, phantom_acquisition

MIB = 2**20
OPTIONS = {"method": "ac", "recon": "rss"}
# (x, y, coils, slices): a small job and one about 16 MiB larger at its peak.
SMALL_SHAPE = (32, 32, 4, 1)
LARGE_SHAPE = (128, 128, 8, 4)
LARGE_POOL = "router-large"


def write_mr_job(folder: Path, shape: tuple[int, int, int, int]) -> dict[str, str]:
    """Signal and noise .npy files of a phantom acquisition; the MR flow's parameters."""
    x, y, coils, slices = shape
    signal, noise = phantom_acquisition(make_phantom(x, y, coils), slices=slices)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "signal.npy", signal[..., 0])
    np.save(folder / "noise.npy", noise)
    return {"signal": str(folder / "signal.npy"), "noise": str(folder / "noise.npy")}


def two_pool_unit(name: str) -> ComputeUnit:
    """A local unit whose large jobs go to their own pool, and whose small class holds only
    ``SMALL_SHAPE``'s job (its estimate rounded up to a MiB)."""
    small = estimate_job(SMALL_SHAPE, MrOptions(**OPTIONS)).memory_bytes
    large = estimate_job(LARGE_SHAPE, MrOptions(**OPTIONS)).memory_bytes
    threshold = math.ceil(small / MIB)
    assert large > threshold * MIB, "the large job must not fit the small class"
    pools = dict.fromkeys(("small", "multinode", "gpu"), LOCAL_WORK_POOL) | {"large": LARGE_POOL}
    return ComputeUnit(
        name=name, work_pools=pools, routing={"small": ClassRule(max_memory_mib=threshold)}
    )


def deploy(flow_name: str, deployment: str, pool: str) -> None:
    """A deployment of ``flow_name`` on ``pool`` (created if missing); nothing runs its runs."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
        flow_id = client.create_flow_from_name(flow_name)
        client.create_deployment(
            flow_id=flow_id, name=deployment, work_pool_name=pool, entrypoint="flows/x.py:x"
        )


def queues_of(*runs: FlowRun) -> list[tuple[str, str | None]]:
    """Each run's pool and work queue."""
    return [(run.work_pool_name, run.work_queue_name) for run in runs]


def runs_of(deployment: str) -> int:
    """Flow runs of ``<flow>/<deployment>`` on the harness server."""
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        return sum(r.deployment_id == deployment_id for r in client.read_flow_runs())


@pytest.fixture(scope="module")
def unit_block() -> str:
    two_pool_unit("router-lab").save("router-lab", overwrite=True)
    deploy("mr-reconstruction", "local", LOCAL_WORK_POOL)
    deploy("mr-reconstruction", "router-lab-large", LARGE_POOL)
    apply_pools(two_pool_unit("router-lab"))  # the class queues and limits, as make pools
    return "router-lab"


def test_a_small_and_a_large_mr_job_go_to_different_pools(unit_block, tmp_path):
    small = write_mr_job(tmp_path / "small", SMALL_SHAPE)
    large = write_mr_job(tmp_path / "large", LARGE_SHAPE)

    small_run = route_job("mr-reconstruction", {**small, "options": OPTIONS}, unit=unit_block)
    large_run = route_job("mr-reconstruction", {**large, "options": OPTIONS}, unit=unit_block)

    assert queues_of(small_run, large_run) == [(LOCAL_WORK_POOL, "small"), (LARGE_POOL, "large")]
    assert small_run.state_name == large_run.state_name == "Scheduled"
    # The queues make pools limits, not ones the server made up for the name.
    limits = two_pool_unit(unit_block).limits
    with get_client(sync_client=True) as client:
        for run in (small_run, large_run):
            queue = client.read_work_queue(run.work_queue_id)
            assert (queue.name, queue.work_pool_id) == (
                run.work_queue_name,
                client.read_work_pool(run.work_pool_name).id,
            )
            assert queue.concurrency_limit == limits.of(run.work_queue_name).concurrent_runs
    assert large_run.parameters == {**large, "options": OPTIONS, "unit": unit_block}
    with get_client(sync_client=True) as client:
        deployments = {client.read_deployment(r.deployment_id).name for r in (small_run, large_run)}
    assert deployments == {"local", "router-lab-large"}


def test_an_mr_optimum_job_names_its_own_signal(unit_block, tmp_path):
    files = write_mr_job(tmp_path, SMALL_SHAPE)

    def file(path: str) -> dict:
        return {"type": "file", "options": {"type": "local", "filename": path, "vendor": "numpy"}}

    recon = {"signal": file(files["signal"]), "noise": file(files["noise"])}
    job = {
        "version": "v0",
        "acquisition": 2,
        "type": "SNR",
        "id": 0,
        "name": "AC",
        "options": {"reconstructor": {"type": "recon", "id": 0, "name": "RSS", "options": recon}},
    }
    started = route_job("mr-reconstruction", {"options": job}, unit=unit_block)
    assert queues_of(started) == [(LOCAL_WORK_POOL, "small")]


def test_a_job_past_every_class_is_refused_and_nothing_started(tmp_path):
    files = write_mr_job(tmp_path, SMALL_SHAPE)
    tiny = {"small": ClassRule(max_memory_mib=1), "large": ClassRule(max_memory_mib=1)}
    ComputeUnit(name="router-tiny", routing=tiny).save("router-tiny", overwrite=True)
    deploy("mr-reconstruction", "local", LOCAL_WORK_POOL)
    before = runs_of("mr-reconstruction/local")
    with pytest.raises(InputError, match=r"no size class of unit 'router-tiny' holds it"):
        route_job("mr-reconstruction", {**files, "options": OPTIONS}, unit="router-tiny")
    assert runs_of("mr-reconstruction/local") == before


def test_a_second_unit_in_the_parameters_is_refused(tmp_path):
    files = write_mr_job(tmp_path, SMALL_SHAPE)
    with pytest.raises(InputError, match=r"parameters\.unit='other' but unit='local'"):
        route_job("mr-reconstruction", {**files, "unit": "other"})


def test_simulations_go_by_spins_times_samples():
    deploy("multinode-simulation", "local", LOCAL_WORK_POOL)
    deploy("multinode-simulation", "router-sim-large", LARGE_POOL)
    pools = dict.fromkeys(("small", "multinode", "gpu"), LOCAL_WORK_POOL) | {"large": LARGE_POOL}
    # A 16x16 Shepp-Logan has 133 spins; the default GRE reads 16 x 16 = 256 samples.
    spin_samples = 133 * 256
    for limit, where in (
        (spin_samples, (LOCAL_WORK_POOL, "small")),
        (spin_samples - 1, (LARGE_POOL, "large")),
    ):
        unit = ComputeUnit(
            name="router-sim", work_pools=pools, routing={"small": {"max_spin_samples": limit}}
        )
        unit.save("router-sim", overwrite=True)
        params = {"phantom": {"matrix": [16, 16]}}
        started = route_job("multinode-simulation", params, unit="router-sim")
        assert queues_of(started) == [where], limit


def test_training_goes_by_its_memory_per_node(tmp_path):
    from tasks.training.data import write_synthetic_set

    write_synthetic_set(str(tmp_path / "set"), train=16, validation=4, size=16)
    deploy("distributed-training", "local", LOCAL_WORK_POOL)
    deploy("distributed-training", "router-train-large", LARGE_POOL)
    pools = dict.fromkeys(("small", "multinode", "gpu"), LOCAL_WORK_POOL) | {"large": LARGE_POOL}
    params = {"dataset": str(tmp_path / "set"), "settings": {"device": "cpu"}}
    # Two processes (each 512 MiB of torch and 256 MiB per loader worker, plus the model)
    # fit in 3 GiB, not in 512 MiB.
    for memory_mib, where in ((3072, (LOCAL_WORK_POOL, "small")), (512, (LARGE_POOL, "large"))):
        routing = {"small": {"max_memory_mib": memory_mib}}
        ComputeUnit(name="router-train", work_pools=pools, routing=routing).save(
            "router-train", overwrite=True
        )
        started = route_job("distributed-training", params, unit="router-train")
        assert queues_of(started) == [where], memory_mib
        assert started.parameters == {**params, "unit": "router-train"}


def test_the_run_form_has_a_described_field_per_parameter_and_no_type_pickers():
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(route_job.fn).model_dump()
    fields = schema["properties"]
    assert set(fields) == {"flow", "parameters", "unit", "wait"}
    assert all(field.get("description") for field in fields.values())
    assert not any("anyOf" in field for field in fields.values())
    assert fields["flow"]["enum"] == [
        "mr-reconstruction",
        "multinode-simulation",
        "distributed-training",
    ]


@pytest.fixture
def team(aws: str, tmp_path: Path) -> dict[str, str]:
    """The AWS unit ``team`` (moto) with a pool per class, and a small MR job in its bucket."""
    import boto3

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="team")
    files = write_mr_job(tmp_path, SMALL_SHAPE)
    for name, path in files.items():
        s3.upload_file(path, "team", f"runs/in/{name}.npy")
    pools = {size: f"team-{size}" for size in ("small", "large", "multinode", "gpu")}
    ComputeUnit(
        name="team",
        platform="aws",
        region="us-east-1",
        storage_root="s3://team/runs",
        work_pools=pools,
    ).save("team", overwrite=True)
    return {name: f"s3://team/runs/in/{name}.npy" for name in files}


def test_an_aws_unit_gets_the_deployment_of_its_unit_and_class(team):
    deploy("mr-reconstruction", "team-small", "team-small")
    started = route_job("mr-reconstruction", {**team, "options": OPTIONS}, unit="team")
    assert queues_of(started) == [("team-small", "small")]
    with get_client(sync_client=True) as client:
        assert client.read_deployment(started.deployment_id).name == "team-small"


def test_a_job_over_the_units_spending_cap_is_refused_and_nothing_started(team):
    """Guards against the router starting a run that its flow would refuse for its cost."""
    unit = ComputeUnit.load("team")
    unit.spending_cap_usd = 0.01
    unit.save("team", overwrite=True)
    deploy("mr-reconstruction", "team-small", "team-small")
    before = runs_of("mr-reconstruction/team-small")
    with pytest.raises(InputError, match=r"exceeds unit 'team''s spending_cap_usd=0\.01"):
        route_job("mr-reconstruction", {**team, "options": OPTIONS}, unit="team")
    assert runs_of("mr-reconstruction/team-small") == before


def test_a_signal_the_unit_may_not_read_is_refused_before_anything_is_fetched(team):
    with pytest.raises(InputError, match=r"signal='s3://other/s\.npy': compute unit 'team' may"):
        route_job("mr-reconstruction", {"signal": "s3://other/s.npy"}, unit="team")
