"""As a user: ``prefect flow-run cancel`` on a deployment run, running or still pending.

A real server and workers started as sciflow starts them (``PREFECT_WORKER_ENABLE_CANCELLATION``
set, tests/e2e/conftest.py). A running run on the process pool is cancelled inside its own
process: its hooks stop what it launched and seal the cleanup record. A run whose Batch job is
still RUNNABLE (the stand-in holds it there, as a queue with no free capacity) has not started:
the aws-batch worker terminates the job, and nothing of it ever runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from tests.standin.containers import wait_for

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
