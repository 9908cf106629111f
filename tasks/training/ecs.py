"""The parameter-server training strategy on ECS Fargate: one server task, N worker tasks.

Workers find the server through AWS Cloud Map: the server's task is registered as an
instance (its private IPv4 and port) of a Cloud Map service in a private DNS namespace, so
workers connect to ``<service>.<namespace>:<port>``. Every task runs in private subnets with
no public IP. The server listens on its task's private address only and admits only workers
that prove the run's token (``tasks.compute.channel``), which every container gets as the
``SCIFLOW_RUN_TOKEN`` `secrets` entry (``token_secret_arn``), never in clear.

Here: the plan (which tasks run with which command and environment); the ECS and Cloud Map
mechanics are ``tasks.compute.ecs``. Nothing here imports Prefect or boto3.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.aws.clients import AwsAccount
from tasks.aws.tags import RUN_ID_TAG, UNIT_TAG, to_aws
from tasks.compute.channel import TOKEN_VARIABLE
from tasks.compute.ecs import LaunchOutcome, ServerWorkersLaunch, ServicePlan, check_fargate_size
from tasks.compute.secrets import refuse_clear_credentials
from tasks.errors import InputError, SciflowError, TransientError
from tasks.training.launch import DEFAULT_WALL_TIME_S

if TYPE_CHECKING:
    from blocks.compute_unit import ComputeUnit, SizeClass

logger = logging.getLogger(__name__)

SERVER_FAMILY = "sciflow-ps-server"
WORKER_FAMILY = "sciflow-ps-worker"
MODULE = "tasks.training.parameter_server"
DEFAULT_PORT = 29500
DEFAULT_NAMESPACE = "sciflow.local"
# Seconds the launcher waits past the wall-clock limit for the processes to exit by themselves
# (they count from their own start, which is before the launch's tasks are all RUNNING).
WALL_CLOCK_GRACE_S = 60.0
_DNS_NOT_ALLOWED = re.compile(r"[^a-z0-9-]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
DNS_LABEL_MAX = 63


def service_name_for(run_id: str) -> str:
    """A DNS label naming a run's Cloud Map service: ``ps-<run id>``, at most 63 characters."""
    cleaned = _DNS_NOT_ALLOWED.sub("-", run_id.lower()).strip("-") or "run"
    return f"ps-{cleaned}"[:DNS_LABEL_MAX].rstrip("-")


@dataclass(kw_only=True, slots=True)
class ParameterServerPlan:
    """Everything a launch needs; no AWS state (ARNs of what it starts live in the launch)."""

    cluster: str
    """ECS cluster name or ARN."""
    image: str
    """Container image with sciflow installed, for server and workers."""
    subnets: tuple[str, ...]
    """Private subnet ids; tasks get no public IP."""
    security_groups: tuple[str, ...]
    """Security group ids; they must let workers reach the server's port."""
    config_uri: str
    """``s3://`` URI of the run's ``config.json``."""
    service_name: str
    """Cloud Map service (a DNS label, ``service_name_for(run_id)``)."""
    tags: dict[str, str]
    """The run's tags; must hold ``sciflow:run-id`` and ``sciflow:unit``."""
    region: str
    """AWS region."""
    execution_role_arn: str | None = None
    """IAM role ECS uses to pull the image and write logs (needed with ``log_group``)."""
    task_role_arn: str | None = None
    """IAM role the processes assume (to read the config, write checkpoints)."""
    log_group: str | None = None
    """CloudWatch log group for the containers' output; none if unset."""
    vpc: str | None = None
    """VPC of the subnets; looked up from the first subnet if unset."""
    server_cpu: int = 1024
    """Server CPU units (1024 = 1 vCPU)."""
    server_memory: int = 4096
    """Server memory in MiB."""
    worker_cpu: int = 1024
    """Worker CPU units (1024 = 1 vCPU)."""
    worker_memory: int = 4096
    """Worker memory in MiB."""
    worker_count: int = 1
    """Worker tasks, at least 1."""
    port: int = DEFAULT_PORT
    """TCP port the server listens on."""
    namespace: str = DEFAULT_NAMESPACE
    """Cloud Map private DNS namespace, shared by runs in the VPC."""
    environment: dict[str, str] = field(default_factory=dict)
    """Extra environment of every container; never credentials."""
    wall_time_s: float = DEFAULT_WALL_TIME_S
    """Seconds after which server and workers exit by themselves, and the launch stops them."""
    token_secret_arn: str | None = None
    """Secrets Manager ARN of the run token (``tasks.compute.run_token``); every container
    gets it as ``SCIFLOW_RUN_TOKEN``. Without it the processes refuse to start."""

    def __post_init__(self) -> None:
        self.subnets, self.security_groups = tuple(self.subnets), tuple(self.security_groups)
        if self.worker_count < 1:
            raise InputError(f"worker_count={self.worker_count}: expected at least 1 worker")
        check_fargate_size("server", self.server_cpu, self.server_memory)
        check_fargate_size("worker", self.worker_cpu, self.worker_memory)
        if not self.wall_time_s > 0:
            raise InputError(f"wall_time_s={self.wall_time_s}: expected seconds > 0")
        if not 1 <= self.port <= 65535:
            raise InputError(f"port={self.port}: expected a TCP port, 1 to 65535")
        if not self.subnets:
            raise InputError("subnets is empty: expected at least one private subnet id")
        if not self.security_groups:
            raise InputError("security_groups is empty: expected at least one group id")
        if not self.config_uri.startswith("s3://"):
            raise InputError(
                f"config_uri={self.config_uri!r}: tasks on Fargate read it from S3; "
                "expected s3://bucket/key"
            )
        if not _DNS_LABEL.fullmatch(self.service_name):
            raise InputError(
                f"service_name={self.service_name!r}: expected a DNS label (a-z, 0-9, -; "
                "63 at most), e.g. service_name_for(run_id)"
            )
        if missing := {RUN_ID_TAG, UNIT_TAG} - self.tags.keys():
            raise InputError(f"tags lack {sorted(missing)}; use tasks.aws.tags.run_tags")
        refuse_clear_credentials(
            {"environment": self.environment},
            what="parameter-server plan",
            api_key_from=None,
            role_from="task_role_arn",
        )
        if self.token_secret_arn and not self.execution_role_arn:
            raise InputError(
                f"execution_role_arn is unset but token_secret_arn={self.token_secret_arn!r}: "
                "ECS reads a container's `secrets` with the execution role"
            )
        if self.log_group and not self.execution_role_arn:
            raise InputError(
                f"execution_role_arn is unset but log_group={self.log_group!r}: Fargate "
                "writes awslogs with the execution role"
            )

    @property
    def server_host(self) -> str:
        """The DNS name workers resolve to the server: ``<service>.<namespace>``."""
        return f"{self.service_name}.{self.namespace}"

    def service_plan(self) -> ServicePlan:
        """The ECS launch of this plan: its task definitions, network and Cloud Map name."""
        return ServicePlan(
            cluster=self.cluster,
            region=self.region,
            subnets=self.subnets,
            security_groups=self.security_groups,
            service_name=self.service_name,
            namespace=self.namespace,
            port=self.port,
            tags=self.tags,
            definitions=task_definitions(self),
            worker_count=self.worker_count,
            vpc=self.vpc,
        )


def plan_from_unit(
    unit: ComputeUnit,
    run_id: str,
    tags: Mapping[str, str],
    config_uri: str,
    worker_count: int,
    *,
    size: SizeClass = "large",
    cluster: str | None = None,
    server_cpu: int = 1024,
    server_memory: int = 4096,
    worker_cpu: int = 1024,
    worker_memory: int = 4096,
    port: int = DEFAULT_PORT,
    namespace: str | None = None,
    environment: Mapping[str, str] | None = None,
    token_secret_arn: str | None = None,
) -> ParameterServerPlan:
    """A plan from a compute unit's Fargate settings.

    Args:
        unit: An AWS compute unit with ``fargate`` settings on private subnets.
        run_id: The flow run's id; names the Cloud Map service.
        tags: The run's tags (``run_tags(...)``).
        config_uri: ``s3://`` URI of the run's ``config.json``.
        worker_count: Worker tasks, at least 1.
        size: The run's size class; its wall time (``unit.size_limits``) bounds the tasks.
        cluster: ECS cluster; the unit's ``fargate.cluster_arn`` if omitted.
        server_cpu: Server CPU units.
        server_memory: Server memory in MiB.
        worker_cpu: Worker CPU units.
        worker_memory: Worker memory in MiB.
        port: Server port.
        namespace: Cloud Map private DNS namespace; the unit's ``cloud_map_namespace`` (which
            Terraform makes), else ``DEFAULT_NAMESPACE``, if omitted.
        environment: Extra container environment.
        token_secret_arn: Secrets Manager ARN of the run token.

    Raises:
        InputError: The unit has no Fargate settings, public subnets or no cluster, or a
            value is invalid (the message names the field).
    """
    fargate = unit.fargate
    if fargate is None:
        raise InputError(
            f"compute unit {unit.name!r} has no `fargate` settings (subnets, security groups, "
            "image); the parameter server runs on ECS Fargate"
        )
    if fargate.public_subnets:
        raise InputError(
            f"compute unit {unit.name!r} has fargate.public_subnets=True: the parameter server "
            "must not be reachable from the internet; give the unit private subnets"
        )
    cluster = cluster or fargate.cluster_arn
    if not cluster:
        raise InputError(f"compute unit {unit.name!r} has no fargate.cluster_arn; pass cluster")
    if not unit.region:
        raise InputError(f"compute unit {unit.name!r} has no region")
    return ParameterServerPlan(
        cluster=cluster,
        image=fargate.image,
        subnets=tuple(fargate.subnets),
        security_groups=tuple(fargate.security_groups),
        config_uri=config_uri,
        service_name=service_name_for(run_id),
        tags=dict(tags),
        region=unit.region,
        execution_role_arn=fargate.execution_role_arn,
        task_role_arn=fargate.task_role_arn,
        log_group=fargate.log_group,
        vpc=fargate.vpc,
        server_cpu=server_cpu,
        server_memory=server_memory,
        worker_cpu=worker_cpu,
        worker_memory=worker_memory,
        worker_count=worker_count,
        port=port,
        namespace=namespace or unit.cloud_map_namespace or DEFAULT_NAMESPACE,
        environment=dict(environment or {}),
        wall_time_s=unit.size_limits(size).wall_time_s,
        token_secret_arn=token_secret_arn,
    )


def commands(plan: ParameterServerPlan) -> dict[str, list[str]]:
    """The containers' argv for ``"server"`` and ``"worker"``."""
    base = ["python", "-m", MODULE]
    wall = ["--wall-time-s", f"{plan.wall_time_s:g}"]
    return {
        "server": [
            *base,
            "server",
            *wall,
            "--config",
            plan.config_uri,
            "--port",
            str(plan.port),
            "--workers",
            str(plan.worker_count),
        ],
        "worker": [
            *base,
            "worker",
            *wall,
            "--config",
            plan.config_uri,
            "--server",
            f"{plan.server_host}:{plan.port}",
        ],
    }


def local_commands(
    plan: ParameterServerPlan, python: str = sys.executable, host: str = "127.0.0.1"
) -> dict[str, list[str]]:
    """The containers' commands to run on this machine: ``python`` and ``host`` swapped in.

    Args:
        plan: The launch plan.
        python: Interpreter that replaces the containers' ``python``.
        host: Address that replaces the Cloud Map DNS name.
    """
    local = {}
    for role, argv in commands(plan).items():
        argv = [python, *argv[1:]]
        local[role] = [a.replace(plan.server_host + ":", host + ":") for a in argv]
    return local


def task_definitions(plan: ParameterServerPlan) -> dict[str, dict[str, Any]]:
    """RegisterTaskDefinition arguments for ``"server"`` and ``"worker"``."""
    environment = {"PYTHONUNBUFFERED": "1", **plan.environment}
    sizes = {
        "server": (plan.server_cpu, plan.server_memory),
        "worker": (plan.worker_cpu, plan.worker_memory),
    }
    definitions = {}
    for role, command in commands(plan).items():
        cpu, memory = sizes[role]
        container: dict[str, Any] = {
            "name": role,
            "image": plan.image,
            "essential": True,
            # The container may use all of the task's memory; stated, as moto requires it.
            "memory": memory,
            "command": command,
            "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
        }
        if plan.token_secret_arn:
            container["secrets"] = [{"name": TOKEN_VARIABLE, "valueFrom": plan.token_secret_arn}]
        if role == "server":
            container["portMappings"] = [{"containerPort": plan.port, "protocol": "tcp"}]
        if plan.log_group:
            container["logConfiguration"] = {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": plan.log_group,
                    "awslogs-region": plan.region,
                    "awslogs-stream-prefix": plan.service_name,
                },
            }
        definition: dict[str, Any] = {
            "family": SERVER_FAMILY if role == "server" else WORKER_FAMILY,
            "requiresCompatibilities": ["FARGATE"],
            "networkMode": "awsvpc",
            "cpu": str(cpu),
            "memory": str(memory),
            "containerDefinitions": [container],
            "tags": to_aws(plan.tags, key="key", value="value"),
        }
        if plan.execution_role_arn:
            definition["executionRoleArn"] = plan.execution_role_arn
        if plan.task_role_arn:
            definition["taskRoleArn"] = plan.task_role_arn
        definitions[role] = definition
    return definitions


class WallClockExceeded(SciflowError):
    """The tasks ran past the plan's wall-clock limit and were stopped."""


class ParameterServerLaunch(ServerWorkersLaunch):
    """A ``ServerWorkersLaunch`` of the parameter server and its workers.

    ``wait`` stops every task once the plan's ``wall_time_s`` (plus ``WALL_CLOCK_GRACE_S``)
    has passed since they were all RUNNING: the processes exit by themselves at their limit,
    and this stops a task whose process did not.

    Example:
        ```python
        with ParameterServerLaunch(plan, unit.aws_account()) as launch:
            launch.start()
            outcome = launch.wait()
        ```
    """

    def __init__(
        self, plan: ParameterServerPlan, account: AwsAccount | None = None, **kwargs: Any
    ) -> None:
        """A launch of ``plan``; nothing starts until ``start()``.

        Args:
            plan: What to launch.
            account: The unit's AWS account (``unit.aws_account()``); ambient if ``None``.
            **kwargs: ``ServerWorkersLaunch``'s options (``poll_s``, ``start_timeout_s``,
                ``clients``, ``sleep``).
        """
        super().__init__(plan.service_plan(), account, **kwargs)
        self.wall_time_s = plan.wall_time_s
        self.running_since: float | None = None

    def start(self) -> None:
        """Start the tasks (``ServerWorkersLaunch.start``); the wall clock runs from then."""
        super().start()
        self.running_since = time.monotonic()

    def wait(
        self,
        timeout_s: float | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> LaunchOutcome:
        """``ServerWorkersLaunch.wait``, ending at the wall-clock limit at the latest.

        Raises:
            WallClockExceeded: The tasks still ran at the limit; they were stopped.
            TransientError: Tasks still running after ``timeout_s`` (if that comes first).
        """
        since = self.running_since if self.running_since is not None else time.monotonic()
        left = self.wall_time_s + WALL_CLOCK_GRACE_S - (time.monotonic() - since)
        if timeout_s is not None and timeout_s < left:
            return super().wait(timeout_s, on_line)
        try:
            return super().wait(max(left, 0.0), on_line)
        except TransientError as exc:
            if time.monotonic() - since < self.wall_time_s:
                raise  # AWS kept throttling: not the limit
            reason = f"sciflow: wall-clock limit of {self.wall_time_s:g} s reached"
            self.stop(reason)
            raise WallClockExceeded(
                f"parameter-server tasks of {self.plan.service_name} ran past the wall-clock "
                f"limit of {self.wall_time_s:g} s; stopped them"
            ) from exc
