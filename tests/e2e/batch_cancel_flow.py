"""A flow that waits to be cancelled, with the hook a Batch container's flows carry."""

from __future__ import annotations

import time

from prefect import flow

from tasks.compute.batch_worker import cancel_own_batch_job


@flow(name="batch-cancel-e2e", on_cancellation=[cancel_own_batch_job])
def wait_to_be_cancelled(seconds: float = 120.0) -> None:
    """Sleep in short steps until cancelled (or ``seconds`` pass)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
