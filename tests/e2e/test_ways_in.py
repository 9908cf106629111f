"""The README's ways in, run verbatim as a user would: `make deploy`, the CLI, Python, schedules.

Each example is the fenced block under an ``<!-- e2e: NAME -->`` marker in README.md (or
docs/), so the docs and this test cannot drift: bash blocks run in bash from the repository
root, Python blocks are saved as a file and run with ``python file.py``. Everything talks to
the session's real server (tests/e2e/conftest.py) through a real process worker.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.e2e.conftest import REPO, PrefectServer, Service, flow_run_id_from

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
MIGRATION = REPO / "docs" / "moving-from-mroptimum.md"
RUN_TIMEOUT_S = 180.0
SCHEDULER_TIMEOUT_S = 90.0


def example(doc: Path, name: str) -> tuple[str, str]:
    """The language and code of the fenced block right under ``<!-- e2e: name -->`` in ``doc``."""
    pattern = rf"^<!-- e2e: {re.escape(name)} -->\n```(\w+)\n(.*?)^```"
    found = re.findall(pattern, doc.read_text(), re.MULTILINE | re.DOTALL)
    assert len(found) == 1, f"{doc.name} has {len(found)} blocks marked e2e: {name}"
    return found[0]


def run_bash(code: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``code`` in bash with errexit, in a wide terminal (the CLI's tables stay readable)."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env={**env, "PWD": str(cwd), "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
        check=False,
    )


def explain(done: subprocess.CompletedProcess[str]) -> str:
    out, err = done.stdout[-4000:], done.stderr[-4000:]
    return f"exit {done.returncode}\n--- stdout\n{out}\n--- stderr\n{err}"


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """Point this process's Prefect client at the e2e server."""
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


@pytest.fixture(scope="module")
def made(api: PrefectServer) -> subprocess.CompletedProcess[str]:
    """``make deploy`` on the e2e server, as the README's set-up says.

    ``-o install``: the test's environment is installed already, and a worktree's newer
    pyproject.toml must not make this reinstall it.
    """
    done = subprocess.run(
        ["make", "-o", "install", "deploy", f"LOCAL_API={api.api_url}"],
        cwd=REPO,
        env={**api.env, "PWD": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, explain(done)
    return done


def read_run(flow_run_id: str) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def assert_snr_written(api: PrefectServer, flow_run_id: str) -> Path:
    run_dir = api.storage_root / "local" / flow_run_id
    assert (run_dir / "SNR.nii.gz").is_file(), sorted(p.name for p in run_dir.glob("*"))
    assert (run_dir / "SNR.png").read_bytes().startswith(b"\x89PNG")
    assert (run_dir / "info.json").is_file()
    return run_dir


def test_cli_example_runs_mr_reconstruction_and_watches_it_complete(
    api, made, process_worker: Service, twix_example
):
    language, code = example(README, "cli-run")
    assert language == "bash"
    done = run_bash(code, api.env)
    assert done.returncode == 0, explain(done)
    flow_run_id = flow_run_id_from(done.stdout)
    assert "finished successfully in 'Completed'" in done.stdout, explain(done)
    assert read_run(flow_run_id).state_name == "Completed"
    assert_snr_written(api, flow_run_id)


def test_python_example_returns_the_completed_flow_run(
    api, made, process_worker: Service, twix_example, tmp_path
):
    language, code = example(README, "python-run-deployment")
    assert language == "python"
    script = tmp_path / "run_recon.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env={**api.env, "PWD": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S + 60,
        check=False,
    )
    assert done.returncode == 0, explain(done)
    flow_run_id, state = done.stdout.split()[-2:]
    assert state == "Completed"
    flow_run = read_run(flow_run_id)
    assert flow_run.state_name == "Completed"
    with get_client(sync_client=True) as client:
        assert client.read_deployment(flow_run.deployment_id).name == "local"
    assert_snr_written(api, flow_run_id)


def test_migration_page_runs_an_mr_optimum_job_unchanged(
    api, made, process_worker: Service, twix_example, tmp_path
):
    """docs/moving-from-mroptimum.md: job.json in, MR Optimum's convention out."""
    language, job = example(MIGRATION, "mroptimum-job")
    assert language == "json"
    _, code = example(MIGRATION, "mroptimum-run")
    # The page says "saved as job.json in the repository root": a directory that looks like it
    # (the venv, the job) keeps the checkout clean; the worker resolves the job's file from
    # the checkout, as it would in the repository root.
    (tmp_path / "job.json").write_text(job)
    os.symlink(REPO / ".venv", tmp_path / ".venv")
    done = run_bash(code, api.env, cwd=tmp_path)
    assert done.returncode == 0, explain(done)
    run_dir = assert_snr_written(api, flow_run_id_from(done.stdout))
    info = (run_dir / "info.json").read_text()
    assert '"convention": "mroptimum"' in info


def scheduled_runs(deployment: str) -> list[FlowRun]:
    """Flow runs in a SCHEDULED state of ``<flow>/<name>``, soonest first."""
    flow, name = deployment.split("/")
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
        flow_ids = {client.read_flow_by_name(flow).id}
    return sorted((r for r in runs if r.flow_id in flow_ids), key=lambda r: r.expected_start_time)


def test_schedules_example_lists_the_sweeps_next_runs_and_no_retrain(api, made):
    """The server's scheduler has made the sweep's next runs, each at :17 UTC, an hour apart."""
    deadline = time.monotonic() + SCHEDULER_TIMEOUT_S
    while not (runs := scheduled_runs("cleanup-sweep/local")):
        assert time.monotonic() < deadline, (
            f"no scheduled cleanup-sweep runs after {SCHEDULER_TIMEOUT_S:.0f} s\n"
            f"{api.service.log()[-4000:]}"
        )
        time.sleep(0.5)
    now = datetime.now(UTC)
    starts = [r.expected_start_time for r in runs]
    assert len(starts) >= 2, starts
    assert all(s > now - timedelta(minutes=1) for s in starts), starts
    assert all((s.minute, s.second) == (17, 0) for s in starts), starts
    assert {(b - a).total_seconds() for a, b in itertools.pairwise(starts)} == {3600}
    assert starts[0] - now < timedelta(hours=1, minutes=1)
    # The nightly retrain's schedule is off: the scheduler made nothing for it.
    assert scheduled_runs("distributed-training/local") == []

    language, code = example(README, "schedules")
    assert language == "bash"
    done = run_bash(code, api.env)
    assert done.returncode == 0, explain(done)
    sweep, nightly, listed = re.split(r"(?=Deployment Schedules|Flow Runs)", done.stdout)[1:]
    assert re.search(r"cron: 17 \* \* \* \*\s*│\s*True", sweep), sweep
    assert re.search(r"cron: 0 2 \* \* \*\s*│\s*False", nightly), nightly
    for flow_run in runs[:3]:
        assert str(flow_run.id)[:8] in listed, listed
