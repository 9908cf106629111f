"""A flow that waits to be cancelled, with the hooks every sciflow flow carries."""

from __future__ import annotations

import time

from tasks.compute.hooks import sciflow_flow


@sciflow_flow(name="batch-cancel-e2e")
def wait_to_be_cancelled(seconds: float = 120.0) -> None:
    """Sleep in short steps until cancelled (or ``seconds`` pass)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
