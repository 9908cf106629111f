"""Retries for transient faults only: throttling, 5xx, lost nodes; never for bad input."""

from __future__ import annotations

from typing import Any

from tasks.errors import is_transient

# Backoff in seconds between attempts; jitter spreads retries of many tasks apart.
TRANSIENT_DELAYS_S = [5, 20, 60, 180]
TRANSIENT_JITTER = 0.5


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the task raised a ``TransientError``."""
    try:
        state.result()
    except Exception as exc:  # the state's own exception, judged by its type
        return is_transient(exc)
    return False


def transient_retries(delays_s: list[int] | None = None) -> dict[str, Any]:
    """Keyword arguments for ``@task`` that retry transient faults with backoff and jitter.

    Example:
        ```python
        @task(**transient_retries())
        def upload(path: str) -> str: ...
        ```
    """
    delays = TRANSIENT_DELAYS_S if delays_s is None else delays_s
    return {
        "retries": len(delays),
        "retry_delay_seconds": list(delays),
        "retry_jitter_factor": TRANSIENT_JITTER,
        "retry_condition_fn": retry_if_transient,
    }
