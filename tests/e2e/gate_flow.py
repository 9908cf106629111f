"""A flow that runs until a file appears: a run that holds its concurrency slot on demand."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow


@flow(name="e2e-gate")
def wait_for_gate(gate: str, timeout_s: float = 180.0) -> str:
    """Return once the file ``gate`` exists; fail after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} not opened after {timeout_s:.0f} s")
        time.sleep(0.1)
    return gate
