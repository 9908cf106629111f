"""The ``aws-batch`` Prefect worker: each flow run is an AWS Batch job, multi-node if asked.

Start one with ``prefect worker start --type aws-batch --pool <pool>``; Prefect finds the type
through the ``prefect.collections`` entry point in ``pyproject.toml``. The pool's base job
template comes from ``AwsBatchVariables`` (``python -m tasks.compute.batch_worker`` prints it).

For each run the worker checks the job queue, refuses a credential in clear in the job's
environment (the API key goes as a secret, ``prefect_api_key_secret_arn``), reuses or
registers a job definition named by the hash of its content (``tasks.compute.batch``), submits
the job with the run's tags and an attempt timeout (``timeout_s``, else its size class's
default wall time), then follows it until it SUCCEEDED or FAILED: every job and node state
goes to the flow run's log, and so do the containers' CloudWatch lines.

Cancelling: a Prefect 3.8 worker started with ``PREFECT_WORKER_ENABLE_CANCELLATION=true`` calls
``kill_infrastructure`` (TerminateJob) for a run cancelled while it is still submitting it, but
stops watching once the job is submitted. A job can then wait RUNNABLE for long (a queue with no
free capacity), so ``run`` itself watches the flow run while it follows the job
(``tasks.compute.worker_cancel``): cancelled before its flow began (``start_time`` unset), the
job is terminated and the run marked Cancelled; nothing of it runs. A running flow is cancelled
inside its container by ``prefect flow-run execute``, which runs its hooks, records Cancelled
and exits; that ends the job, and Batch stops a multi-node job's other nodes once its main
node (the flow's) exits.
"""

from __future__ import annotations

import json
import shlex
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc
import anyio.to_thread
from prefect.exceptions import InfrastructureNotFound
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from prefect_aws import AwsCredentials
from pydantic import Field, PrivateAttr, model_validator

from blocks.compute_unit import DEFAULT_LIMITS, MAX_WALL_TIME_S, SizeClass
from tasks.aws.clients import client
from tasks.aws.tags import clean_tag, run_tags
from tasks.compute.batch import (
    DEFAULT_LOG_GROUP,
    MIN_ATTEMPT_TIMEOUT_S,
    TERMINAL_STATES,
    ContainerSpec,
    EfsVolume,
    JobFollower,
    RunningJob,
    check_job_definition,
    check_job_queue,
    definition_secret_names,
    ensure_job_definition,
    exit_status,
    job_definition_spec,
    job_name,
    submit_job,
)
from tasks.compute.secrets import refuse_clear_credentials
from tasks.compute.worker_cancel import Progress, cancel_if_not_begun
from tasks.errors import InputError

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse

WORKER_TYPE = "aws-batch"
BATCH_DEFAULT_VCPUS = 1
BATCH_DEFAULT_MEMORY_MIB = 2048
BATCH_MIN_MEMORY_MIB = 512
BATCH_DEFAULT_GPUS = 0
BATCH_DEFAULT_NODE_COUNT = 1
BATCH_DEFAULT_MAIN_NODE = 0
BATCH_DEFAULT_EFS_MOUNT_PATH = "/mnt/efs"
BATCH_DEFAULT_POLL_INTERVAL_S = 10.0
# AWS allows 50 tags on a resource; Batch counts the job's own.
BATCH_MAX_TAGS = 50
API_KEY_ENV = "PREFECT_API_KEY"
TERMINATE_REASON = "Prefect flow run {flow_run} was cancelled"


def _check_fields(values: Any) -> None:
    """Cross-field checks shared by the variables and the job configuration."""
    if values.main_node >= values.node_count:
        raise ValueError(
            f"main_node={values.main_node} must be less than node_count={values.node_count} "
            "(nodes are numbered from 0)"
        )
    if values.node_command and values.node_count < 2:
        raise ValueError(
            f"node_command is set but node_count={values.node_count}: it is the command of "
            "the non-main nodes of a multi-node job (node_count >= 2)"
        )
    if values.job_definition and values.image:
        raise ValueError(
            "job_definition and image are both set: give job_definition to use a registered "
            "definition, or image to register one from this template"
        )
    if not values.job_definition and not values.image:
        raise ValueError(
            "image is required when job_definition is not set: the worker registers a job "
            "definition from image, vcpus, memory_mib, gpus, node_count and efs_* settings"
        )
    if values.job_definition and values.efs_file_system_id:
        raise ValueError(
            "efs_file_system_id is a job definition setting: with "
            f"job_definition={values.job_definition!r} mount EFS in that definition instead"
        )
    if values.prefect_api_key_secret_arn and not values.execution_role_arn:
        raise ValueError(
            "prefect_api_key_secret_arn needs execution_role_arn: ECS reads the secret with "
            "the execution role"
        )
    if values.prefect_api_key_secret_arn and values.job_definition:
        raise ValueError(
            "prefect_api_key_secret_arn is a job definition setting: with "
            f"job_definition={values.job_definition!r} set the secret in that definition"
        )
    if not values.efs_mount_path.startswith("/"):
        raise ValueError(f"efs_mount_path={values.efs_mount_path!r} must be an absolute path")
    if values.size_class and values.gpus and values.size_class not in ("gpu", "multinode"):
        raise ValueError(
            f"size_class={values.size_class!r} with gpus={values.gpus}: a GPU job is of size "
            "class 'gpu' (or 'multinode' across nodes)"
        )


def job_size_class(values: Any) -> SizeClass:
    """``size_class``, else ``multinode`` for several nodes, ``gpu`` with GPUs, else ``large``."""
    if values.size_class:
        return values.size_class  # type: ignore[no-any-return]
    if values.node_count > 1:
        return "multinode"
    return "gpu" if values.gpus else "large"


def job_timeout_s(values: Any) -> int:
    """The job's attempt timeout: ``timeout_s``, else its size class's default wall time."""
    return int(values.timeout_s or DEFAULT_LIMITS[job_size_class(values)].wall_time_s)


class AwsBatchVariables(BaseVariables):
    """The variables of an ``aws-batch`` work pool: what a deployment or a run may set."""

    aws_credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        title="AWS Credentials",
        description=(
            "Credentials and region for Batch and CloudWatch Logs; the worker's ambient AWS "
            "credentials and region if not set."
        ),
    )
    job_queue: str = Field(
        title="Job Queue",
        description="Name or ARN of the AWS Batch job queue; it must exist and be ENABLED.",
        examples=["sciflow-multinode"],
    )
    job_definition: str | None = Field(
        default=None,
        title="Job Definition",
        description=(
            "Name, name:revision or ARN of a registered job definition to use as is. If not "
            "set, the worker registers one from `image` and the resource settings, named by "
            "a hash of its content and reused by every run with the same content. For a "
            "multi-node definition, set `node_count` and `main_node` to match it."
        ),
    )
    image: str | None = Field(
        default=None,
        title="Container Image",
        description="Image every node runs; required when `job_definition` is not set.",
        examples=["123456789012.dkr.ecr.us-east-1.amazonaws.com/sciflow-simulation:1"],
    )
    vcpus: int = Field(
        default=BATCH_DEFAULT_VCPUS,
        ge=1,
        title="vCPUs",
        description=f"vCPUs per node. Defaults to {BATCH_DEFAULT_VCPUS}.",
    )
    memory_mib: int = Field(
        default=BATCH_DEFAULT_MEMORY_MIB,
        ge=BATCH_MIN_MEMORY_MIB,
        title="Memory (MiB)",
        description=(
            f"Memory per node in MiB, at least {BATCH_MIN_MEMORY_MIB}. "
            f"Defaults to {BATCH_DEFAULT_MEMORY_MIB}."
        ),
    )
    gpus: int = Field(
        default=BATCH_DEFAULT_GPUS,
        ge=0,
        title="GPUs",
        description=f"GPUs per node. Defaults to {BATCH_DEFAULT_GPUS}.",
    )
    node_count: int = Field(
        default=BATCH_DEFAULT_NODE_COUNT,
        ge=1,
        title="Node Count",
        description=(
            "Nodes in the job: 1 runs one container; 2 or more a multi-node parallel job "
            f"(EC2 only) with node ranges for the main node and the rest. "
            f"Defaults to {BATCH_DEFAULT_NODE_COUNT}."
        ),
    )
    main_node: int = Field(
        default=BATCH_DEFAULT_MAIN_NODE,
        ge=0,
        title="Main Node",
        description=(
            "Index of the node that runs the flow in a multi-node job; less than "
            f"`node_count`. Defaults to {BATCH_DEFAULT_MAIN_NODE}."
        ),
    )
    node_command: str | None = Field(
        default=None,
        title="Other Nodes' Command",
        description=(
            "Command of the nodes other than the main one in a multi-node job, e.g. one "
            "that serves MPI until the main node ends. If not set they get `command` too, "
            "and the image's entrypoint must run the flow on the main node only."
        ),
    )
    efs_file_system_id: str | None = Field(
        default=None,
        pattern=r"^fs-[0-9a-f]{8,40}$",
        title="EFS File System",
        description="EFS file system mounted into every node, if any.",
        examples=["fs-0123456789abcdef0"],
    )
    efs_mount_path: str = Field(
        default=BATCH_DEFAULT_EFS_MOUNT_PATH,
        title="EFS Mount Path",
        description=(
            "Where the EFS file system appears in the containers. "
            f"Defaults to {BATCH_DEFAULT_EFS_MOUNT_PATH!r}."
        ),
    )
    job_role_arn: str | None = Field(
        default=None,
        title="Job Role ARN",
        description="IAM role the containers assume (S3, logs, TerminateJob on cancel).",
    )
    execution_role_arn: str | None = Field(
        default=None,
        title="Execution Role ARN",
        description="IAM role ECS uses to start the containers; needed to read secrets.",
    )
    prefect_api_key_secret_arn: str | None = Field(
        default=None,
        title="Prefect API Key Secret ARN",
        description=(
            "Secrets Manager or SSM ARN holding PREFECT_API_KEY: the job reads the key from "
            "it. A worker with an API key refuses to send it in clear, so set this (or, with "
            "`job_definition`, that definition's `secrets`). Needs `execution_role_arn`."
        ),
    )
    size_class: SizeClass | None = Field(
        default=None,
        title="Size Class",
        description=(
            "Size class of the job, for its default timeout: `multinode` with 2 or more nodes, "
            "`gpu` with GPUs, else `large` if not set."
        ),
    )
    timeout_s: int | None = Field(
        default=None,
        ge=MIN_ATTEMPT_TIMEOUT_S,
        le=MAX_WALL_TIME_S,
        title="Attempt Timeout (s)",
        description=(
            "Batch terminates a job attempt that runs longer, even if the flow run was killed "
            "and no hook stopped it. Set it to the unit's `limits.<size class>.wall_time_s` "
            f"or less, {MIN_ATTEMPT_TIMEOUT_S} to {MAX_WALL_TIME_S}; the size class's default "
            "wall time if not set ("
            + ", ".join(f"{k} {v.wall_time_s} s" for k, v in DEFAULT_LIMITS.items())
            + ")."
        ),
    )
    unit: str | None = Field(
        default=None,
        title="Compute Unit",
        description="Compute unit for the `sciflow:unit` tag; the work pool's name if not set.",
    )
    tags: dict[str, str] = Field(
        default_factory=dict,
        title="Tags",
        description=(
            "Extra tags on the job and a newly registered job definition. The run's tags "
            "(`sciflow:run-id`, `sciflow:unit`, `sciflow:flow`) are always added and win."
        ),
    )
    log_group: str = Field(
        default=DEFAULT_LOG_GROUP,
        title="Log Group",
        description=(
            f"CloudWatch log group the containers write to. Defaults to {DEFAULT_LOG_GROUP!r}."
        ),
    )
    stream_output: bool = Field(
        default=True,
        title="Stream Output",
        description="Copy the job's CloudWatch log lines into the flow run's logs.",
    )
    poll_interval_s: float = Field(
        default=BATCH_DEFAULT_POLL_INTERVAL_S,
        gt=0,
        title="Poll Interval (s)",
        description=(
            "Seconds between looks at the job's state and logs. "
            f"Defaults to {BATCH_DEFAULT_POLL_INTERVAL_S:g}."
        ),
    )

    @model_validator(mode="after")
    def _cross_fields(self) -> Self:
        _check_fields(self)
        return self


class AwsBatchJobConfiguration(BaseJobConfiguration):
    """One run's resolved settings: the variables, plus what ``prepare_for_flow_run`` adds."""

    aws_credentials: AwsCredentials = Field(default_factory=AwsCredentials)
    job_queue: str
    job_definition: str | None = None
    image: str | None = None
    vcpus: int = Field(default=BATCH_DEFAULT_VCPUS, ge=1)
    memory_mib: int = Field(default=BATCH_DEFAULT_MEMORY_MIB, ge=BATCH_MIN_MEMORY_MIB)
    gpus: int = Field(default=BATCH_DEFAULT_GPUS, ge=0)
    node_count: int = Field(default=BATCH_DEFAULT_NODE_COUNT, ge=1)
    main_node: int = Field(default=BATCH_DEFAULT_MAIN_NODE, ge=0)
    node_command: str | None = None
    efs_file_system_id: str | None = Field(default=None, pattern=r"^fs-[0-9a-f]{8,40}$")
    efs_mount_path: str = BATCH_DEFAULT_EFS_MOUNT_PATH
    job_role_arn: str | None = None
    execution_role_arn: str | None = None
    prefect_api_key_secret_arn: str | None = None
    size_class: SizeClass | None = None
    timeout_s: int | None = Field(default=None, ge=MIN_ATTEMPT_TIMEOUT_S, le=MAX_WALL_TIME_S)
    unit: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    log_group: str = DEFAULT_LOG_GROUP
    stream_output: bool = True
    poll_interval_s: float = Field(default=BATCH_DEFAULT_POLL_INTERVAL_S, gt=0)

    _flow_run_id: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _cross_fields(self) -> Self:
        _check_fields(self)
        return self

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        """Prefect's environment, labels, name and command; then the run's tags."""
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )
        unit = self.unit or (work_pool.name if work_pool else "aws")
        labels = {clean_tag(k): clean_tag(v) for k, v in self.labels.items()}
        tags = labels | run_tags(str(flow_run.id), unit, flow.name if flow else "", self.tags)
        if len(tags) > BATCH_MAX_TAGS:
            tags = run_tags(str(flow_run.id), unit, flow.name if flow else "", self.tags)
        self.tags = tags
        self._flow_run_id = str(flow_run.id)
        if self.prefect_api_key_secret_arn:
            self.env.pop(API_KEY_ENV, None)  # the container reads it from the secret

    def container_spec(self) -> ContainerSpec:
        """What each node runs, from ``image`` and the resource settings."""
        if not self.image:
            raise InputError("image is required when job_definition is not set")
        secrets: tuple[tuple[str, str], ...] = ()
        if self.prefect_api_key_secret_arn:
            secrets = ((API_KEY_ENV, self.prefect_api_key_secret_arn),)
        efs = None
        if self.efs_file_system_id:
            efs = EfsVolume(self.efs_file_system_id, self.efs_mount_path)
        return ContainerSpec(
            image=self.image,
            vcpus=self.vcpus,
            memory_mib=self.memory_mib,
            gpus=self.gpus,
            efs=efs,
            log_group=self.log_group,
            job_role_arn=self.job_role_arn,
            execution_role_arn=self.execution_role_arn,
            secrets=secrets,
        )

    def clients(self) -> tuple[Any, Any]:
        """boto3 Batch and CloudWatch Logs clients from ``aws_credentials``."""
        return (
            client("batch", credentials=self.aws_credentials),
            client("logs", credentials=self.aws_credentials),
        )


class AwsBatchWorkerResult(BaseWorkerResult):
    """A finished Batch job: its id and its exit code (1 if it never ran), or 0.

    0 also for a job terminated because its run was cancelled before it began.
    """


def launch(batch: Any, configuration: AwsBatchJobConfiguration) -> RunningJob:
    """Check the queue and job definition, refuse clear credentials, register, submit.

    The worker's PREFECT_API_KEY (Prefect puts it in ``env``) reaches the job only as a secret:
    it is dropped from ``env`` when ``prefect_api_key_secret_arn`` or the named definition's
    ``secrets`` supply it, and otherwise refused.

    Raises:
        InputError: The queue or the named job definition does not exist, or ``env``
            carries a credential in clear (nothing registered or submitted).
    """
    queue = check_job_queue(batch, configuration.job_queue)
    if configuration.job_definition:
        definition = check_job_definition(batch, configuration.job_definition)
        if API_KEY_ENV in definition_secret_names(batch, definition):
            configuration.env.pop(API_KEY_ENV, None)  # the container reads it from the secret
        api_key_from = f"the `secrets` of job definition {configuration.job_definition!r}"
        role_from = f"the `jobRoleArn` of job definition {configuration.job_definition!r}"
    else:
        api_key_from = "the work pool's job variable `prefect_api_key_secret_arn`"
        role_from = "the work pool's job variable `job_role_arn`"
    # Before anything is registered or submitted.
    refuse_clear_credentials(
        {"environment": configuration.env},
        what=f"Batch job {job_name(configuration.name or 'sciflow')}",
        api_key_from=api_key_from,
        role_from=role_from,
    )
    if not configuration.job_definition:
        spec = job_definition_spec(
            configuration.container_spec(), configuration.node_count, configuration.main_node
        )
        definition, _ = ensure_job_definition(batch, spec, configuration.tags)
    return submit_job(
        batch,
        name=configuration.name or "sciflow",
        queue=queue,
        definition=definition,
        tags=configuration.tags,
        environment=configuration.env,
        timeout_s=job_timeout_s(configuration),
        command=shlex.split(configuration.command or ""),
        node_count=configuration.node_count,
        main_node=configuration.main_node,
        node_command=shlex.split(configuration.node_command or ""),
        api_key_from=api_key_from,
        role_from=role_from,
    )


def terminate(batch: Any, job_id: str, reason: str) -> RunningJob:
    """TerminateJob on ``job_id`` unless it has already finished.

    Raises:
        InfrastructureNotFound: Batch does not know the job, or it has already finished.
    """
    job = RunningJob(batch, job_id)
    try:
        status = job.refresh()["status"]
    except InputError as exc:
        raise InfrastructureNotFound(str(exc)) from exc
    if status in TERMINAL_STATES:
        raise InfrastructureNotFound(f"Batch job {job_id} has already {status}")
    job.kill(reason)
    return job


class AwsBatchWorker(BaseWorker[AwsBatchJobConfiguration, AwsBatchVariables, AwsBatchWorkerResult]):
    """Runs each flow run as an AWS Batch job, multi-node parallel when ``node_count >= 2``."""

    type: str = WORKER_TYPE
    job_configuration = AwsBatchJobConfiguration
    job_configuration_variables = AwsBatchVariables
    _description = (
        "Run flow runs as AWS Batch jobs, including multi-node parallel (MPI) jobs with EFS. "
        "Job definitions are registered from the template and reused by content hash."
    )
    _display_name = "AWS Batch (sciflow)"
    _documentation_url = (
        "https://docs.aws.amazon.com/batch/latest/userguide/multi-node-parallel-jobs.html"
    )

    async def run(
        self,
        flow_run: FlowRun,
        configuration: AwsBatchJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> AwsBatchWorkerResult:
        """Submit the run's job, report it started, follow it to the end.

        Returns:
            The job id, and 0 if it SUCCEEDED or was terminated because its run was cancelled
            before it began, else its exit code (1 if none).
        """
        run_logger = self.get_flow_run_logger(flow_run)
        batch, logs = await anyio.to_thread.run_sync(configuration.clients)
        job = await anyio.to_thread.run_sync(launch, batch, configuration)
        run_logger.info(
            "Submitted Batch job %s to %s (%d node%s)",
            job.job_id,
            configuration.job_queue,
            configuration.node_count,
            "" if configuration.node_count == 1 else "s",
        )
        if task_status is not None:
            task_status.started(job.job_id)
        follower = JobFollower(
            job, run_logger, logs if configuration.stream_output else None, configuration.log_group
        )
        flow: Progress = "waiting"  # until the flow begins; then its engine handles cancelling
        while not await anyio.to_thread.run_sync(follower.poll):
            if flow == "waiting":
                flow = await cancel_if_not_begun(
                    self, flow_run, job.job_id, configuration, f"Batch job {job.job_id}"
                )
            await anyio.sleep(configuration.poll_interval_s)
        if flow == "cancelled":  # the run is Cancelled; the job's failure is not a crash
            return AwsBatchWorkerResult(identifier=job.job_id, status_code=0)
        code = await anyio.to_thread.run_sync(exit_status, job)
        return AwsBatchWorkerResult(identifier=job.job_id, status_code=code)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: AwsBatchJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Terminate the Batch job of a run cancelled before it started (TerminateJob).

        Args:
            infrastructure_pid: The job id ``run`` reported.
            configuration: The run's job configuration (credentials and region).
            grace_seconds: Unused: Batch sends SIGTERM, then SIGKILL after ECS's stop timeout.

        Raises:
            InfrastructureNotFound: Batch does not know the job, or it has already finished.
        """
        batch, _ = await anyio.to_thread.run_sync(configuration.clients)
        flow_run = configuration._flow_run_id or "(unknown)"
        reason = TERMINATE_REASON.format(flow_run=flow_run)
        await anyio.to_thread.run_sync(partial(terminate, batch, infrastructure_pid, reason))
        self._logger.info("Terminated Batch job %s: %s", infrastructure_pid, reason)


def default_base_job_template() -> dict[str, Any]:
    """The base job template an ``aws-batch`` pool starts with."""
    return AwsBatchWorker.get_default_base_job_template()


if __name__ == "__main__":
    print(json.dumps(default_base_job_template(), indent=2))
