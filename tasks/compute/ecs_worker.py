"""The ``sciflow-ecs`` Prefect worker: prefect-aws's ECS worker, plus cancelling before the flow.

Start one with ``prefect worker start --type sciflow-ecs --pool <pool>``; Prefect finds the type
through the ``prefect.collections`` entry point in ``pyproject.toml``. Its pools take
prefect-aws's ECS base job templates as they are (``deployments/work-pools/ecs-*.json``), and
it runs each flow run as prefect-aws's ``ECSWorker`` does: task definition, RunTask, crash
detection by prefect-aws's ECS observer.

What it adds: prefect-aws's worker reports a run started as soon as RunTask answers, and a Prefect
3.8 worker (``PREFECT_WORKER_ENABLE_CANCELLATION=true``) stops the infrastructure of a cancelled
run only until then. A task can wait PROVISIONING for long (no free capacity) with no flow
engine in it yet to notice a cancel, and the run would stay Cancelling. So ``run`` follows the
task until its flow begins (``start_time`` set) or the task stops: a run cancelled before its
flow began has its task stopped (StopTask) and is marked Cancelled; nothing of it runs. Once
the flow has begun, the engine in the container handles cancelling, as under prefect-aws's
worker.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from prefect_aws.workers.ecs_worker import (
    ECSJobConfiguration,
    ECSWorker,
    ECSWorkerResult,
    parse_identifier,
)

from tasks.aws.clients import client
from tasks.compute.worker_cancel import cancel_if_not_begun

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

WORKER_TYPE = "sciflow-ecs"
# Seconds between looks at a task whose flow has not begun (prefect-aws's former
# task_watch_poll_interval default).
ECS_WATCH_POLL_INTERVAL_S = 5.0


def last_status(ecs: Any, cluster: str, task_arn: str) -> str:
    """The task's ``lastStatus`` (``PROVISIONING`` ... ``STOPPED``); ``STOPPED`` if ECS lost it."""
    tasks = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"]
    return str(tasks[0]["lastStatus"]) if tasks else "STOPPED"


class SciflowEcsWorker(ECSWorker):
    """prefect-aws's ECS worker that also stops the task of a run cancelled before it began."""

    type: str = WORKER_TYPE
    _description = (
        "Execute flow runs as AWS ECS tasks (prefect-aws's ECS worker); a run cancelled while "
        "its task is still provisioning has its task stopped."
    )
    _display_name = "AWS ECS (sciflow)"

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ECSJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> ECSWorkerResult:
        """Run the task as prefect-aws does, then watch for a cancel until its flow begins.

        Returns:
            prefect-aws's result: the ``cluster::task`` identifier and 0 (its observer reports
            a task that stops unexpectedly).
        """
        result = await super().run(flow_run, configuration, task_status)
        cluster, task_arn = parse_identifier(result.identifier)
        ecs = await anyio.to_thread.run_sync(
            partial(client, "ecs", credentials=configuration.aws_credentials)
        )
        what = f"ECS task {task_arn}"
        while await anyio.to_thread.run_sync(last_status, ecs, cluster, task_arn) != "STOPPED":
            progress = await cancel_if_not_begun(
                self, flow_run, result.identifier, configuration, what
            )
            if progress != "waiting":
                break
            await anyio.sleep(ECS_WATCH_POLL_INTERVAL_S)
        return result
