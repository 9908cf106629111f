"""Dask task runners for a compute unit: a LocalCluster here, Dask on ECS on AWS.

On AWS the scheduler runs on Fargate, and so do the workers unless they ask for GPUs: those run
on the unit's EC2 GPU capacity provider through ``ECSCluster`` (Fargate has no GPUs). sciflow
registers the scheduler's and workers' task definitions itself, since dask-cloudprovider's
carry no ``secrets``: the workers get the Prefect API URL and key from Secrets Manager or SSM,
never as plain environment. Everything a cluster needs (its task definitions, its TLS secret,
and its ECS cluster when the unit names none) exists only while it runs and is tagged with the
run's tags; IAM roles and the log group are the unit's, never made per run.

The scheduler, the workers and the flow host speak TLS with certificates made for each cluster
(``Security.temporary()``) and required both ways: anything the security group admits without
them is refused, where plaintext TCP would run the pickled functions it sends as the task role.
The tasks get the certificates from a Secrets Manager secret made for the cluster, as ECS
``secrets``. dask-cloudprovider's own AWS calls go out with the unit's credentials, region and
endpoint (``AioClients``), never aiobotocore's ambient ones.

Bounded in time even when the flow run is killed: the scheduler exits after
``scheduler_timeout`` idle (a dead client's work is released), the workers after the size
class's wall time (``--lifetime``), and work left without workers fails after
``scheduler_timeout``, so the scheduler falls idle.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets as secrets_module
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from blocks.compute_unit import ComputeUnit, FargateDask, SizeClass
from tasks.aws.clients import AioClients, AwsAccount, call, client
from tasks.aws.tags import RUN_ID_TAG, to_aws
from tasks.compute.launches import Launch, LaunchRecord
from tasks.compute.secrets import refuse_clear_credentials
from tasks.errors import InputError, SciflowError
from tasks.settings import get_settings

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

logger = logging.getLogger(__name__)

LOCAL_CLUSTER = "distributed.LocalCluster"
FARGATE_CLUSTER = "dask_cloudprovider.aws.FargateCluster"
ECS_CLUSTER = "dask_cloudprovider.aws.ECSCluster"
LOOPBACK = "127.0.0.1"
# Where the tasks log when the unit names no group (created by the awslogs driver, kept),
# and their streams' prefix: ``dask/<container>/<task id>``.
DEFAULT_LOG_GROUP = "/sciflow/dask"
LOG_STREAM_PREFIX = "dask"
# Families of the task definitions sciflow registers for a cluster (role and body hash follow).
TASK_FAMILY_PREFIX = "sciflow-dask-"
# dask-cloudprovider names the containers it overrides by these.
CONTAINERS = {"scheduler": "dask-scheduler", "worker": "dask-worker"}
# Dask's setting distributed.scheduler.no-workers-timeout, as the scheduler reads it.
NO_WORKERS_TIMEOUT_VARIABLE = "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT"
# Dask's TLS settings as the containers read them (values may be PEM text, not paths).
REQUIRE_ENCRYPTION_VARIABLE = "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"
TLS_VARIABLE_PREFIX = "DASK_DISTRIBUTED__COMM__TLS__"
# Which of the cluster's TLS secret's JSON keys each container reads into which setting.
TLS_SETTINGS: dict[Role, dict[str, str]] = {
    "scheduler": {"CA_FILE": "ca", "SCHEDULER__CERT": "cert", "SCHEDULER__KEY": "key"},
    # A task on a worker that opens a Dask client of its own uses the client pair.
    "worker": {
        "CA_FILE": "ca",
        "WORKER__CERT": "cert",
        "WORKER__KEY": "key",
        "CLIENT__CERT": "cert",
        "CLIENT__KEY": "key",
    },
}
TLS_SECRET_PREFIX = "sciflow-dask-tls-"  # noqa: S105  # a name, not a secret
# Open files per container, as dask-cloudprovider's own definitions allow.
NOFILE = 65535

Role = Literal["scheduler", "worker"]


def cluster_spec(
    unit: ComputeUnit, size: SizeClass, tags: Mapping[str, str]
) -> tuple[str, dict[str, Any]]:
    """The cluster class and keyword arguments a unit's Dask runner starts.

    Args:
        unit: Where the cluster runs.
        size: Size class; picks worker count, CPU and memory from ``unit.dask_workers``.
        tags: The run's tags (``run_tags``), put on every Fargate resource.

    Returns:
        Import path of the cluster class, and its keyword arguments.

    Raises:
        InputError: An AWS unit without Dask-on-Fargate settings.
    """
    workers = unit.dask_workers[size]
    if unit.is_local:
        return LOCAL_CLUSTER, {
            "n_workers": workers.n_workers,
            "threads_per_worker": workers.threads_per_worker,
            # Workers are threads of this process: a script needs no `if __name__ ==
            # "__main__":` guard (spawned worker processes re-run an unguarded script and
            # fail), clusters start in a second instead of ~15 s, and the numerics release
            # the GIL in NumPy/SciPy.
            "processes": False,
            # Loopback only: nothing listens on or reaches another address. That includes
            # the workers' HTTP servers, which otherwise take every interface.
            "protocol": "tcp://",
            "host": LOOPBACK,
            "dashboard_address": f"{LOOPBACK}:0",
            "worker_dashboard_address": f"{LOOPBACK}:0",
            "silence_logs": logging.WARNING,
            # Threads share this process's memory, which no per-worker limit can bound;
            # a limit would pause workers when the flow itself holds the memory.
            "memory_limit": 0,
        }
    fargate = _fargate_settings(unit)
    kwargs: dict[str, Any] = {
        "image": fargate.image,
        "region_name": unit.region,
        "vpc": fargate.vpc,
        "subnets": list(fargate.subnets),
        "security_groups": list(fargate.security_groups),
        # Without a route to an internet gateway the client must use private addresses.
        "fargate_use_private_ip": not fargate.public_subnets,
        "cluster_arn": fargate.cluster_arn,
        "task_role_arn": fargate.task_role_arn,
        "execution_role_arn": fargate.execution_role_arn,
        "cloudwatch_logs_group": fargate.log_group or DEFAULT_LOG_GROUP,
        "cloudwatch_logs_stream_prefix": LOG_STREAM_PREFIX,
        "n_workers": workers.n_workers,
        "worker_nthreads": workers.threads_per_worker,
        "worker_cpu": workers.worker_cpu,
        "worker_mem": workers.worker_mem,
        "scheduler_cpu": fargate.scheduler_cpu,
        "scheduler_mem": fargate.scheduler_mem,
        "scheduler_timeout": fargate.scheduler_timeout,
        # The certificates come from the environment (task_definitions, with_tls_secret).
        "scheduler_extra_args": ["--protocol", "tls"],
        # Workers exit after the class's wall time; the scheduler then fails the work left
        # (no workers, see task_definitions), falls idle and exits after scheduler_timeout.
        "worker_extra_args": ["--lifetime", f"{unit.size_limits(size).wall_time_s}s"],
        "fargate_spot": fargate.fargate_spot,
        "tags": dict(tags),
        # False would make dask-cloudprovider delete every idle dask-cloudprovider cluster,
        # role and security group in the account, whoever made them; a run removes only its
        # own (its launch record, then its tags).
        "skip_cleanup": True,
    }
    if not workers.worker_gpu:
        return FARGATE_CLUSTER, {k: v for k, v in kwargs.items() if v is not None}
    if not fargate.gpu_capacity_provider:
        raise InputError(
            f"compute unit {unit.name!r}: size class {size!r} asks for "
            f"{workers.worker_gpu} GPU(s) per Dask worker, but Fargate has no GPUs and the "
            "unit names no EC2 GPU capacity; expected `fargate.gpu_capacity_provider` (an "
            "ECS capacity provider of GPU instances in `fargate.cluster_arn`)"
        )
    kwargs.pop("fargate_spot")  # Spot is a Fargate capacity provider; the workers are on EC2
    kwargs |= {
        "fargate_scheduler": True,
        "fargate_workers": False,
        "worker_gpu": workers.worker_gpu,
        # Not the cluster's default strategy: the workers go where the GPUs are.
        "worker_task_kwargs": {
            "capacityProviderStrategy": [{"capacityProvider": fargate.gpu_capacity_provider}]
        },
    }
    return ECS_CLUSTER, {k: v for k, v in kwargs.items() if v is not None}


def _fargate_settings(unit: ComputeUnit) -> FargateDask:
    """The unit's Dask-on-ECS settings, refused when a cluster could not run with them."""
    if unit.fargate is None:
        raise InputError(
            f"compute unit {unit.name!r} has no `fargate` settings; expected image, subnets "
            "and security groups to start Dask on Fargate"
        )
    fargate = unit.fargate
    missing = [
        name
        for name in ("execution_role_arn", "task_role_arn", "prefect_api_url_secret")
        if not getattr(fargate, name)
    ]
    if missing:
        raise InputError(
            f"compute unit {unit.name!r}: `fargate` lacks {missing}; Dask on ECS needs the "
            "execution role (image, logs, secrets), the task role (the run's storage) and the "
            "secret holding the Prefect API URL the workers report to (a run makes no IAM "
            "roles and puts no API address in plain environment)"
        )
    return fargate


def task_definitions(
    unit: ComputeUnit, cluster_class: str, kwargs: Mapping[str, Any]
) -> dict[Role, dict[str, Any]]:
    """The scheduler's and workers' ``RegisterTaskDefinition`` bodies for a cluster spec.

    dask-cloudprovider overrides each container's command at ``RunTask``; what these add to
    its own definitions is the workers' ``secrets`` (the Prefect API URL and key), Dask's
    required encryption and the run's tags (``with_tls_secret`` adds the certificates once
    the cluster's secret exists). A GPU worker asks for its GPUs and runs on EC2.

    Args:
        unit: The AWS unit (``unit.fargate`` set).
        cluster_class: ``FARGATE_CLUSTER`` or ``ECS_CLUSTER``, from ``cluster_spec``.
        kwargs: The cluster's keyword arguments, from ``cluster_spec``.

    Returns:
        Body by role; each family is named by a hash of its body.
    """
    fargate = _fargate_settings(unit)
    gpu = int(kwargs.get("worker_gpu") or 0)
    sizes: dict[Role, tuple[int, int]] = {
        "scheduler": (kwargs["scheduler_cpu"], kwargs["scheduler_mem"]),
        "worker": (kwargs["worker_cpu"], kwargs["worker_mem"]),
    }
    bodies: dict[Role, dict[str, Any]] = {}
    for role, (cpu, memory) in sizes.items():
        on_fargate = role == "scheduler" or cluster_class == FARGATE_CLUSTER
        container: dict[str, Any] = {
            "name": CONTAINERS[role],
            "image": kwargs["image"],
            "cpu": cpu,
            "memory": memory,
            "essential": True,
            # Replaced by dask-cloudprovider's override (address, threads, memory limit).
            "command": [CONTAINERS[role]],
            "ulimits": [{"name": "nofile", "softLimit": NOFILE, "hardLimit": NOFILE}],
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": kwargs["cloudwatch_logs_group"],
                    "awslogs-region": kwargs["region_name"],
                    "awslogs-stream-prefix": kwargs["cloudwatch_logs_stream_prefix"],
                    "awslogs-create-group": "true",
                },
            },
        }
        # Every connection, in and out, is TLS with the cluster's certificates.
        container["environment"] = [{"name": REQUIRE_ENCRYPTION_VARIABLE, "value": "True"}]
        if role == "scheduler":
            # Work no worker can run (they exit at the wall time) fails after this, rather
            # than keeping the scheduler busy, and so billed, for ever.
            container["environment"].append(
                {"name": NO_WORKERS_TIMEOUT_VARIABLE, "value": fargate.scheduler_timeout}
            )
        if role == "worker":
            # Task runs on the workers report to Prefect; the scheduler never calls it.
            container["secrets"] = fargate.prefect_api_secrets()
            if gpu:
                container["resourceRequirements"] = [{"type": "GPU", "value": str(gpu)}]
        body: dict[str, Any] = {
            "taskRoleArn": kwargs["task_role_arn"],
            "executionRoleArn": kwargs["execution_role_arn"],
            "networkMode": "awsvpc",
            "requiresCompatibilities": ["FARGATE" if on_fargate else "EC2"],
            "runtimePlatform": {"cpuArchitecture": "X86_64", "operatingSystemFamily": "LINUX"},
            "cpu": str(cpu),
            "memory": str(memory),
            "containerDefinitions": [container],
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        body["family"] = f"{TASK_FAMILY_PREFIX}{role}-{digest}"
        body["tags"] = to_aws(kwargs.get("tags") or {}, key="key", value="value")
        bodies[role] = body
    return bodies


def with_tls_secret(
    definitions: Mapping[Role, Mapping[str, Any]], secret_arn: str
) -> dict[Role, dict[str, Any]]:
    """``definitions`` whose containers read the cluster's certificates from ``secret_arn``.

    Args:
        definitions: ``task_definitions(...)``.
        secret_arn: The Secrets Manager secret holding the JSON ``{"ca", "cert", "key"}``
            (``_create_tls_secret``); ECS reads each key into its Dask setting.
    """
    bodies: dict[Role, dict[str, Any]] = {}
    for role, body in definitions.items():
        [container] = body["containerDefinitions"]
        tls = [
            {"name": TLS_VARIABLE_PREFIX + setting, "valueFrom": f"{secret_arn}:{key}::"}
            for setting, key in TLS_SETTINGS[role].items()
        ]
        container = {**container, "secrets": [*(container.get("secrets") or []), *tls]}
        bodies[role] = {**body, "containerDefinitions": [container]}
    return bodies


def dask_task_runner(
    unit: ComputeUnit,
    size: SizeClass,
    tags: Mapping[str, str],
    record: LaunchRecord | None = None,
) -> DaskTaskRunner:
    """A ``DaskTaskRunner`` that starts the unit's cluster for ``size`` and stops it after.

    Use it on a subflow: ``step.with_options(task_runner=dask_task_runner(unit, "large", tags))``.

    Args:
        unit: Where the cluster runs.
        size: Size class.
        tags: The run's tags.
        record: The run's launch record (``RunContext.launches``): an ECS cluster's tasks
            are in it while the cluster lives, so the run's stop hook, in whichever process,
            stops them if the run dies first. Local clusters are threads of this process and
            need none.
    """
    from prefect_dask import DaskTaskRunner

    quiet_dask_logs()
    cluster_class, cluster_kwargs = cluster_spec(unit, size, tags)
    if cluster_class == LOCAL_CLUSTER:
        return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=cluster_kwargs)
    return DaskTaskRunner(
        cluster_class=recorded_ecs_cluster,
        cluster_kwargs={
            "cluster_class": cluster_class,
            "definitions": task_definitions(unit, cluster_class, cluster_kwargs),
            "account": unit.aws_account(),
            "record": record,
            **cluster_kwargs,
        },
    )


@contextmanager
def recorded_ecs_cluster(
    cluster_class: str,
    definitions: Mapping[Role, Mapping[str, Any]],
    account: AwsAccount,
    record: LaunchRecord | None = None,
    **kwargs: Any,
) -> Iterator[Any]:
    """A Dask cluster on ECS, with everything it needs made before it and removed after it.

    Makes the cluster's TLS certificates and the secret the tasks read them from, registers
    ``definitions`` (and an ECS cluster when ``kwargs`` names none), starts ``cluster_class``
    on them with the unit's AWS clients and TLS required, and puts its scheduler and worker
    tasks in ``record`` while it runs. Once it has closed (which stops its tasks) the tasks
    leave the record and the definitions, the secret and the ECS cluster made here are
    removed. If the run dies first the tasks stay recorded for its stop hook; what this made
    is still removed, or, should AWS refuse, left to cleanup, which finds it by the run's tags.

    Args:
        cluster_class: ``FARGATE_CLUSTER`` or ``ECS_CLUSTER``.
        definitions: ``task_definitions(...)``.
        account: The unit's account (the calls made here and the cluster's own).
        record: The run's launch record, if any.
        **kwargs: The cluster's keyword arguments (``cluster_spec``).
    """
    # dask-cloudprovider sends `environment` as RunTask overrides; both go out as job bodies.
    refuse_clear_credentials(
        [*definitions.values(), {"environment": kwargs.get("environment") or {}}],
        what="Dask cluster",
        api_key_from="the unit's `fargate.prefect_api_key_secret`",
        role_from="the unit's `fargate.task_role_arn`",
    )
    from distributed.security import Security

    region = kwargs.get("region_name")
    ecs = client("ecs", account, region=region)
    secrets = client("secretsmanager", account, region=region)
    security = Security.temporary()
    made_cluster: str | None = None
    tls_secret: str | None = None
    registered: dict[Role, str] = {}
    try:
        tls_secret = _create_tls_secret(secrets, security, kwargs.get("tags") or {})
        definitions = with_tls_secret(definitions, tls_secret)
        if not kwargs.get("cluster_arn"):
            made_cluster = _create_ecs_cluster(ecs, kwargs.get("tags") or {})
            kwargs["cluster_arn"] = made_cluster
        for role, body in definitions.items():
            registered[role] = call(
                ecs.register_task_definition,
                f"register task definition {body['family']}",
                **body,
            )["taskDefinition"]["taskDefinitionArn"]
        cluster_type = _tolerant_cluster_class(cluster_class)
        with cluster_type(
            scheduler_task_definition_arn=registered["scheduler"],
            worker_task_definition_arn=registered["worker"],
            aws_clients=AioClients(account, region),
            security=security,
            **kwargs,
        ) as cluster:
            tasks = [
                ("dask-scheduler", cluster.scheduler),
                *((f"dask-worker-{name}", worker) for name, worker in cluster.workers.items()),
            ]
            launches = [
                Launch(
                    kind="ecs-task",
                    id=task.task_arn,
                    account=account,
                    cluster=cluster.cluster_arn,
                    label=label,
                )
                for label, task in tasks
            ]
            if record is not None:
                for launch in launches:
                    record.add(launch)
            yield cluster
        if record is not None:
            for launch in launches:
                record.done(launch)
    finally:
        _remove(ecs, registered.values(), made_cluster)
        if tls_secret:
            _delete_tls_secret(secrets, tls_secret)


def _create_tls_secret(secrets: Any, security: Any, tags: Mapping[str, str]) -> str:
    """A Secrets Manager secret with the cluster's CA, certificate and key; returns its ARN."""
    name = TLS_SECRET_PREFIX + secrets_module.token_hex(8)
    value = {"ca": security.tls_ca_file, "cert": security.tls_worker_cert}
    value["key"] = security.tls_worker_key  # Security.temporary(): one pair for every role
    return call(
        secrets.create_secret,
        f"create the Dask cluster's TLS secret {name}",
        Name=name,
        SecretString=json.dumps(value),
        Description="TLS certificates of one sciflow Dask cluster, deleted with it",
        Tags=to_aws(tags, key="Key", value="Value"),
    )["ARN"]


def _delete_tls_secret(secrets: Any, arn: str) -> None:
    try:
        call(
            secrets.delete_secret,
            f"delete {arn}",
            SecretId=arn,
            ForceDeleteWithoutRecovery=True,  # its cluster is gone; nothing may read it again
        )
    except SciflowError:
        logger.exception("could not delete the Dask cluster's TLS secret %s", arn)


def _create_ecs_cluster(ecs: Any, tags: Mapping[str, str]) -> str:
    run = tags.get(RUN_ID_TAG, "")
    name = f"sciflow-dask-{run[:8] or hashlib.sha256(json.dumps(tags).encode()).hexdigest()[:8]}"
    return call(
        ecs.create_cluster,
        f"create ECS cluster {name}",
        clusterName=name,
        capacityProviders=["FARGATE", "FARGATE_SPOT"],
        tags=to_aws(tags, key="key", value="value"),
    )["cluster"]["clusterArn"]


def _remove(ecs: Any, definition_arns: Any, cluster_arn: str | None) -> None:
    """Deregister and delete the cluster's task definitions; delete its ECS cluster if made."""
    arns = list(definition_arns)
    try:
        for arn in arns:
            call(ecs.deregister_task_definition, f"deregister {arn}", taskDefinition=arn)
        if arns:
            call(ecs.delete_task_definitions, "delete task definitions", taskDefinitions=arns)
        if cluster_arn:
            call(ecs.delete_cluster, f"delete ECS cluster {cluster_arn}", cluster=cluster_arn)
    except SciflowError:
        # Tagged with the run: cleanup's sweep removes what is left.
        logger.exception("could not remove what the Dask cluster used; cleanup will")


@cache
def _tolerant_cluster_class(path: str) -> type:
    """``path``'s cluster class, with tasks that wait through ECS's ACTIVATING state.

    It takes ``aws_clients`` (an ``AioClients``): every client the cluster and its tasks
    make comes from it, in the unit's account, rather than from aiobotocore's ambient
    credentials.

    dask-cloudprovider polls a new task only while it is PROVISIONING or PENDING and takes any
    other state but RUNNING for a failure, so a task seen ACTIVATING (ECS's step between
    PENDING and RUNNING) fails the whole cluster. The stand-in showed it; here the scheduler
    and workers keep polling through ACTIVATING.
    """
    from dask_cloudprovider.aws import ecs
    from distributed.deploy.spec import SpecCluster
    from prefect.utilities.importtools import from_qualified_name

    class WaitsPastActivating:
        async def _update_task(self) -> None:
            await super()._update_task()  # type: ignore[misc]
            while self.task["lastStatus"] == "ACTIVATING":  # type: ignore[attr-defined]
                await asyncio.sleep(1)
                await super()._update_task()  # type: ignore[misc]

    scheduler = type("Scheduler", (WaitsPastActivating, ecs.Scheduler), {})
    worker = type("Worker", (WaitsPastActivating, ecs.Worker), {})

    class UsesTolerantTasks(SpecCluster):
        def __init__(self, *, aws_clients: AioClients, **kwargs: Any) -> None:
            self._aws_clients = aws_clients
            with warnings.catch_warnings():
                # dask-cloudprovider warns of a scheduler without TLS whenever TLS is on: it
                # looks for --tls arguments by `type(arg) == "str"`; ours are in its env.
                warnings.filterwarnings("ignore", "the cluster was instructed to connect")
                super().__init__(**kwargs)

        # Between ECSCluster._start (which sets the specs) and SpecCluster._start (which
        # starts the scheduler and workers from them).
        async def _start(self) -> None:
            self.scheduler_spec["cls"] = scheduler
            self.new_spec["cls"] = worker
            for spec in self.worker_spec.values():
                spec["cls"] = worker
            await super()._start()

    class UsesUnitAccount:
        # Ahead of ECSCluster's own: every client the cluster and its tasks make is in the
        # unit's account (AioClients), none from aiobotocore's ambient credentials.
        def _client(self, name: str) -> Any:
            return self._aws_clients(name, self.session)  # type: ignore[attr-defined]

    base = from_qualified_name(path)
    return type(base.__name__, (UsesUnitAccount, base, UsesTolerantTasks), {})


def quiet_dask_logs() -> None:
    """Keep Dask's own INFO lines (scheduler, workers, connections) out of a run's output.

    Its warnings and errors still show; ``SCIFLOW_LOG_LEVEL=DEBUG`` shows everything.
    ``LocalCluster(silence_logs=...)`` alone does not do it once Prefect has set up logging.
    """
    debug = get_settings().log_level == "DEBUG"
    logging.getLogger("distributed").setLevel(logging.DEBUG if debug else logging.WARNING)
