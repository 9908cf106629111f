"""Cancelling a run whose infrastructure is launched but whose flow has not begun.

A Prefect 3.8 worker started with ``PREFECT_WORKER_ENABLE_CANCELLATION=true`` kills the
infrastructure of a cancelled run only while it is still submitting it. Once ``run`` reports the
run started (a Batch job submitted, an ECS task created), a cancel is left to the flow engine in
the container, which does not exist yet while the job waits RUNNABLE or the task PROVISIONING
(no free capacity). sciflow's workers therefore call ``cancel_if_not_begun`` while they follow
what they launched, until the flow begins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from prefect.exceptions import InfrastructureNotFound

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.base import BaseJobConfiguration, BaseWorker

Progress = Literal["waiting", "begun", "cancelled"]


async def cancel_if_not_begun(
    worker: BaseWorker[Any, Any, Any],
    flow_run: FlowRun,
    infrastructure_pid: str,
    configuration: BaseJobConfiguration,
    what: str,
) -> Progress:
    """Kill the run's infrastructure if the run was cancelled before its flow began.

    Args:
        worker: The worker that launched it; its ``kill_infrastructure`` stops it.
        flow_run: The run.
        infrastructure_pid: What ``run`` reported started (job id, ``cluster::task`` ARN).
        configuration: The run's job configuration (credentials and region).
        what: The infrastructure in words, for the run's state and log ("ECS task ...").

    Returns:
        ``begun`` once the flow has begun (``start_time`` set), ``cancelled`` when the run was
        cancelled (its infrastructure is stopped and the run marked Cancelled), else ``waiting``.
    """
    current = await worker.client.read_flow_run(flow_run.id)
    if current.start_time is not None:
        return "begun"
    if current.state is None or not current.state.is_cancelling():
        return "waiting"
    try:
        await worker.kill_infrastructure(infrastructure_pid, configuration)
    except InfrastructureNotFound:
        pass  # it ended on its own meanwhile
    await worker._mark_flow_run_as_cancelled(
        current, state_updates={"message": f"Cancelled before it began; {what} stopped."}
    )
    worker.get_flow_run_logger(flow_run).info(
        "Flow run cancelled before it began: stopped %s", what
    )
    return "cancelled"
