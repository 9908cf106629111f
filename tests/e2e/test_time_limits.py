"""As a user: a deployment run past its unit's wall time is stopped and cleaned up.

A real server and process worker. The unit ``e2e-limited`` (local) allows each size class the
shortest wall time a unit may set; a run of ``tests/e2e/crash_victim.py`` on it launches a
``sleep`` that outlives it and waits far longer. The run stops itself at the limit
(``tasks.compute.hooks.within_wall_time``): it ends TimedOut, its hooks stop the ``sleep`` and
seal a cleanup record that says so.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.compute_unit import DEFAULT_LIMITS, MIN_WALL_TIME_S, SIZE_CLASSES, ComputeUnit
from tasks.cleanup import audit
from tasks.compute.launches import Launch
from tests.e2e.conftest import REPO, WORK_POOL, PrefectServer, Service
from tests.e2e.crash_victim import PID_FILE
from tests.standin.containers import wait_for

pytestmark = pytest.mark.e2e

UNIT = "e2e-limited"
# The run's start (a fresh Python process, imports, the unit read from the server) and its
# hooks on top of the limit.
SLACK_S = 90.0


@pytest.fixture
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


@pytest.fixture
def limited_deployment(api: PrefectServer, process_worker: Service) -> str:
    """The unit, and crash_victim deployed on the process pool to run on it."""
    limits = {
        size: DEFAULT_LIMITS[size].model_copy(update={"wall_time_s": MIN_WALL_TIME_S})
        for size in SIZE_CLASSES
    }
    ComputeUnit(name=UNIT, limits=limits).save(UNIT, overwrite=True)
    with get_client(sync_client=True) as client:
        return str(
            client.create_deployment(
                flow_id=client.create_flow_from_name("e2e-crash-victim"),
                name="time-limit",
                entrypoint="tests/e2e/crash_victim.py:crash_victim",
                work_pool_name=WORK_POOL,
                parameters={"unit": UNIT, "hold_s": 10 * MIN_WALL_TIME_S},
                pull_steps=[
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
                ],
            )
        )


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_run_past_its_wall_time_is_stopped_and_its_cleanup_says_so(
    api: PrefectServer, process_worker: Service, limited_deployment: str
):
    with get_client(sync_client=True) as client:
        run_id = str(client.create_flow_run_from_deployment(limited_deployment).id)
    run_dir = api.storage_root / UNIT / run_id
    pid_file = run_dir / PID_FILE
    wait_for(pid_file.exists, SLACK_S, "the flow running")
    [entry] = sorted((run_dir / "launches").glob("*.json"))
    sleeper = int(Launch.from_json(entry.read_text()).id)
    assert _alive(sleeper)

    def ended() -> FlowRun | None:
        process_worker.check_alive()
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        return run if run.state is not None and run.state.is_final() else None

    run: FlowRun = wait_for(ended, MIN_WALL_TIME_S + SLACK_S, "the run's end")  # type: ignore[assignment]

    assert run.state_name == "TimedOut", run.state
    message = run.state.message if run.state else None
    assert message is not None
    assert f"ran past its limit of {MIN_WALL_TIME_S} s (unit '{UNIT}'" in message
    assert f"work pool '{WORK_POOL}'" in message
    assert run.total_run_time.total_seconds() >= MIN_WALL_TIME_S
    # Prefect records TimedOut, then runs the failure hooks: stop, then the sealed record.
    record_path = api.storage_root / "audit" / UNIT / run_id / "cleanup_validation.json"
    wait_for(record_path.exists, 30, "the cleanup record")
    assert not _alive(sleeper)
    assert list((run_dir / "launches").glob("*.json")) == []
    record = audit.verify(record_path.read_text(), audit.audit_key(create=False))
    assert record["trigger"] == "end of run (TimedOut)"
    checks = {c["name"]: c for c in record["checks"]}
    assert checks["launches stopped"]["ok"] is True
    assert record["ok"] is True
    assert not (api.scratch_root / run_id).exists()
