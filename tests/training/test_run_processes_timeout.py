"""run_processes stops every process group at its timeout: a real process and its child."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tasks.training import launch
from tasks.training.launch import TrainingTimedOut, run_processes

# A parent that starts a child (as torchrun starts its ranks), both printing their pid.
PARENT = (
    "import subprocess, sys, os, time; print('PID', os.getpid(), flush=True); "
    "subprocess.Popen([sys.executable, '-c', "
    "'import os, time; print(\"PID\", os.getpid(), flush=True); time.sleep(120)']); "
    "time.sleep(120)"
)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_processes_past_the_timeout_are_stopped_with_their_children():
    pids: list[int] = []

    def remember(name: str, line: str) -> None:
        if line.startswith("PID "):
            pids.append(int(line.split()[1]))

    start = time.monotonic()
    with pytest.raises(TrainingTimedOut, match=r"training ran past its 2 s limit; stopped it"):
        run_processes({"torchrun": [sys.executable, "-c", PARENT]}, on_line=remember, timeout_s=2)
    assert time.monotonic() - start < 2 + 2 * launch.KILL_GRACE_S + 2
    assert len(pids) == 2  # parent and child had both started: the limit cut them short
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(p) for p in pids), pids
