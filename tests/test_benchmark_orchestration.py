"""Plumbing of benchmarks/orchestration.py: the direct numerics, log selection, the record.

No speed is asserted: the figures depend on the machine. The server, worker and deployment
runs (a minute or more even for the smallest job) are replaced by fakes in the record tests;
``python -m benchmarks.orchestration --quick`` runs them for real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import LogCreate

import benchmarks._common
from benchmarks import orchestration
from blocks.compute_unit import local_unit

TINY = orchestration.Job("tiny", 32, 4, 5)


def test_direct_numerics_maps_every_slice_on_the_flows_threads(tmp_path: Path) -> None:
    path = orchestration.write_input(TINY, tmp_path)

    threads = orchestration.numerics_threads(path)

    workers = local_unit().dask_workers["small"]
    assert threads == workers.n_workers * workers.threads_per_worker
    assert orchestration.direct_numerics(path, threads) == TINY.slices


def test_first_log_is_the_flow_processs_line_not_the_workers() -> None:
    @flow(name="bench-first-log")
    def says_hello() -> None:
        get_run_logger().info("hello")

    started = time.time()
    flow_run_id = says_hello(return_state=True).state_details.flow_run_id
    earlier = datetime.now(UTC) - timedelta(seconds=5)  # before any line of the flow's own
    with get_client(sync_client=True) as client:
        client.create_logs(
            [
                LogCreate(
                    name="prefect.flow_runs.worker",
                    level=20,
                    message="Worker submitting flow run",
                    timestamp=earlier,
                    flow_run_id=flow_run_id,
                )
            ]
        )

    times = orchestration.first_log_seconds(str(flow_run_id), started)

    assert times["first_flow_log"].startswith("Beginning flow run")
    assert times["worker_s"] == pytest.approx(earlier.timestamp() - started)
    assert times["worker_s"] < 0 < times["flow_s"] < time.time() - started


class _Proxy:
    def __init__(self, requests: list[str]) -> None:
        self.requests = requests


def _fake_stack(monkeypatch: pytest.MonkeyPatch, egress: list[str]) -> list[Path]:
    """No server: deployment runs take 1,000 s, first log lines 20 s (CLI) and 5 s (direct)."""
    ran: list[Path] = []

    @contextmanager
    def server_and_worker(workdir: Path) -> Iterator[orchestration.Stack]:
        yield orchestration.Stack("http://127.0.0.1:1/api", {}, _Proxy(egress), workdir)

    def deployment_run(_: Any, path: Path, record: list[dict[str, Any]]) -> float:
        ran.append(path)
        record.append({"wall_s": 1000.0, "pickup_s": 5.0, "start_s": 5.0, "running_s": 990.0})
        record[-1]["flow_timings_s"] = {"snr": 900.0}
        return 1000.0

    monkeypatch.setattr(orchestration, "server_and_worker", server_and_worker)
    monkeypatch.setattr(orchestration, "deployment_run", deployment_run)
    monkeypatch.setattr(orchestration, "cli_first_log", lambda *_: {"flow_s": 20.0})
    monkeypatch.setattr(orchestration, "direct_first_log", lambda *_: {"flow_s": 5.0})
    monkeypatch.setattr(orchestration, "SMALL", orchestration.Job("mr_small", 32, 4, 2))
    monkeypatch.setattr(orchestration, "LARGE", TINY)
    monkeypatch.setattr(benchmarks._common, "RESULTS_DIR", Path("/nonexistent"))
    return ran


def test_record_has_both_jobs_the_goal_on_the_large_one_and_first_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _fake_stack(monkeypatch, egress=[])
    monkeypatch.setattr(benchmarks._common, "RESULTS_DIR", tmp_path / "results")

    assert orchestration.main(["--repeats", "1"]) == 0

    record = json.loads((tmp_path / "results" / "orchestration.json").read_text())
    assert [p.name for p in ran] == ["mr_small.h5", "mr_small.h5", "tiny.h5"]  # small: warm-up
    metrics = record["metrics"]
    assert set(metrics) == {"mr_small", "tiny", "first_log"}
    small, large = metrics["mr_small"], metrics["tiny"]
    assert small["ours"] == large["ours"] == 1000.0
    assert small["goal"] is None
    assert small["goal_met"] is None
    assert large["goal"] == "<= 1.1x"
    assert large["goal_met"] is False
    assert large["ratio"] == pytest.approx(1000.0 / large["baseline"])
    assert large["baseline_name"].startswith("numerics called directly on ")
    assert metrics["first_log"]["ratio"] == pytest.approx(4.0)
    assert record["runs_s"]["tiny"]["deployment_runs"][0]["pickup_s"] == 5.0
    assert record["options"] == orchestration.OPTIONS


def test_a_request_beyond_loopback_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_stack(monkeypatch, egress=["CONNECT example.org:443 HTTP/1.1"])

    with pytest.raises(RuntimeError, match=r"beyond loopback.*example\.org"):
        orchestration.main(["--quick", "--repeats", "1"])


def test_the_benchmarks_worker_polls_as_make_worker_does() -> None:
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()

    assert f"WORKER_QUERY_S := {orchestration.WORKER_QUERY_S}\n" in makefile
    assert "PREFECT_WORKER_QUERY_SECONDS=$(WORKER_QUERY_S)" in makefile
