"""One AWS Batch job per flow run: check, submit, follow to its end, terminate on the way out.

Flows that run work on Batch (the simulation's MPI job, DDP training) share this, so a
cancelled, failed or crashed flow run never leaves nodes running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from blocks.compute_unit import ComputeUnit, SizeClass
from tasks.aws.clients import client
from tasks.compute.batch import (
    JobFollower,
    RunningJob,
    attempt_timeout_s,
    check_job_definition,
    check_job_queue,
    definition_secret_names,
    submit_job,
)
from tasks.compute.launches import Launch
from tasks.compute.run_context import RunContext
from tasks.errors import InputError, SciflowError
from tasks.progress import run_logger


def check_batch_unit(unit: ComputeUnit, runtime: str) -> None:
    """Refuse a unit without a Batch queue or without the ``runtime``'s job definition."""
    if not unit.batch_job_queue:
        raise InputError(f"compute unit {unit.name!r} has no batch_job_queue")
    if runtime not in unit.batch_job_definitions:
        raise InputError(
            f"compute unit {unit.name!r} has no batch_job_definitions[{runtime!r}]; "
            f"it has {sorted(unit.batch_job_definitions)}"
        )


def batch_size_class(nodes: int, gpu: bool = False) -> SizeClass:
    """The size class whose limits bound a Batch job: ``multinode``, ``gpu``, else ``large``."""
    if nodes > 1:
        return "multinode"
    return "gpu" if gpu else "large"


def run_batch_job(
    run: RunContext,
    *,
    runtime: str,
    name: str,
    command: Sequence[str],
    nodes: int,
    size: SizeClass,
    estimate_s: float | None = None,
    environment: Mapping[str, str] | None = None,
    poll_s: float = 10.0,
    on_line: Callable[[str, str], None] | None = None,
    lost_host_retries: int = 0,
    secrets_needed: Sequence[str] = (),
) -> RunningJob:
    """Submit one (multi-node) job with the unit's ``runtime`` definition; wait for SUCCEEDED.

    Args:
        run: The flow run (unit, tags, id).
        runtime: Key of the unit's ``batch_job_definitions`` whose image runs ``command``.
        name: Job name prefix; the run id's start is appended.
        command: Command of every node.
        nodes: Nodes; 2 or more makes a multi-node parallel job.
        size: The job's size class: Batch stops it after the class's wall time (or sooner,
            from ``estimate_s``), even if this flow run is killed.
        estimate_s: The job's estimated run time in s, if there is one (``attempt_timeout_s``).
        environment: Variables for every node (on top of PYTHONUNBUFFERED=1).
        poll_s: Seconds between polls.
        on_line: Called with (node label, line) for each CloudWatch line; logged if omitted.
        lost_host_retries: Restarts by Batch after a lost instance (``submit_job``).
        secrets_needed: Variables the containers must get from the job definition's
            ``secrets`` (e.g. ``SCIFLOW_RUN_TOKEN``); checked before submitting.

    Raises:
        InputError: The unit lacks a queue or the runtime's job definition, the definition
            lacks a ``secrets_needed`` entry, or ``environment`` carries a credential in
            clear (nothing is submitted).
        SciflowError: The job ended in FAILED.
    """
    unit = run.unit
    check_batch_unit(unit, runtime)
    account = unit.aws_account()
    batch, logs = client("batch", account), client("logs", account)
    queue = check_job_queue(batch, unit.batch_job_queue)
    definition = check_job_definition(batch, unit.batch_job_definitions[runtime])
    if missing := sorted(set(secrets_needed) - definition_secret_names(batch, definition)):
        raise InputError(
            f"compute unit {unit.name!r}: batch_job_definitions[{runtime!r}] ({definition}) "
            f"gives its containers no {', '.join(missing)}; add a `secrets` entry for each "
            "(a Secrets Manager ARN the execution role reads), never an environment value"
        )
    job = submit_job(
        batch,
        name=f"{name}-{run.run_id[:8]}",
        queue=queue,
        definition=definition,
        tags=run.tags,
        environment={"PYTHONUNBUFFERED": "1", **(environment or {})},
        timeout_s=attempt_timeout_s(unit.size_limits(size).wall_time_s, estimate_s),
        command=list(command),
        node_count=nodes,
        lost_host_retries=lost_host_retries,
        api_key_from=f"the `secrets` of the unit's batch_job_definitions[{runtime!r}]",
        role_from=f"the `jobRoleArn` of the unit's batch_job_definitions[{runtime!r}]",
    )
    record = run.launches  # what the run's stop hook terminates
    launch = record.add(Launch(kind="batch-job", id=job.job_id, account=account, label=name))
    follower = JobFollower(job, run_logger(), logs, on_line=on_line)
    try:
        while not follower.poll():
            time.sleep(poll_s)
    except BaseException:
        job.kill(f"sciflow flow run {run.run_id} stopped following it")
        raise
    finally:
        record.done(launch)
    if job.status != "SUCCEEDED":
        raise SciflowError(f"Batch job {job.job_id} {job.status}: {job.reason or 'no reason'}")
    return job


def job_seconds(job: RunningJob, fallback: float) -> float:
    """Run time of a finished job from Batch's timestamps, else ``fallback``."""
    info = job.info
    if info.get("startedAt") and info.get("stoppedAt"):
        return (info["stoppedAt"] - info["startedAt"]) / 1000
    return fallback
