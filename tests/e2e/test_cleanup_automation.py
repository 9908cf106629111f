"""As an operator: a sciflow flow's process is SIGKILLed; the cleanup automation cleans up.

Hooks do not run in a killed process. On a real server with a process worker: deploy
``deployments/prefect.yaml`` and a flow that launches a process which outlives it
(``tests/e2e/crash_victim.py``), install the automation as ``make deploy`` does, start the
flow, SIGKILL its process once its launch is recorded. The worker reports the run Crashed,
the automation starts ``secure-cleanup/local`` with its id, and that run stops the launched
process, removes scratch and intermediates and seals the record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from uuid import uuid4

import httpx
import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.server.events.schemas.automations import EventTrigger as ServerEventTrigger
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.settings import PREFECT_API_URL, temporary_settings

from tasks.cleanup import audit
from tasks.cleanup.automation import AUTOMATION_NAME, cleanup_automation
from tasks.compute.launches import Launch
from tests.e2e.conftest import REPO, VENV_BIN, PrefectServer, Service
from tests.e2e.crash_victim import PID_FILE

pytestmark = pytest.mark.e2e

VICTIM = "e2e-crash-victim/e2e"
CLEANUP = "secure-cleanup/local"
DEADLINE_S = 120.0
T = TypeVar("T")


def poll(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE_S) -> T:
    """``probe()`` once it returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.25)
    return value


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


@pytest.fixture(scope="module")
def automation(api: PrefectServer, process_worker: Service) -> Iterator[str]:
    """Deployments and the automation, as ``make deploy`` installs them; removed after."""
    api.cli("deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("e2e-crash-victim")
        client.create_deployment(
            flow_id=flow_id,
            name="e2e",
            entrypoint="tests/e2e/crash_victim.py:crash_victim",
            work_pool_name="sciflow-local",
            tags=["sciflow", "e2e"],  # as every deployment in deployments/prefect.yaml
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ],
        )
    installed = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "tasks.cleanup.automation"],
        cwd=REPO,
        env=api.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    assert f"automation '{AUTOMATION_NAME}'" in installed.stdout
    yield AUTOMATION_NAME
    with get_client(sync_client=True) as client:  # later e2e modules run without it
        for found in client.read_automations_by_name(AUTOMATION_NAME):
            client.delete_automation(found.id)


def _final(run_id: str) -> FlowRun | None:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
    return run if run.state is not None and run.state.is_final() else None


def _cleanup_runs_of(run_id: str) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(CLEANUP)
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
        )
    return [run for run in runs if (run.parameters or {}).get("run_id") == run_id]


def _events_of(api: PrefectServer, run_id: str, state: str) -> ReceivedEvent | None:
    body = {
        "filter": {
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
            "event": {"name": [f"prefect.flow-run.{state}"]},
        },
        "limit": 10,
    }
    with httpx.Client(trust_env=False, timeout=10) as client:
        answer = client.post(f"{api.api_url}/events/filter", json=body)
    answer.raise_for_status()
    events = answer.json()["events"]
    return ReceivedEvent.model_validate(events[0]) if events else None


def _alive(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (``is_running`` tells a reused pid by its start time)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _recorded(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "launches").glob("*.json"))


def test_a_sigkilled_flow_is_cleaned_up_by_the_automation(api, automation, process_worker):
    victim = run_deployment(VICTIM, timeout=0)
    run_id = str(victim.id)
    run_dir = api.storage_root / "local" / run_id
    pid_file = run_dir / PID_FILE
    flow_pid = int(poll("flow pid", lambda: pid_file.read_text() if pid_file.exists() else None))
    [entry] = _recorded(run_dir)
    sleeper = psutil.Process(int(Launch.from_json(entry.read_text()).id))
    assert _alive(sleeper)
    # The flow run's process, which the worker started and waits on.
    assert psutil.Process(flow_pid).ppid() == process_worker.process.pid

    os.kill(flow_pid, signal.SIGKILL)

    crashed = poll("final state", lambda: _final(run_id))
    assert crashed.state_name == "Crashed", crashed.state
    cleanup = poll(
        "finished cleanup run",
        lambda: next((r for r in _cleanup_runs_of(run_id) if r.state.is_final()), None),
    )
    assert cleanup.state_name == "Completed", cleanup.state
    assert cleanup.created_by.type == "AUTOMATION"
    assert len(_cleanup_runs_of(run_id)) == 1

    assert not _alive(sleeper)  # stopped through the launch record
    assert not (api.scratch_root / run_id).exists()
    assert not (run_dir / "tmp").exists()
    assert _recorded(run_dir) == []
    record_path = api.storage_root / "audit" / "local" / run_id / "cleanup_validation.json"
    record = audit.verify(record_path.read_text(), audit.audit_key(create=False))
    assert record["ok"] is True
    assert record["trigger"] == (
        f"secure-cleanup by automation '{AUTOMATION_NAME}' after the run was Crashed"
    )

    # The real events: the victim's Crashed one fires the trigger, the cleanup's own does not.
    trigger = ServerEventTrigger.model_validate(
        cleanup_automation("00000000-0000-0000-0000-000000000000").trigger.model_dump(mode="json")
    )
    assert trigger.covers(poll("Crashed event", lambda: _events_of(api, run_id, "Crashed")))
    own = poll("cleanup's own end", lambda: _events_of(api, str(cleanup.id), "Completed"))
    assert not trigger.covers_resources(own.resource, own.related)  # whatever its end


def test_the_scheduled_sweep_cleans_what_an_ended_run_still_holds(api, automation):
    with get_client(sync_client=True) as client:
        sweep = client.read_deployment_by_name("cleanup-sweep/local")
        schedules = client.read_deployment_schedules(sweep.id)
    assert [s.schedule.cron for s in schedules] == ["17 * * * *"]
    assert "sciflow" in sweep.tags

    ended = run_deployment(CLEANUP, parameters={"run_id": str(uuid4())}, timeout=0)
    ended = poll("the failed run's end", lambda: _final(str(ended.id)))  # an unknown id fails
    assert ended.state_name == "Failed", ended.state
    left = api.storage_root / "local" / str(ended.id) / "tmp" / "slice-0.npy"
    left.parent.mkdir(parents=True)
    left.write_bytes(b"missed")  # as if its cleanup had not run

    swept = run_deployment("cleanup-sweep/local", parameters={"older_than_hours": 0}, timeout=0)
    swept = poll("the sweep's end", lambda: _final(str(swept.id)))

    assert swept.state_name == "Completed", swept.state
    assert not left.exists()
    record_path = api.storage_root / "audit" / "local" / str(ended.id) / "cleanup_validation.json"
    record = audit.verify(record_path.read_text(), audit.audit_key(create=False))
    assert record["ok"] is True
    assert record["trigger"] == "secure-cleanup"  # the sweep's subflow, not the run's own hook
    assert _cleanup_runs_of(str(ended.id)) == []  # secure-cleanup's own failure started none
