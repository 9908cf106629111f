"""Plumbing of benchmarks/training.py: one real tiny DDP run, and the JSON record's shape.

No speed is asserted: the figures depend on the machine. The record test replaces the
training runs with fixed event streams so it checks selection, ratios and the file alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import benchmarks._common
from benchmarks import training


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: nothing here calls Prefect (saves ~10 s)."""


def _fake_run(rate: float, wait: float) -> training.Run:
    steps = [{"event": "step", "samples_per_s": rate, "data_wait": wait} for _ in range(4)]
    done = {
        "event": "done",
        "samples_per_s": rate / 2,
        "samples_per_s_per_process": [rate / 2],
        "data_wait_fraction": wait,
        "seconds": 1.0,
        "steps": 8,
        "device": "cpu",
    }
    return training.Run(steps=steps, step_times=[0.0, 1.0, 2.0, 3.0], done=done, wall_s=2.0)


def test_quick_run_reports_steady_rates(tmp_path: Path) -> None:
    dataset = training.write_dataset(tmp_path, training.CPU_QUICK)

    run = training.train_once(dataset, training.CPU_QUICK, tmp_path, procs=1, loader_workers=1)

    assert len(run.steps) == training.CPU_QUICK.steps // training.CPU_QUICK.log_every
    assert run.samples_per_s > 0
    assert 0 <= run.data_wait_pct <= 100
    assert run.done["steps"] == training.CPU_QUICK.steps
    assert run.done["device"] == "cpu"


def test_record_has_metrics_ratios_and_skipped_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(benchmarks._common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(training, "_cuda_available", lambda: (False, "skipped: no CUDA"))
    fakes = {
        (1, 1): (100.0, 0.01),
        (2, 1): (180.0, 0.02),
        (2, 0): (150.0, 0.2),
        (1, 0): (90.0, 0.1),
    }

    def fake_train_once(*_: Any, procs: int, loader_workers: int, **__: Any) -> training.Run:
        return _fake_run(*fakes[procs, loader_workers])

    monkeypatch.setattr(training, "train_once", fake_train_once)
    probe = {"one_process_samples_per_s": 10.0, "two_processes_samples_per_s": 19.0, "ratio": 1.9}
    monkeypatch.setattr(training, "machine_scaling", lambda *_: probe)

    assert training.main(["--quick", "--out", str(tmp_path / "out")]) == 0

    record = json.loads((tmp_path / "out" / "training.json").read_text())
    assert record == json.loads((tmp_path / "results" / "training.json").read_text())
    assert record["benchmark"] == "training"
    assert {"machine", "versions", "args", "timestamp", "cpu", "cuda"} <= set(record)
    assert record["cuda"] == {"status": "skipped", "reason": "skipped: no CUDA"}
    metrics = record["metrics"]
    assert set(metrics) == {
        "ddp_scaling_1_to_2",
        "ddp_scaling_1_to_2_workers_0",
        "data_wait_share",
    }
    for metric in metrics.values():
        assert isinstance(metric["ratio"], float)
        assert metric["ratio"] > 0
        assert math.isfinite(metric["ratio"])
        assert metric["baseline_name"]
        assert isinstance(metric["goal_met"], bool)
    assert metrics["ddp_scaling_1_to_2"]["ratio"] == pytest.approx(1.8)
    assert metrics["ddp_scaling_1_to_2"]["baseline_name"].startswith("ddp-1-process")
    assert metrics["data_wait_share"]["ours"] == pytest.approx(2.0)
    assert metrics["data_wait_share"]["baseline_name"].startswith("loader-workers-0")
    assert set(record["cpu"]["runs"]) == {
        "ddp-1-process",
        "ddp-2-processes",
        "loader-workers-0",
        "ddp-1-process-workers-0",
    }
