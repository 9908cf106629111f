"""As a user: ``prefect flow-run cancel`` on a deployment run, running or still pending.

A real server and workers started as sciflow starts them (``PREFECT_WORKER_ENABLE_CANCELLATION``
set, tests/e2e/conftest.py). A running run on the process pool is cancelled inside its own
process: its hooks stop what it launched and seal the cleanup record. A run whose Batch job is
still RUNNABLE, or whose ECS task is still PROVISIONING (the stand-ins hold them there, as with
no free capacity), has not started: the aws-batch worker terminates the job, the sciflow-ecs
worker stops the task, and nothing of it ever runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import boto3
import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.cleanup import audit
from tasks.compute.batch import JOB_STATES, TERMINAL_STATES
from tasks.compute.launches import Launch
from tests.compute.moto_batch import REGION
from tests.e2e.conftest import (
    BATCH_POOL,
    BATCH_QUEUE,
    REPO,
    WORK_POOL,
    PrefectServer,
    Service,
)
from tests.e2e.crash_victim import PID_FILE
from tests.e2e.test_ecs_pool import REGION as ECS_REGION
from tests.e2e.test_ecs_pool import EcsPool, _deploy_and_run, _stopped_task, ecs_pool  # noqa: F401
from tests.standin.containers import wait_for
from tests.standin.ecs import EcsStandIn

pytestmark = pytest.mark.e2e

FLOW_NAME = "e2e-crash-victim"
ENTRYPOINT = "tests/e2e/crash_victim.py:crash_victim"
DEADLINE_S = 120.0


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


def _deploy(name: str, pool: str, job_variables: dict[str, Any] | None = None) -> str:
    with get_client(sync_client=True) as client:
        return str(
            client.create_deployment(
                flow_id=client.create_flow_from_name(FLOW_NAME),
                name=name,
                entrypoint=ENTRYPOINT,
                work_pool_name=pool,
                pull_steps=[
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
                ],
                job_variables=job_variables or {},
            )
        )


def _start(deployment_id: str) -> str:
    with get_client(sync_client=True) as client:
        return str(client.create_flow_run_from_deployment(deployment_id).id)


def _read(run_id: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _final(run_id: str, worker: Service) -> FlowRun:
    def ended() -> FlowRun | None:
        worker.check_alive()
        run = _read(run_id)
        return run if run.state is not None and run.state.is_final() else None

    return wait_for(ended, DEADLINE_S, f"flow run {run_id} in a final state")  # type: ignore[return-value]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cancelling_a_running_process_run_stops_what_it_launched_and_records_it(
    api: PrefectServer, process_worker: Service
):
    run_id = _start(_deploy("cancel-running", WORK_POOL))
    run_dir = api.storage_root / "local" / run_id
    pid_file = run_dir / PID_FILE
    flow_pid = int(
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), DEADLINE_S, "flow pid")  # type: ignore[arg-type]
    )
    [entry] = sorted((run_dir / "launches").glob("*.json"))
    sleeper = int(Launch.from_json(entry.read_text()).id)
    assert _alive(sleeper)
    assert _read(run_id).state_name == "Running"

    api.cli("flow-run", "cancel", run_id)

    assert _final(run_id, process_worker).state_name == "Cancelled"
    assert not _alive(sleeper)  # outlived its flow but for the hook
    wait_for(lambda: not _alive(flow_pid), 30, "the flow run's process exited")
    assert list((run_dir / "launches").glob("*.json")) == []
    record = audit.verify(
        Path(api.storage_root / "audit" / "local" / run_id / "cleanup_validation.json").read_text(),
        audit.audit_key(create=False),
    )
    assert record["trigger"].startswith("end of run (Cancel"), record["trigger"]
    checks = {c["name"]: c for c in record["checks"]}
    assert checks["launches stopped"]["ok"] is True
    assert record["ok"] is True
    assert not (api.scratch_root / run_id).exists()


def _queue_jobs(batch: Any) -> list[dict[str, Any]]:
    summaries = []
    for status in JOB_STATES:
        summaries += batch.list_jobs(jobQueue=BATCH_QUEUE, jobStatus=status)["jobSummaryList"]
    return summaries


def test_a_run_cancelled_while_its_batch_job_is_runnable_leaves_no_job_behind(
    api: PrefectServer, batch_worker: Service, batch_standin: Any
):
    batch = boto3.client("batch", region_name=REGION)
    deployment = _deploy(
        "cancel-pending",
        BATCH_POOL,
        {"job_queue": BATCH_QUEUE, "image": "sciflow:standin", "poll_interval_s": 0.5},
    )
    with batch_standin.held_runnable():
        run_id = _start(deployment)
        job_id = wait_for(
            lambda: _read(run_id).infrastructure_pid, DEADLINE_S, "the run's Batch job"
        )
        wait_for(
            lambda: batch.describe_jobs(jobs=[job_id])["jobs"][0]["status"] == "RUNNABLE",
            DEADLINE_S,
            "the job RUNNABLE",
        )
        pending = _read(run_id)
        assert pending.state_type == StateType.PENDING, pending.state  # Submitting, Pending
        assert pending.start_time is None

        api.cli("flow-run", "cancel", run_id)

        cancelled = _final(run_id, batch_worker)
        assert cancelled.state_name == "Cancelled", (cancelled.state, batch_worker.log())
        [job] = batch.describe_jobs(jobs=[job_id])["jobs"]
        assert job["status"] == "FAILED"
        assert run_id in job["statusReason"]  # terminated by the worker, for this run

    # Capacity comes back: the terminated job does not start.
    wait_for(lambda: not any(t.is_alive() for t in batch_standin._runners), 30, "the stand-in idle")
    assert job_id not in batch_standin.exits  # no container ever ran
    assert batch_standin.containers == {}
    assert [
        (s["jobId"], s["status"]) for s in _queue_jobs(batch) if s["status"] not in TERMINAL_STATES
    ] == []
    # The worker follows the job to its end; the run stays Cancelled (not reported Crashed).
    wait_for(lambda: f"Batch job {job_id} is FAILED" in batch_worker.log(), 30, "the job's end")
    assert _read(run_id).state_name == "Cancelled"
    with get_client(sync_client=True) as client:
        history = [state.name for state in client.read_flow_run_states(run_id)]
    assert "Running" not in history, history  # the flow never began


def test_a_run_cancelled_while_its_ecs_task_is_provisioning_leaves_no_task_behind(
    api: PrefectServer,
    ecs_pool: EcsPool,  # noqa: F811 (the fixture, imported)
    ecs_standin: EcsStandIn,
):
    ecs = boto3.client("ecs", region_name=ECS_REGION)
    with ecs_standin.held_provisioning():
        run_id = anyio.run(_deploy_and_run, api.api_url, ecs_pool.name, "mr-reconstruction", {}, {})
        task_arn = wait_for(
            lambda: (pid := _read(run_id).infrastructure_pid) and pid.split("::")[-1],
            DEADLINE_S,
            "the run's ECS task",
        )

        def status() -> str:
            [task] = ecs.describe_tasks(cluster=ecs_pool.cluster, tasks=[task_arn])["tasks"]
            return task["lastStatus"]

        assert status() == "PROVISIONING"
        pending = _read(run_id)
        assert pending.state_type == StateType.PENDING, pending.state
        assert pending.start_time is None

        api.cli("flow-run", "cancel", run_id)

        cancelled = _final(run_id, ecs_pool.worker)
        assert cancelled.state_name == "Cancelled", (cancelled.state, ecs_pool.worker.log())
        task = _stopped_task(ecs_pool.cluster, run_id)
        assert task["stopCode"] == "UserInitiated", task

    # Capacity comes back: the stopped task does not start.
    wait_for(lambda: not any(t.is_alive() for t in ecs_standin._starters), 30, "stand-in idle")
    assert task_arn not in ecs_standin.exits  # its process never ran
    assert ecs_standin.containers == {}
    assert status() == "STOPPED"
    with get_client(sync_client=True) as client:
        history = [state.name for state in client.read_flow_run_states(run_id)]
    assert "Running" not in history, history  # the flow never began
