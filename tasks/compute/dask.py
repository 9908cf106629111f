"""Dask task runners for a compute unit: a LocalCluster here, a FargateCluster on AWS."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from blocks.compute_unit import ComputeUnit, SizeClass
from tasks.errors import InputError

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
            "processes": True,
            # Loopback only: nothing listens on or reaches another address.
            "host": LOOPBACK,
            "dashboard_address": f"{LOOPBACK}:0",
            "silence_logs": logging.WARNING,
            "memory_limit": f"{workers.worker_mem}MiB",
            # Worker processes report task runs to this process's API, not a server of
            # their own (the ephemeral API lives in this process tree only).
            "env": {"PREFECT_API_URL": current_api_url()},
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
        "skip_cleanup": False,
    }
    if workers.worker_gpu:
        kwargs["worker_gpu"] = workers.worker_gpu
    return FARGATE_CLUSTER, {k: v for k, v in kwargs.items() if v is not None}


def current_api_url() -> str:
    """URL of the Prefect API this process talks to, ephemeral or not."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is not None and context.client is not None:
        return str(context.client.api_url).rstrip("/")
    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def dask_task_runner(unit: ComputeUnit, size: SizeClass, tags: Mapping[str, str]) -> DaskTaskRunner:
    """A ``DaskTaskRunner`` that starts the unit's cluster for ``size`` and stops it after.

    Use it on a subflow: ``step.with_options(task_runner=dask_task_runner(unit, "large", tags))``.
    """
    from prefect_dask import DaskTaskRunner

    cluster_class, cluster_kwargs = cluster_spec(unit, size, tags)
    return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=cluster_kwargs)
