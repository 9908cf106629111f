"""A size class's concurrency limit on a real server: a run over it waits, then starts.

As an operator: a unit whose ``small`` class allows one run at once is saved, ``python -m
blocks.pools`` (what ``make pools`` runs) gives its pool the class's queue and limit, and a
process worker serves the pool. Two runs sent to the ``small`` queue: the second stays
Scheduled (or Late) through several worker polls while the first runs, and starts once the
first has ended.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.compute_unit import ComputeUnit, SizeLimits, UnitLimits
from tests.e2e.conftest import (
    REPO,
    VENV_BIN,
    WORKER_START_TIMEOUT_S,
    PrefectServer,
    start_service,
    wait_for_worker,
)

pytestmark = pytest.mark.e2e

DEADLINE_S = 120.0
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S) -> T:
    """``probe()`` once it returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.2)
    return value


@pytest.fixture
def one_small_run_pool(prefect_server: PrefectServer) -> Iterator[str]:
    """A saved unit allowing one small run at once, its pools applied, and a process worker."""
    unit = f"limits-{uuid4().hex[:8]}"
    pool = f"sciflow-{unit}"
    one = SizeLimits(vcpus=4, memory_mib=16384, wall_time_s=3600, concurrent_runs=1)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        ComputeUnit(name=unit, work_pools={"small": pool}, limits=UnitLimits(small=one)).save(unit)
    applied = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "blocks.pools"],
        cwd=REPO,
        env=prefect_server.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    assert f"unit {unit!r}: process pool {pool!r}, at most 1 runs (queues: small 1)" in (
        applied.stdout
    )
    worker = start_service(
        "limits worker",
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
        {**prefect_server.env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        prefect_server.service.log_path.with_name(f"{pool}.log"),
    )
    try:
        wait_for_worker(prefect_server.api_url, pool, worker, WORKER_START_TIMEOUT_S)
        yield pool
    finally:
        worker.stop()


def test_a_run_over_its_classes_limit_waits_until_the_first_ends(
    prefect_server: PrefectServer, one_small_run_pool: str, tmp_path: Path
):
    pool = one_small_run_pool
    first_gate, second_gate = tmp_path / "first", tmp_path / "second"
    second_gate.touch()  # the second run ends as soon as it starts
    with (
        temporary_settings({PREFECT_API_URL: prefect_server.api_url}),
        get_client(sync_client=True) as client,
    ):
        flow_id = client.create_flow_from_name("e2e-gate")
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=pool,
            entrypoint="tests/e2e/gate_flow.py:wait_for_gate",
            work_pool_name=pool,
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ],
        )
        # Sent to the class's queue, as the router's run_deployment(work_queue_name=...) does.
        first, second = (
            client.create_flow_run_from_deployment(
                deployment_id, parameters={"gate": str(gate)}, work_queue_name="small"
            )
            for gate in (first_gate, second_gate)
        )

        def read(run: FlowRun) -> FlowRun:
            return client.read_flow_run(run.id)

        def reached(run: FlowRun, *types: StateType) -> FlowRun | None:
            now = read(run)
            return now if now.state and now.state.type in types else None

        poll("first run Running", lambda: reached(first, StateType.RUNNING))
        # The worker asks for runs each second; across several of its polls the second waits.
        queue = client.read_work_queue_by_name("small", work_pool_name=pool)
        seen = {queue.last_polled}
        while len(seen) < 4:
            polled = poll(
                "a worker poll of the small queue",
                lambda: (
                    q
                    if (
                        q := client.read_work_queue_by_name("small", work_pool_name=pool)
                    ).last_polled
                    not in seen
                    else None
                ),
            )
            seen.add(polled.last_polled)
            waiting = read(second)
            assert waiting.state.type == StateType.SCHEDULED, waiting.state
            assert waiting.state_name in ("Scheduled", "Late")
            assert read(first).state.type == StateType.RUNNING

        first_gate.touch()
        done = poll("first run Completed", lambda: reached(first, StateType.COMPLETED))
        finished = poll(
            "second run final",
            lambda: reached(second, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED),
        )

    assert finished.state.type == StateType.COMPLETED, finished.state
    assert finished.start_time >= done.end_time
