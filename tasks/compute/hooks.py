"""Every flow's end, the same way: stop what the run launched, then clean up after it.

``sciflow_flow(name=...)`` is ``prefect.flow`` with the same hooks on completion, failure,
crash and cancellation: ``stop_launches`` (the run's launch record, ``tasks.compute.launches``)
and ``cleanup_on_exit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow

from tasks.cleanup.audit import Check
from tasks.cleanup.validate import validate_run
from tasks.compute.launches import LaunchRecord, unit_of
from tasks.progress import run_logger


def stop_launches(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: stop everything the run's launch record holds.

    Reads the record from the run directory, so it works in whichever process Prefect runs it.
    It leaves alone the Batch job the flow itself runs in: ``prefect flow-run execute`` runs
    the cancellation hooks before it records Cancelled, so terminating that job from here
    killed the process that was to record it (the run stayed Cancelling). The job ends when
    the flow's process exits, and a multi-node job whose main node exits stops its others.
    """
    record = LaunchRecord.of_run(unit_of(flow_run.parameters), str(flow_run.id))
    stopped = record.stop_all(f"Prefect flow run {flow_run.id} was {state.name.lower()}")
    if stopped:
        run_logger().info(
            "stopped %s", ", ".join(f"{launch.kind} {launch.id}" for launch in stopped)
        )


def cleanup_on_exit(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: run the cleanup checks when a run ends, however it ends, and seal the record.

    Hooks run in the flow run's process, so this calls the checks directly rather than
    starting a subflow whose own run could be cancelled with its parent. A hook cannot fail
    its run; a failed check is logged as an error, and the record says which.
    """
    run_id = str(flow_run.id)
    compute_unit = unit_of(flow_run.parameters)
    left = LaunchRecord.of_run(compute_unit, run_id).launches()
    launches = Check(
        "launches stopped",
        not left,
        "still recorded: " + ", ".join(f"{launch.kind} {launch.id}" for launch in left)
        if left
        else "none left",
    )
    record, uri = validate_run(compute_unit, run_id, f"end of run ({state.name})", [launches])
    logger = run_logger()
    if record.failed:
        logger.error(
            "cleanup after %s run %s failed: %s; record at %s",
            state.name,
            run_id,
            "; ".join(f"{c.name}: {c.detail}" for c in record.failed),
            uri,
        )
    else:
        logger.info(
            "cleanup after %s run %s: %d checks passed", state.name, run_id, len(record.checks)
        )


# Stop first, then clean up: cleanup's checks should see what stopping left.
END_HOOKS = (stop_launches, cleanup_on_exit)


def sciflow_flow(**kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``prefect.flow(**kwargs)`` with ``END_HOOKS`` on every way a run can end.

    Example:
        ```python
        @sciflow_flow(name="mr-reconstruction")
        def mr_reconstruction(raw_uri: str, unit: str = "local") -> ReconResult: ...
        ```
    """
    hooks = list(END_HOOKS)
    return flow(
        on_completion=hooks,
        on_failure=hooks,
        on_crashed=hooks,
        on_cancellation=hooks,
        **kwargs,
    )
