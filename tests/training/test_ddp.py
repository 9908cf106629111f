"""DDP for real: ``torchrun`` ranks on 127.0.0.1 with gloo, checked against one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tasks.training.config import TrainConfig
from tasks.training.data import write_synthetic_set
from tasks.training.events import parse_event
from tasks.training.launch import TrainingFailed, free_port, run_processes, torchrun_argv


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """64 training pairs of 16x16 images."""
    root = tmp_path_factory.mktemp("set")
    write_synthetic_set(str(root), train=64, validation=16, size=16, seed=3)
    return str(root)


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """128 pairs of 32x32 images: 4 epochs of training outlast the kill by ~1 s."""
    root = tmp_path_factory.mktemp("long-set")
    write_synthetic_set(str(root), train=128, validation=16, size=32, seed=4)
    return str(root)


# Kill tests train 64 steps and kill at step 4: the rest takes long enough (unet width 16
# on 32x32) that the signal lands mid-run.
LONG = {"epochs": 4, "model_options": {"width": 16, "depth": 2}}


def _config(tmp: Path, dataset: str, name: str, **fields: Any) -> str:
    defaults: dict[str, Any] = {
        "dataset": dataset,
        "model": "unet",
        "model_options": {"width": 8, "depth": 2},
        "output": str(tmp / name),
        "batch_size": 8,
        "epochs": 2,
        "lr": 3e-3,
        "checkpoint_every": 4,
        "log_every": 2,
        "loader_workers": 0,
        "device": "cpu",
    }
    cfg = TrainConfig(**{**defaults, **fields})
    path = tmp / f"{name}.json"
    path.write_text(cfg.model_dump_json())
    return str(path)


def _train(config: str, procs: int, **kwargs: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    on_event = kwargs.pop("on_event", None)

    def record(name: str, event: dict[str, Any]) -> None:
        seen.append(event)
        if on_event is not None:
            on_event(event)

    run_processes({"torchrun": torchrun_argv(config, procs_per_node=procs, **kwargs)},
                  on_event=record, timeout_s=180)  # fmt: skip
    return seen


def _weights(output: Path) -> dict[str, torch.Tensor]:
    return torch.load(output / "model" / "state_dict.pt", weights_only=True)


def test_two_ranks_take_the_same_steps_as_one_process_with_the_same_global_batch(tmp_path, dataset):
    one = _config(tmp_path, dataset, "one", procs_per_node=1)
    two = _config(tmp_path, dataset, "two", procs_per_node=2)
    _train(one, 1)
    events = _train(two, 2)

    done = next(e for e in events if e["event"] == "done")
    assert done["steps"] == 16  # 2 epochs x 64 samples / batch 8
    assert len(done["samples_per_s_per_process"]) == 2
    single, double = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert single.keys() == double.keys()
    initial = torch.load(tmp_path / "one" / "checkpoints" / "step-000000016.pt", weights_only=True)
    moved = max(float((single[k] - initial["model"][k]).abs().max()) for k in single)
    assert moved == 0.0  # the final checkpoint is the final model
    for key in single:
        torch.testing.assert_close(double[key], single[key], atol=1e-5, rtol=0)
    # Not trivially equal: training changed the parameters from their start.
    torch.manual_seed(0)
    from tasks.training.models import build_model

    start = build_model("unet", width=8, depth=2).state_dict()
    assert max(float((single[k] - start[k]).abs().max()) for k in single) > 1e-3


def _pids(events: list[dict[str, Any]]) -> dict[int, int]:
    return {e["rank"]: e["pid"] for e in events if e["event"] == "rank"}


def test_a_killed_rank_fails_the_run_and_the_rerun_resumes_from_its_last_checkpoint(
    tmp_path, long_dataset
):
    whole = _config(tmp_path, long_dataset, "whole", **LONG)
    broken = _config(tmp_path, long_dataset, "broken", **LONG)
    events: list[dict[str, Any]] = []

    def kill_after_first_checkpoint(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "checkpoint" and event["step"] == 4:
            os.kill(_pids(events)[1], signal.SIGKILL)

    with pytest.raises(TrainingFailed, match="torchrun"):
        _train(broken, 2, on_event=kill_after_first_checkpoint)
    assert not any(e["event"] == "done" for e in events)
    saved = sorted(p.name for p in (tmp_path / "broken" / "checkpoints").glob("*.json"))
    assert saved
    assert saved[-1] < "step-000000064.json"

    resumed = _train(broken, 2)
    start = next(e for e in resumed if e["event"] == "start")
    last_saved = int(saved[-1].removeprefix("step-").removesuffix(".json"))
    assert start["resumed"]
    assert start["step"] == last_saved >= 4
    steps = [e["step"] for e in resumed if e["event"] == "step"]
    assert steps[0] > last_saved  # the counter continues, it does not restart at 0

    uninterrupted = _train(whole, 2)
    final = next(e for e in uninterrupted if e["event"] == "done")
    again = next(e for e in resumed if e["event"] == "done")
    assert again["steps"] == final["steps"] == 64
    assert again["val_loss"] == pytest.approx(final["val_loss"], rel=1e-4)
    for key, value in _weights(tmp_path / "whole").items():
        torch.testing.assert_close(_weights(tmp_path / "broken")[key], value, atol=1e-5, rtol=0)


def test_torchrun_restarts_a_killed_rank_and_the_job_resumes_within_the_run(tmp_path, long_dataset):
    config = _config(tmp_path, long_dataset, "restarted", **LONG)
    events: list[dict[str, Any]] = []
    killed: list[int] = []

    def kill_once(event: dict[str, Any]) -> None:
        events.append(event)
        if event["event"] == "checkpoint" and event["step"] == 4 and not killed:
            killed.append(_pids(events)[0])
            os.kill(killed[0], signal.SIGKILL)

    _train(config, 2, max_restarts=1, on_event=kill_once)
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2
    assert starts[1]["resumed"]
    assert starts[1]["step"] >= 4
    assert next(e for e in events if e["event"] == "done")["steps"] == 64


def test_two_batch_nodes_on_loopback_train_like_two_ranks_on_one_node(tmp_path, dataset):
    """The Batch node entrypoint, started as AWS Batch starts it on each node of a 2-node job."""
    one_node = _config(tmp_path, dataset, "one-node")
    two_nodes = _config(tmp_path, dataset, "two-nodes", nodes=2, procs_per_node=1)
    _train(one_node, 2)
    command = [sys.executable, "-m", "tasks.training.launch", "node", "--config", two_nodes]
    command += ["--procs-per-node", "1", "--port", str(free_port())]
    batch_env = {
        "AWS_BATCH_JOB_NUM_NODES": "2",
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
        "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "127.0.0.1",
    }
    logs = [tmp_path / f"node-{index}.log" for index in (0, 1)]
    nodes = []
    for index, log in enumerate(logs):
        with log.open("w") as out:  # files, not pipes: neither node can block on a full pipe
            env = {**os.environ, **batch_env, "AWS_BATCH_JOB_NODE_INDEX": str(index)}
            nodes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
    codes = [node.wait(timeout=180) for node in nodes]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]

    events = [parse_event(line) for log in logs for line in log.read_text().splitlines()]
    assert sorted(e["rank"] for e in events if e and e["event"] == "rank") == [0, 1]
    for key, value in _weights(tmp_path / "one-node").items():
        torch.testing.assert_close(_weights(tmp_path / "two-nodes")[key], value, atol=1e-5, rtol=0)
