"""As a user: route-job sends a small and a large MR job to two pools, each run by its worker.

A real ``prefect server start`` (tests/e2e/conftest.py), two ``process`` workers (one pool per
size class of a local unit, their class queues and limits applied as ``make pools`` does), the
MR flow deployed once per class with ``flow.from_source(...).deploy`` (in the pool's
``default`` queue); route-job called from Python starts each job on the deployment its size
picks, in its class's queue, and each run completes through its own pool's worker.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.compute_unit import SIZE_CLASSES, ClassRule, ComputeUnit, DaskWorkers
from blocks.registration import apply_pools
from tasks.mr.estimate import estimate_job
from tasks.mr.options import MrOptions
from tests.e2e.conftest import (
    REPO,
    VENV_BIN,
    WORKER_START_TIMEOUT_S,
    PrefectServer,
    Service,
    start_service,
    wait_for_worker,
)
from tests.flows.test_router import LARGE_SHAPE, OPTIONS, SMALL_SHAPE, write_mr_job

pytestmark = pytest.mark.e2e

UNIT = "e2e-router"
POOLS = {"small": "router-e2e-small", "large": "router-e2e-large"}
RUN_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """Point this process's Prefect client at the e2e server (the harness points elsewhere)."""
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


@pytest.fixture(scope="module")
def pool_workers(api: PrefectServer, request: pytest.FixtureRequest) -> Iterator[list[Service]]:
    """A ``process`` worker per pool; each creates its pool, as ``make worker`` does."""
    env = {**api.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    workers = []
    try:
        for size, pool in POOLS.items():
            argv = [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type"]
            log = api.service.log_path.with_name(f"router-{size}-worker.log")
            workers.append(start_service(f"{pool} worker", [*argv, "process"], env, log))
        for worker, pool in zip(workers, POOLS.values(), strict=True):
            wait_for_worker(api.api_url, pool, worker, WORKER_START_TIMEOUT_S)
        yield workers
    finally:
        for worker in workers:
            worker.stop()
            if request.session.testsfailed:
                print(f"--- {worker.name} log\n{worker.log()}")


@pytest.fixture(scope="module")
def routed_unit(api: PrefectServer, pool_workers: list[Service]) -> str:
    """A local unit with a pool per class, whose small class holds only the small job, and
    the MR flow deployed on each pool as ``<unit>-<class>``."""
    from flows.mr_reconstruction import mr_reconstruction

    small = estimate_job(SMALL_SHAPE, MrOptions(**OPTIONS)).memory_bytes
    one_worker = {size: DaskWorkers(n_workers=1) for size in SIZE_CLASSES}
    unit = ComputeUnit(
        name=UNIT,
        work_pools={size: POOLS.get(size, POOLS["large"]) for size in SIZE_CLASSES},
        dask_workers=one_worker,
        routing={"small": ClassRule(max_memory_mib=math.ceil(small / 2**20))},
    )
    unit.save(UNIT, overwrite=True)
    apply_pools(unit)  # the class queues and their limits, as make pools
    source = mr_reconstruction.from_source(
        source=str(REPO), entrypoint="flows/mr_reconstruction.py:mr_reconstruction"
    )
    for size, pool in POOLS.items():
        source.deploy(name=f"{UNIT}-{size}", work_pool_name=pool, print_next_steps=False)
    return UNIT


def wait_for_terminal(flow_run_id: str, timeout: float = RUN_TIMEOUT_S) -> FlowRun:
    """Poll the API until the flow run is in a final state, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"flow run {flow_run_id} still {flow_run.state_name} after {timeout:.0f} s"
                )
            time.sleep(0.5)


def test_router_sends_a_small_and_a_large_job_to_different_pools(
    api, routed_unit, pool_workers, tmp_path
):
    from flows.router import route_job

    small = write_mr_job(tmp_path / "small", SMALL_SHAPE)
    large = write_mr_job(tmp_path / "large", LARGE_SHAPE)

    started = {
        "small": route_job("mr-reconstruction", {**small, "options": OPTIONS}, unit=routed_unit),
        "large": route_job("mr-reconstruction", {**large, "options": OPTIONS}, unit=routed_unit),
    }

    assert {size: run.work_pool_name for size, run in started.items()} == POOLS
    limits = ComputeUnit.load(routed_unit).limits
    for (size, run), worker in zip(started.items(), pool_workers, strict=True):
        done = wait_for_terminal(str(run.id))
        assert done.state_name == "Completed", (size, done.state)
        with get_client(sync_client=True) as client:
            assert client.read_deployment(done.deployment_id).name == f"{UNIT}-{size}"
            # In its class's queue, which make pools limits, not the deployment's default one.
            queue = client.read_work_queue(done.work_queue_id)
        assert done.work_queue_name == queue.name == size
        assert queue.concurrency_limit == limits.of(size).concurrent_runs
        # Its own pool's worker ran it; the other pool's did not.
        others = [w for w in pool_workers if w is not worker]
        assert str(run.id) in worker.log(), worker.log()
        assert all(str(run.id) not in other.log() for other in others)
        run_dir = api.storage_root / UNIT / str(run.id)
        info = json.loads((run_dir / "info.json").read_text())
        assert info["sciflow"]["extra"]["median_snr_in_mask"] > 0
    # Deploying from source, routing and both runs stayed on loopback.
    assert api.proxy.requests == []
