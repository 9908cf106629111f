"""The parameter server admits only the run's processes and refuses poisoned gradients.

Real processes on 127.0.0.1: a server, its workers, and peers that play the attacker.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch.distributed as dist

from tasks.compute import channel
from tasks.training.config import TrainConfig
from tasks.training.data import write_synthetic_set
from tasks.training.launch import local_parameter_server, run_processes

TOKEN = channel.new_token()


def _config(tmp: Path, dataset: str, name: str, **fields: Any) -> str:
    cfg = TrainConfig(
        **{
            "dataset": dataset,
            "model": "linear",
            "strategy": "parameter_server",
            "procs_per_node": 2,
            "output": str(tmp / name),
            "batch_size": 8,
            "epochs": 2,
            "lr": 1e-2,
            "checkpoint_every": 8,
            "log_every": 4,
            "loader_workers": 0,
            "device": "cpu",
            **fields,
        }
    )
    path = tmp / f"{name}.json"
    path.write_text(cfg.model_dump_json())
    return str(path)


class _Run:
    """``run_processes`` on a thread; its events in a queue."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(commands,), daemon=True)
        self.thread.start()

    def _run(self, commands: dict[str, list[str]]) -> None:
        try:
            run_processes(
                commands,
                on_event=lambda name, event: self.events.put((name, event)),
                env={channel.TOKEN_VARIABLE: TOKEN},
                timeout_s=180,
            )
        except BaseException as exc:  # handed to the test
            self.error = exc

    def wait_for(self, kind: str, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                name, event = self.events.get(timeout=0.2)
            except queue.Empty:
                if not self.thread.is_alive():
                    break
                continue
            self.seen.append((name, event))
            if event["event"] == kind:
                return event
        raise AssertionError(f"no {kind!r} event; error {self.error!r}; seen {self.seen}")

    def join(self) -> list[dict[str, Any]]:
        self.thread.join(180)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        while not self.events.empty():
            self.seen.append(self.events.get())
        return [event for _, event in self.seen]


def _take_a_rank(port: int) -> int:
    """What a stranger did to the old server: join its store and take the next worker rank."""
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5))
    return int(store.add("ps/next-rank", 1))


def test_peers_without_the_token_are_refused_and_training_completes(tmp_path):
    """Guards against the open server of old: its TCPStore listened on every interface and a
    peer with no token could join it and take a worker's rank (``ps/next-rank``), or speak to
    it at all. Now the server listens on 127.0.0.1 only, a store client and peers with a
    wrong or empty token are all dropped, and the run trains to its usual end."""
    dataset = str(tmp_path / "set")
    write_synthetic_set(dataset, train=64, validation=16, size=16, seed=5)
    commands = local_parameter_server(_config(tmp_path, dataset, "run"), workers=2)
    server = _Run({"server": commands.pop("server")})
    rank = server.wait_for("rank")
    port = int(rank["port"])

    # Nothing of the server's listens on every interface: only 127.0.0.1.
    listening = [
        c.laddr
        for c in psutil.Process(int(rank["pid"])).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the server listens on nothing"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}, listening

    # The old attack: join the store as a client and take a worker's rank.
    with pytest.raises((RuntimeError, OSError)):
        _take_a_rank(port)
    # A peer with a wrong token and one with an empty token both fail.
    with pytest.raises(channel.AuthenticationFailed):
        channel.connect("127.0.0.1", port, channel.new_token().encode(), timeout_s=15)
    with pytest.raises(channel.AuthenticationFailed):
        channel.connect("127.0.0.1", port, b"", timeout_s=15)

    workers = _Run(commands)  # the run's own workers, with the token
    events = server.join() + workers.join()

    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(4, 33, 4))
    assert steps[-1]["loss"] < steps[0]["loss"]
    (done,) = [e for e in events if e["event"] == "done"]
    assert done["steps"] == 32
    assert done["refused_connections"] >= 3
    assert done["refused_gradients"] == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["refused_connections"] == done["refused_connections"]


def test_a_nan_gradient_is_refused_counted_and_the_model_stays_finite(tmp_path):
    """Guards against a poisoned gradient: one NaN pushed to the server made every parameter
    NaN for good (Adam applies it), so the model and its losses ended NaN. Here one training
    input is NaN, so the worker whose share holds it pushes a NaN gradient once per epoch; the
    server refuses each, counts them (events, metrics.json) and the model ends finite."""
    dataset = str(tmp_path / "set")
    write_synthetic_set(dataset, train=64, validation=16, size=16, seed=5)
    poisoned = tmp_path / "set" / "samples" / "00000_input.npy"
    image = np.load(poisoned)
    np.save(poisoned, np.full_like(image, np.nan))

    run = _Run(local_parameter_server(_config(tmp_path, dataset, "run"), workers=2))
    events = run.join()

    refused = [e for e in events if e["event"] == "refused"]
    assert len(refused) == 2  # the poisoned sample is in one batch of each of the 2 epochs
    assert [e["refused_gradients"] for e in refused] == [1, 2]
    (done,) = [e for e in events if e["event"] == "done"]
    assert done["refused_gradients"] == 2
    assert done["steps"] == 30  # 32 batches, 2 refused
    assert np.isfinite(done["final_loss"])
    assert np.isfinite(done["val_loss"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["refused_gradients"] == 2
    assert np.isfinite(metrics["history"]["val_loss"]).all()
    # The run's last update is still validated and checkpointed.
    assert [e["step"] for e in events if e["event"] == "validation"][-1] == 30
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt"))[-1] == (
        "step-000000030.pt"
    )
