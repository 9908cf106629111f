"""AWS Batch with boto3: job definitions by content hash, submission, following and logs.

The plain functions the ``aws-batch`` worker (``tasks.compute.batch_worker``) is built from.
Nothing here imports Prefect. Every AWS call goes through ``tasks.aws.clients.call``: botocore
has retried throttling and 5xx (the one retry layer), and what still fails becomes a sciflow
error carrying the AWS code and operation.

Multi-node parallel jobs follow AWS's recipe (and Metaflow's Batch client): the job definition
has ``type="multinode"``, ``mainNode`` and node ranges ``m:m`` for the main node and the rest
for the others (``0:0`` and ``1:N-1`` for main node 0); at submission ``nodeOverrides`` give
the ranges their environment and, where they differ, their commands. Batch runs each node as a
child job ``<jobId>#<node>`` with its own log stream.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.aws.clients import aws_errors, call
from tasks.compute.secrets import refuse_clear_credentials
from tasks.errors import InputError, SciflowError

logger = logging.getLogger(__name__)

JOB_DEFINITION_PREFIX = "sciflow-"
DEFAULT_LOG_GROUP = "/aws/batch/job"
# Batch job states, in the order a job passes through them.
JOB_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED"})
# DescribeJobs takes at most 100 ids; FilterLogEvents at most 100 stream names.
DESCRIBE_JOBS_MAX = 100
LOG_STREAMS_MAX = 100
# Batch refuses attempt timeouts under 60 s. A job with a time estimate gets this many times
# it, plus the minutes an instance and its image take to start, capped by its class's wall time.
MIN_ATTEMPT_TIMEOUT_S = 60
ESTIMATE_MARGIN = 3.0
STARTUP_ALLOWANCE_S = 600
# Batch job names: letters, digits, hyphens and underscores, 128 at most.
_JOB_NAME_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
JOB_NAME_MAX = 128


def canonical_json(value: Any) -> bytes:
    """``value`` as JSON with sorted keys and no spaces: equal content, equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def job_definition_name(spec: Mapping[str, Any]) -> str:
    """``sciflow-<first 16 hex digits of sha256(canonical JSON)>`` for a definition's content."""
    return f"{JOB_DEFINITION_PREFIX}{hashlib.sha256(canonical_json(spec)).hexdigest()[:16]}"


def job_name(name: str) -> str:
    """A valid Batch job name from ``name`` (a flow run's name): cleaned and cut to 128."""
    cleaned = _JOB_NAME_NOT_ALLOWED.sub("-", name).strip("-_") or "sciflow"
    return cleaned[:JOB_NAME_MAX]


def attempt_timeout_s(wall_time_s: int, estimate_s: float | None = None) -> int:
    """Batch's ``attemptDurationSeconds`` for a job: never above its size class's wall time.

    Args:
        wall_time_s: The size class's wall-time limit in s (``SizeLimits.wall_time_s``).
        estimate_s: The job's estimated run time in s, if there is one; the timeout is then
            ``ESTIMATE_MARGIN`` times it plus ``STARTUP_ALLOWANCE_S``, at least 60 s.

    Raises:
        InputError: ``wall_time_s`` is under Batch's minimum, or the estimate is negative.
    """
    if wall_time_s < MIN_ATTEMPT_TIMEOUT_S:
        raise InputError(
            f"wall_time_s={wall_time_s}: AWS Batch takes attempt timeouts of at least "
            f"{MIN_ATTEMPT_TIMEOUT_S} s"
        )
    if estimate_s is None:
        return int(wall_time_s)
    if not estimate_s >= 0:  # also NaN
        raise InputError(f"estimate_s={estimate_s}; expected seconds >= 0")
    wanted = math.ceil(ESTIMATE_MARGIN * estimate_s + STARTUP_ALLOWANCE_S)
    return int(min(wall_time_s, max(MIN_ATTEMPT_TIMEOUT_S, wanted)))


def to_batch_environment(env: Mapping[str, str | None]) -> list[dict[str, str]]:
    """``{"NAME": "value"}`` as Batch's ``[{"name": ..., "value": ...}]``, unset ones dropped."""
    return [{"name": k, "value": str(v)} for k, v in sorted(env.items()) if v is not None]


@dataclass(frozen=True, slots=True)
class EfsVolume:
    """An EFS file system mounted into every node's container."""

    file_system_id: str
    """EFS file system id, e.g. ``fs-0123456789abcdef0``."""
    mount_path: str
    """Absolute path inside the container, e.g. ``/mnt/efs``."""
    root_directory: str = "/"
    """Directory of the file system that is mounted."""
    name: str = "efs"
    """Volume name inside the job definition."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerSpec:
    """What each node runs and the resources it gets; the content a job definition hashes."""

    image: str
    """Container image, e.g. ``123456789012.dkr.ecr.us-east-1.amazonaws.com/sciflow:1``."""
    command: tuple[str, ...] = ()
    """Default command (argv); empty to use the image's."""
    vcpus: int = 1
    """vCPUs per node."""
    memory_mib: int = 2048
    """Memory per node in MiB."""
    gpus: int = 0
    """GPUs per node."""
    efs: EfsVolume | None = None
    """Shared file system, if any."""
    log_group: str = DEFAULT_LOG_GROUP
    """CloudWatch log group the containers write to."""
    job_role_arn: str | None = None
    """IAM role the containers assume."""
    execution_role_arn: str | None = None
    """IAM role ECS uses to start the containers (pull images, read ``secrets``)."""
    secrets: tuple[tuple[str, str], ...] = ()
    """``(variable, Secrets Manager or SSM ARN)`` pairs set in the containers' environment."""

    def container_properties(self) -> dict[str, Any]:
        """Batch ``containerProperties`` for this spec."""
        resources = [
            {"type": "VCPU", "value": str(self.vcpus)},
            {"type": "MEMORY", "value": str(self.memory_mib)},
        ]
        if self.gpus:
            resources.append({"type": "GPU", "value": str(self.gpus)})
        props: dict[str, Any] = {
            "image": self.image,
            "resourceRequirements": resources,
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {"awslogs-group": self.log_group},
            },
        }
        if self.command:
            props["command"] = list(self.command)
        if self.job_role_arn:
            props["jobRoleArn"] = self.job_role_arn
        if self.execution_role_arn:
            props["executionRoleArn"] = self.execution_role_arn
        if self.secrets:
            props["secrets"] = [{"name": n, "valueFrom": arn} for n, arn in self.secrets]
        if self.efs is not None:
            props["volumes"] = [
                {
                    "name": self.efs.name,
                    "efsVolumeConfiguration": {
                        "fileSystemId": self.efs.file_system_id,
                        "rootDirectory": self.efs.root_directory,
                        "transitEncryption": "ENABLED",
                    },
                }
            ]
            props["mountPoints"] = [
                {
                    "sourceVolume": self.efs.name,
                    "containerPath": self.efs.mount_path,
                    "readOnly": False,
                }
            ]
        return props


def node_ranges(node_count: int, main_node: int) -> list[tuple[str, bool]]:
    """Batch ``targetNodes`` ranges: the main node alone, then the others.

    Args:
        node_count: Nodes in the job, at least 2.
        main_node: Index of the main node, ``0 <= main_node < node_count``.

    Returns:
        ``(range, is_main)`` pairs, e.g. ``[("0:0", True), ("1:3", False)]`` for 4 nodes.
    """
    if node_count < 2:
        raise InputError(f"node_count={node_count}: a multi-node job needs at least 2 nodes")
    if not 0 <= main_node < node_count:
        raise InputError(f"main_node={main_node} is not a node of 0..{node_count - 1}")
    ranges = [(f"{main_node}:{main_node}", True)]
    if main_node > 0:
        ranges.append((f"0:{main_node - 1}", False))
    if main_node < node_count - 1:
        ranges.append((f"{main_node + 1}:{node_count - 1}", False))
    return ranges


def job_definition_spec(
    container: ContainerSpec, node_count: int = 1, main_node: int = 0
) -> dict[str, Any]:
    """RegisterJobDefinition arguments, less name and tags: the content that is hashed.

    Args:
        container: What each node runs.
        node_count: 1 for a single-container job; 2 or more for a multi-node parallel job.
        main_node: Index of the main node of a multi-node job.
    """
    if node_count == 1:
        return {
            "type": "container",
            "platformCapabilities": ["EC2"],
            "containerProperties": container.container_properties(),
        }
    props = container.container_properties()
    return {
        "type": "multinode",
        "platformCapabilities": ["EC2"],
        "nodeProperties": {
            "numNodes": node_count,
            "mainNode": main_node,
            "nodeRangeProperties": [
                {"targetNodes": target, "container": props}
                for target, _ in node_ranges(node_count, main_node)
            ],
        },
    }


def ensure_job_definition(
    batch: Any, spec: Mapping[str, Any], tags: Mapping[str, str] | None = None
) -> tuple[str, bool]:
    """The ARN of the active job definition named by ``spec``'s hash, registered if absent.

    Equal content is one definition across runs, not a new revision per run.

    Args:
        batch: A boto3 Batch client.
        spec: ``job_definition_spec(...)``.
        tags: Tags for a newly registered definition (not part of the hash).

    Returns:
        The ARN, and whether it was registered now.
    """
    name = job_definition_name(spec)
    found = call(
        batch.describe_job_definitions,
        f"look up job definition {name}",
        jobDefinitionName=name,
        status="ACTIVE",
    )["jobDefinitions"]
    if found:
        latest = max(found, key=lambda d: d["revision"])
        return latest["jobDefinitionArn"], False
    kwargs: dict[str, Any] = {"jobDefinitionName": name, "propagateTags": True, **spec}
    if tags:
        kwargs["tags"] = dict(tags)
    registered = call(batch.register_job_definition, f"register job definition {name}", **kwargs)
    logger.info("registered Batch job definition %s", registered["jobDefinitionArn"])
    return registered["jobDefinitionArn"], True


def check_job_queue(batch: Any, queue: str) -> str:
    """The ARN of job queue ``queue`` (name or ARN), if it exists and takes jobs.

    Raises:
        InputError: No such queue in this account and region, or it is disabled or invalid.
    """
    queues = call(batch.describe_job_queues, f"look up job queue {queue}", jobQueues=[queue])[
        "jobQueues"
    ]
    if not queues:
        region = batch.meta.region_name
        raise InputError(
            f"job_queue={queue!r}: no such AWS Batch job queue in region {region}; "
            "expected the name or ARN of an existing queue (`aws batch describe-job-queues`)"
        )
    found = queues[0]
    if found.get("state") != "ENABLED" or found.get("status") not in (None, "VALID", "UPDATING"):
        raise InputError(
            f"job_queue={queue!r} is {found.get('state')}/{found.get('status')}: "
            f"{found.get('statusReason', '')}; expected an ENABLED, VALID queue"
        )
    return found["jobQueueArn"]


def check_job_definition(batch: Any, definition: str) -> str:
    """The ARN of an existing job definition (``name``, ``name:revision`` or ARN).

    Raises:
        InputError: No active job definition by that name.
    """
    name, revision = definition, ""
    if ":" in definition and not definition.startswith("arn:"):
        name, _, revision = definition.rpartition(":")
    if definition.startswith("arn:"):
        args: dict[str, Any] = {"jobDefinitions": [definition]}
    else:  # name or name:revision; by name, as moto lacks the short name:revision form
        args = {"jobDefinitionName": name, "status": "ACTIVE"}
    found = [
        d
        for d in call(
            batch.describe_job_definitions, f"look up job definition {definition}", **args
        )["jobDefinitions"]
        if d.get("status", "ACTIVE") == "ACTIVE"
        and (not revision or str(d["revision"]) == revision)
    ]
    if not found:
        raise InputError(
            f"job_definition={definition!r}: no active AWS Batch job definition by that name; "
            "expected name, name:revision or ARN of a registered one, or leave it unset and "
            "give `image` to register one"
        )
    return max(found, key=lambda d: d["revision"])["jobDefinitionArn"]


def definition_secret_names(batch: Any, definition_arn: str) -> frozenset[str]:
    """Variables every container of a registered job definition gets from ``secrets``."""
    [found] = call(
        batch.describe_job_definitions,
        f"look up job definition {definition_arn}",
        jobDefinitions=[definition_arn],
    )["jobDefinitions"]
    containers = [found.get("containerProperties") or {}]
    if nodes := found.get("nodeProperties"):
        containers = [r.get("container") or {} for r in nodes.get("nodeRangeProperties", [])]
    named = [{s["name"] for s in c.get("secrets", [])} for c in containers]
    return frozenset(set.intersection(*named)) if named else frozenset()


def _overrides(environment: Mapping[str, str | None], command: Sequence[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {"environment": to_batch_environment(environment)}
    if command:
        overrides["command"] = list(command)
    return overrides


def submit_job(
    batch: Any,
    *,
    name: str,
    queue: str,
    definition: str,
    tags: Mapping[str, str],
    environment: Mapping[str, str | None],
    timeout_s: int,
    command: Sequence[str] = (),
    node_count: int = 1,
    main_node: int = 0,
    node_command: Sequence[str] = (),
    lost_host_retries: int = 0,
    api_key_from: str = "the job definition's `secrets`",
    role_from: str = "the job definition's `jobRoleArn`",
) -> RunningJob:
    """Submit one job; its tags propagate to the ECS tasks and instances Batch starts.

    Args:
        batch: A boto3 Batch client.
        name: Job name (cleaned with ``job_name``).
        queue: Job queue name or ARN.
        definition: Job definition ARN.
        tags: Tags on the job, e.g. ``run_tags(...)``.
        environment: Environment of every node (per run, so not in the definition).
        timeout_s: Batch's attempt timeout (``attempt_timeout_s``): Batch terminates an
            attempt that runs longer, so a job outlives no flow run by more than this, even
            one killed before its hooks could stop it.
        command: Command of the main node (or the only container); the definition's if empty.
        node_count: Nodes; 2 or more makes a multi-node parallel job.
        main_node: Index of the main node.
        node_command: Command of the other nodes; ``command`` if empty.
        lost_host_retries: Times Batch starts the job again when its instance went away (a
            reclaimed Spot instance: status reason ``Host EC2 ...``); any other failure ends
            it. Only for jobs that resume rather than repeat (training from checkpoints).
        api_key_from: The setting that gives the job PREFECT_API_KEY as a secret, for the
            refusal of a clear one (``refuse_clear_credentials``).
        role_from: The setting that gives the job its AWS role, for the same refusal.

    Raises:
        InputError: ``timeout_s`` is under Batch's minimum of 60 s, or the environment
            carries a credential in clear (nothing is submitted).
    """
    if timeout_s < MIN_ATTEMPT_TIMEOUT_S:
        raise InputError(
            f"timeout_s={timeout_s}: AWS Batch takes attempt timeouts of at least "
            f"{MIN_ATTEMPT_TIMEOUT_S} s"
        )
    kwargs: dict[str, Any] = {
        "jobName": job_name(name),
        "jobQueue": queue,
        "jobDefinition": definition,
        "tags": dict(tags),
        "propagateTags": True,
        "timeout": {"attemptDurationSeconds": int(timeout_s)},
    }
    if lost_host_retries:
        kwargs["retryStrategy"] = {
            "attempts": 1 + lost_host_retries,
            "evaluateOnExit": [
                {"onStatusReason": "Host EC2*", "action": "RETRY"},
                {"onReason": "*", "action": "EXIT"},
            ],
        }
    if node_count == 1:
        kwargs["containerOverrides"] = _overrides(environment, command)
    else:
        kwargs["nodeOverrides"] = {
            "numNodes": node_count,
            "nodePropertyOverrides": [
                {
                    "targetNodes": target,
                    "containerOverrides": _overrides(
                        environment, command if is_main else (node_command or command)
                    ),
                }
                for target, is_main in node_ranges(node_count, main_node)
            ],
        }
    refuse_clear_credentials(
        kwargs,
        what=f"Batch job {kwargs['jobName']}",
        api_key_from=api_key_from,
        role_from=role_from,
    )
    submitted = call(batch.submit_job, f"submit Batch job {kwargs['jobName']}", **kwargs)
    logger.info("submitted Batch job %s (%s)", submitted["jobId"], submitted["jobName"])
    return RunningJob(batch, submitted["jobId"])


@dataclass(frozen=True, slots=True)
class NodeJob:
    """One node of a multi-node job, as DescribeJobs reports ``<jobId>#<node>``."""

    index: int
    job_id: str
    status: str
    log_stream: str | None
    exit_code: int | None
    reason: str


def _node_job(description: Mapping[str, Any]) -> NodeJob:
    job_id = description["jobId"]
    index = int(description.get("nodeDetails", {}).get("nodeIndex", job_id.rpartition("#")[2] or 0))
    container = description.get("container") or {}
    return NodeJob(
        index=index,
        job_id=job_id,
        status=description["status"],
        log_stream=container.get("logStreamName"),
        exit_code=container.get("exitCode"),
        reason=container.get("reason") or description.get("statusReason", ""),
    )


class RunningJob:
    """A submitted Batch job, read through DescribeJobs: ``status``, ``is_done``, ``kill()``.

    ``status`` describes the job again until it is done; ``info`` is the last description.
    """

    def __init__(self, batch: Any, job_id: str) -> None:
        self.batch = batch
        self.job_id = job_id
        self._info: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RunningJob({self.job_id!r})"

    def refresh(self) -> dict[str, Any]:
        """Describe the job again.

        Raises:
            InputError: Batch does not know the job id.
        """
        jobs = call(
            self.batch.describe_jobs, f"describe Batch job {self.job_id}", jobs=[self.job_id]
        )["jobs"]
        if not jobs:
            raise InputError(f"Batch job {self.job_id!r} not found (ids expire after 7 days)")
        self._info = jobs[0]
        return self._info

    @property
    def info(self) -> dict[str, Any]:
        """The last DescribeJobs answer for this job."""
        return self._info if self._info is not None else self.refresh()

    @property
    def status(self) -> str:
        """The job's state (``JOB_STATES``), described again unless already final."""
        if self._info is None or self._info["status"] not in TERMINAL_STATES:
            self.refresh()
        return self.info["status"]

    @property
    def is_done(self) -> bool:
        """Whether the job has SUCCEEDED or FAILED."""
        return self.status in TERMINAL_STATES

    @property
    def node_count(self) -> int:
        """Nodes of a multi-node job; 1 for a single-container job."""
        return int(self.info.get("nodeProperties", {}).get("numNodes", 1))

    @property
    def reason(self) -> str:
        """Why the job is in its state, as Batch says (empty if it says nothing)."""
        container = self.info.get("container") or {}
        return self.info.get("statusReason") or container.get("reason") or ""

    @property
    def exit_code(self) -> int | None:
        """The container's exit code (the main node's for multi-node jobs), if known."""
        code = (self.info.get("container") or {}).get("exitCode")
        if code is None and self.node_count > 1:
            main = int(self.info.get("nodeProperties", {}).get("mainNode", 0))
            nodes = {n.index: n for n in self.nodes()}
            code = nodes[main].exit_code if main in nodes else None
        return code

    def nodes(self) -> list[NodeJob]:
        """The child node jobs ``<jobId>#<node>`` of a multi-node job, in node order.

        Empty for single-container jobs and before Batch has created the node jobs.
        """
        count = self.node_count
        if count <= 1:
            return []
        ids = [f"{self.job_id}#{i}" for i in range(count)]
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), DESCRIBE_JOBS_MAX):
            found += call(
                self.batch.describe_jobs,
                f"describe node jobs of {self.job_id}",
                jobs=ids[start : start + DESCRIBE_JOBS_MAX],
            )["jobs"]
        return sorted((_node_job(d) for d in found), key=lambda n: n.index)

    def log_streams(self) -> dict[str, str]:
        """CloudWatch log stream name -> label (``"node 1"``, or ``"job"``) of started nodes."""
        if self.node_count > 1:
            return {n.log_stream: f"node {n.index}" for n in self.nodes() if n.log_stream}
        stream = (self.info.get("container") or {}).get("logStreamName")
        return {stream: "job"} if stream else {}

    def kill(self, reason: str) -> None:
        """TerminateJob: stops a started job, cancels one still queued (all nodes)."""
        call(
            self.batch.terminate_job,
            f"terminate Batch job {self.job_id}",
            jobId=self.job_id,
            reason=reason[:1024],
        )
        logger.info("asked Batch to terminate job %s: %s", self.job_id, reason)


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One log line of a job, from CloudWatch Logs."""

    timestamp_ms: int
    stream: str
    message: str


@dataclass(frozen=True, slots=True)
class LogCursor:
    """Where a job's log reading stands: read up to ``since_ms``, and these ids at it.

    FilterLogEvents takes a start time, which is inclusive; events seen at that millisecond
    are skipped by id, so each line is delivered once.
    """

    since_ms: int = 0
    seen_at_since: frozenset[str] = field(default_factory=frozenset)


def read_logs(
    logs: Any, log_group: str, streams: Sequence[str], since: LogCursor | None = None
) -> tuple[list[LogEvent], LogCursor]:
    """Log events of ``streams`` newer than ``since``, oldest first, and the cursor after them.

    Uses the FilterLogEvents paginator, so any number of pages is read. A log group or stream
    that does not exist yet (a job not yet started) reads as no events.

    Args:
        logs: A boto3 CloudWatch Logs client.
        log_group: The job definition's log group (Batch's default is ``/aws/batch/job``).
        streams: Log stream names (``RunningJob.log_streams()``), up to 100 per call.
        since: Where the previous read stopped; from the start if ``None``.
    """
    since = since or LogCursor()
    if not streams:
        return [], since
    paginator = logs.get_paginator("filter_log_events")
    pages = paginator.paginate(
        logGroupName=log_group,
        logStreamNames=list(streams)[:LOG_STREAMS_MAX],
        startTime=since.since_ms,
    )
    raw: list[dict[str, Any]] = []
    try:
        with aws_errors(f"read logs of {log_group}"):
            for page in pages:
                raw += page.get("events", [])
    except SciflowError as exc:
        if exc.code == "ResourceNotFoundException":
            return [], since  # the group or stream is not there yet
        raise
    raw.sort(key=lambda e: (e["timestamp"], e.get("ingestionTime", 0)))
    events: list[LogEvent] = []
    newest, seen = since.since_ms, set(since.seen_at_since)
    for event in raw:
        stamp, event_id = int(event["timestamp"]), event.get("eventId", "")
        if stamp < since.since_ms or (stamp == since.since_ms and event_id in since.seen_at_since):
            continue
        if stamp > newest:
            newest, seen = stamp, set()
        seen.add(event_id)
        events.append(LogEvent(stamp, event.get("logStreamName", ""), event["message"]))
    return events, LogCursor(newest, frozenset(seen))


def exit_status(job: RunningJob) -> int:
    """A process-style status for a finished job: 0 if it SUCCEEDED, else its exit code or 1."""
    if job.status == "SUCCEEDED":
        return 0
    code = job.exit_code
    return code if code else 1


class JobFollower:
    """Follows a job one poll at a time: state changes of the job and its nodes, new log lines.

    Each ``poll()`` describes the job (and, for multi-node jobs, its node jobs), logs every
    state it has not logged yet to ``log``, and, when ``logs`` is given, the job's new
    CloudWatch lines prefixed with their node (or hands them to ``on_line``).
    """

    def __init__(
        self,
        job: RunningJob,
        log: logging.Logger | logging.LoggerAdapter[Any],
        logs: Any | None = None,
        log_group: str = DEFAULT_LOG_GROUP,
        on_line: Callable[[str, str], None] | None = None,
    ) -> None:
        self.job = job
        self.on_line = on_line
        self.log = log
        self.logs = logs
        self.log_group = log_group
        self.cursor = LogCursor()
        self.states: list[str] = []
        self.node_states: dict[int, list[str]] = {}

    def poll(self) -> bool:
        """One round: describe, report, read logs. Returns whether the job is done."""
        info = self.job.refresh()
        status = info["status"]
        if not self.states or self.states[-1] != status:
            self.states.append(status)
            reason = self.job.reason
            detail = f": {reason}" if reason and status in TERMINAL_STATES else ""
            self.log.info("Batch job %s is %s%s", self.job.job_id, status, detail)
        nodes = self.job.nodes()
        for node in nodes:
            seen = self.node_states.setdefault(node.index, [])
            if not seen or seen[-1] != node.status:
                seen.append(node.status)
                detail = f": {node.reason}" if node.reason and node.status == "FAILED" else ""
                self.log.info("Batch node job %s is %s%s", node.job_id, node.status, detail)
        if self.logs is not None:
            if self.job.node_count > 1:
                streams = {n.log_stream: f"node {n.index}" for n in nodes if n.log_stream}
            else:
                streams = self.job.log_streams()
            events, self.cursor = read_logs(self.logs, self.log_group, list(streams), self.cursor)
            for event in events:
                label = streams.get(event.stream, event.stream)
                if self.on_line is not None:
                    self.on_line(label, event.message)
                else:
                    self.log.info("[%s] %s", label, event.message)
        return status in TERMINAL_STATES
