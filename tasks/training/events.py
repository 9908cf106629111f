"""Training processes report to whoever launched them as tagged JSON lines on stdout.

One protocol for ``torchrun`` ranks, parameter-server processes and AWS containers (whose
stdout reaches CloudWatch): the flow reads the same lines from a pipe or from the logs.

Events (``event`` field): ``rank`` (a process started: rank, pid, device), ``start``
(resumed step, total steps), ``step`` (loss, samples/s, data-wait share), ``checkpoint``,
``validation``, ``done`` (final numbers).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from tasks.errors import SciflowError

PREFIX = "SCIFLOW-TRAIN "


def format_event(event: str, **fields: Any) -> str:
    """One event line, without its newline."""
    return PREFIX + json.dumps({"event": event, **fields}, separators=(",", ":"))


def emit(event: str, **fields: Any) -> None:
    """Write one event line to stdout at once.

    One ``write`` of the whole line: ranks share torchrun's pipe, and a line written in
    pieces could interleave with another rank's.
    """
    os.write(1, (format_event(event, **fields) + "\n").encode())


def parse_event(line: str) -> dict[str, Any] | None:
    """The event in an output line, or ``None`` for any other line.

    Launchers may put a label before it (torchrun's ``[rank0]:``), so the tag is searched.
    """
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def exit_status(program: Callable[[], object]) -> int:
    """Run a process's program: 0, or 2 after one ``error`` event for a ``SciflowError``.

    The launcher shows the event's message; a traceback would bury it.
    """
    try:
        program()
    except SciflowError as exc:
        emit("error", message=str(exc), kind=type(exc).__name__)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
