"""Dask task runners for a compute unit: a LocalCluster here, a FargateCluster on AWS."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from blocks.compute_unit import ComputeUnit, SizeClass
from tasks.aws.clients import AwsAccount
from tasks.compute.launches import Launch, LaunchRecord
from tasks.errors import InputError
from tasks.settings import get_settings

if TYPE_CHECKING:
    from prefect_dask import DaskTaskRunner

LOCAL_CLUSTER = "distributed.LocalCluster"
FARGATE_CLUSTER = "dask_cloudprovider.aws.FargateCluster"
LOOPBACK = "127.0.0.1"


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
    if unit.fargate is None:
        raise InputError(
            f"compute unit {unit.name!r} has no `fargate` settings; expected image, subnets "
            "and security groups to start Dask on Fargate"
        )
    fargate = unit.fargate
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
        "cloudwatch_logs_group": fargate.log_group,
        "n_workers": workers.n_workers,
        "worker_nthreads": workers.threads_per_worker,
        "worker_cpu": workers.worker_cpu,
        "worker_mem": workers.worker_mem,
        "scheduler_cpu": fargate.scheduler_cpu,
        "scheduler_mem": fargate.scheduler_mem,
        "scheduler_timeout": fargate.scheduler_timeout,
        "fargate_spot": fargate.fargate_spot,
        "tags": dict(tags),
        # False would make dask-cloudprovider delete every idle dask-cloudprovider cluster,
        # role and security group in the account, whoever made them; a run removes only its
        # own (its launch record, then its tags).
        "skip_cleanup": True,
    }
    if workers.worker_gpu:
        kwargs["worker_gpu"] = workers.worker_gpu
    return FARGATE_CLUSTER, {k: v for k, v in kwargs.items() if v is not None}


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
        record: The run's launch record (``RunContext.launches``): a Fargate cluster's tasks
            are in it while the cluster lives, so the run's stop hook, in whichever process,
            stops them if the run dies first. Local clusters are threads of this process and
            need none.
    """
    from prefect_dask import DaskTaskRunner

    quiet_dask_logs()
    cluster_class, cluster_kwargs = cluster_spec(unit, size, tags)
    if cluster_class == FARGATE_CLUSTER and record is not None:
        return DaskTaskRunner(
            cluster_class=recorded_fargate_cluster,
            cluster_kwargs={"record": record, "account": unit.aws_account(), **cluster_kwargs},
        )
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=cluster_kwargs)


@contextmanager
def recorded_fargate_cluster(
    record: LaunchRecord, account: AwsAccount, **kwargs: Any
) -> Iterator[Any]:
    """A ``FargateCluster`` whose scheduler and worker tasks are in ``record`` while it runs.

    They leave the record once the cluster has closed (which stops them); if the run dies
    first they stay, for its stop hook.
    """
    from dask_cloudprovider.aws import FargateCluster

    with FargateCluster(**kwargs) as cluster:
        launches = [
            record.add(
                Launch(
                    kind="ecs-task",
                    id=task.task_arn,
                    account=account,
                    cluster=cluster.cluster_arn,
                    label=label,
                )
            )
            for label, task in [
                ("dask-scheduler", cluster.scheduler),
                *((f"dask-worker-{name}", worker) for name, worker in cluster.workers.items()),
            ]
        ]
        yield cluster
    for launch in launches:
        record.done(launch)


def quiet_dask_logs() -> None:
    """Keep Dask's own INFO lines (scheduler, workers, connections) out of a run's output.

    Its warnings and errors still show; ``SCIFLOW_LOG_LEVEL=DEBUG`` shows everything.
    ``LocalCluster(silence_logs=...)`` alone does not do it once Prefect has set up logging.
    """
    debug = get_settings().log_level == "DEBUG"
    logging.getLogger("distributed").setLevel(logging.DEBUG if debug else logging.WARNING)
