"""Child processes that end with their starter: start, read their output, stop their group.

MPI jobs and training processes are started the same way: in their own process group (so
stopping one stops what it started), with a parent-death signal (so a killed flow run takes
them along), and with their output read line by line on threads.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
from typing import IO

# prctl(PR_SET_PDEATHSIG): a child gets a signal when the thread that started it ends.
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def kill_with_parent() -> None:
    """A ``preexec_fn``: on Linux the child gets SIGTERM when its starter goes away.

    So a flow run that is killed (cancelled from the UI, say) takes its processes with it
    instead of leaving them running. Elsewhere it does nothing.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def read_lines(stream: IO[bytes], name: str, lines: queue.Queue[tuple[str, str | None]]) -> None:
    """Put ``(name, line)`` for each line of ``stream`` on ``lines``, then ``(name, None)``."""
    with stream:
        for raw in iter(stream.readline, b""):
            lines.put((name, raw.decode(errors="replace").rstrip("\r\n")))
    lines.put((name, None))


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process's group (launchers pass it on), then SIGKILL after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
