"""Every flow's end, the same way: stop what the run launched, then clean up after it.

``sciflow_flow(name=...)`` is ``prefect.flow`` with the same hooks on completion, failure,
crash and cancellation: ``stop_launches`` (the run's launch record, ``tasks.compute.launches``)
and ``cleanup_on_exit``; and with a wall clock on every top-level run (``run_wall_time_s``).

Prefect 3.8 deployments have no timeout field, and a flow's ``timeout_seconds`` is fixed when
it is decorated, before the run's unit is known. So the run reads its unit's limit when it
starts and stops itself there: it ends ``TimedOut`` (a Failed state), and the failure hooks
stop its launches and record the cleanup, in whatever way it was started.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prefect import flow
from prefect.context import FlowRunContext
from prefect.utilities.hashing import file_hash
from prefect.utilities.timeout import timeout, timeout_async

from blocks.compute_unit import SIZE_CLASSES
from tasks.cleanup.audit import Check
from tasks.cleanup.validate import validate_run
from tasks.compute.launches import LaunchRecord, unit_of
from tasks.progress import run_logger

if TYPE_CHECKING:
    from blocks.compute_unit import ComputeUnit


class RunTimeLimitError(TimeoutError):
    """A run went past its unit's wall-time limit and was stopped."""


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


def run_wall_time_s(unit: ComputeUnit, work_pool: str | None) -> int:
    """Seconds a top-level run on ``unit`` may take: its size class's ``wall_time_s``.

    The size class is the one whose work pool the run is on. A pool serving several classes
    (a local unit's one process pool) gives the longest of theirs, and so does a run in no
    pool of the unit (called from Python): a run is never unbounded.
    """
    sizes = [size for size, pool in unit.work_pools.items() if pool == work_pool]
    return max(unit.size_limits(size).wall_time_s for size in sizes or SIZE_CLASSES)


def _over_limit(run: Any, unit: ComputeUnit, limit_s: int) -> RunTimeLimitError:
    pool = f"work pool {run.work_pool_name!r}" if run.work_pool_name else "no work pool"
    return RunTimeLimitError(
        f"flow run {run.name!r} ran past its limit of {limit_s} s (unit {unit.name!r}, "
        f"limits.<size class>.wall_time_s for {pool}) and was stopped; give a smaller job "
        "or raise the unit's limit"
    )


def _limit_of_this_run() -> tuple[Any, ComputeUnit, int] | None:
    """The running flow run, its unit and its limit; None for a subflow (its parent's bounds it)."""
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    if run is None or run.parent_task_run_id is not None:
        return None
    unit = unit_of(run.parameters)
    return run, unit, run_wall_time_s(unit, run.work_pool_name)


def _call_within(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    if (found := _limit_of_this_run()) is None:
        return fn(*args, **kwargs)
    run, unit, limit_s = found
    try:
        with timeout(limit_s, timeout_exc_type=RunTimeLimitError):
            return fn(*args, **kwargs)
    except RunTimeLimitError:
        raise _over_limit(run, unit, limit_s) from None


async def _call_async_within(fn: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    if (found := _limit_of_this_run()) is None:
        return await fn(*args, **kwargs)
    run, unit, limit_s = found
    try:
        with timeout_async(limit_s, timeout_exc_type=RunTimeLimitError):
            return await fn(*args, **kwargs)
    except RunTimeLimitError:
        raise _over_limit(run, unit, limit_s) from None


def within_wall_time(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` stopped with ``RunTimeLimitError`` once its run is past ``run_wall_time_s``.

    Prefect's own timeout (an alarm in the main thread, else an exception raised into the
    flow's thread) interrupts it; Prefect records ``TimedOut`` and runs the failure hooks.
    """
    if inspect.iscoroutinefunction(fn):
        call_async = _call_async_within

        async def limited(*args: Any, **kwargs: Any) -> Any:
            return await call_async(fn, args, kwargs)

    else:
        call = _call_within

        def limited(*args: Any, **kwargs: Any) -> Any:
            return call(fn, args, kwargs)

    # Prefect resolves the parameters' string annotations (``from __future__ import
    # annotations``) in the globals of the function it is given: give the wrapper fn's. Its
    # code reads only its closure, so it runs the same with them.
    limited = types.FunctionType(
        limited.__code__, fn.__globals__, fn.__name__, None, limited.__closure__
    )
    return functools.update_wrapper(limited, fn)


# Stop first, then clean up: cleanup's checks should see what stopping left.
END_HOOKS = (stop_launches, cleanup_on_exit)


def sciflow_flow(**kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``prefect.flow(**kwargs)`` with ``END_HOOKS`` on every way a run can end.

    The function runs ``within_wall_time``; the flow's version stays the hash of the
    function's own file, as ``prefect.flow`` makes it.

    Example:
        ```python
        @sciflow_flow(name="mr-reconstruction")
        def mr_reconstruction(raw_uri: str, unit: str = "local") -> ReconResult: ...
        ```
    """
    hooks = list(END_HOOKS)
    version = kwargs.pop("version", None)

    def decorate(fn: Callable[..., Any]) -> Any:
        source = inspect.getsourcefile(fn)
        return flow(
            within_wall_time(fn),
            on_completion=hooks,
            on_failure=hooks,
            on_crashed=hooks,
            on_cancellation=hooks,
            version=version or (file_hash(source) if source else None),
            **kwargs,
        )

    return decorate
