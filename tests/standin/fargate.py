"""A sciflow AWS unit whose Dask clusters run on the stand-in (tests and benchmarks share it)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import boto3

from blocks.compute_unit import ComputeUnit, FargateDask, local_unit
from tests.standin.ecs import ACCOUNT

REGION = "us-east-1"


def enable_long_task_arns(region: str = REGION) -> None:
    """ECS's default since 2021, which dask-cloudprovider asks for and moto does not report."""
    boto3.client("ecs", region_name=region).put_account_setting(
        name="taskLongArnFormat", value="enabled"
    )


def bridge_api_url(standin_network: Any) -> str:
    """This process's Prefect API URL as containers reach it: through a relay on the bridge."""
    from prefect.settings import PREFECT_API_URL

    api = urlsplit(PREFECT_API_URL.value())
    return standin_network.relay(api.port).url(api.path)


def prefect_api_secret(url: str, region: str = REGION) -> str:
    """A Secrets Manager secret holding the Prefect API URL; returns its ARN."""
    return boto3.client("secretsmanager", region_name=region).create_secret(
        Name="sciflow/prefect-api-url", SecretString=url
    )["ARN"]


def standin_unit(
    name: str, made: dict[str, Any], api_secret: str, storage_root: str, n_workers: int = 2
) -> ComputeUnit:
    """An AWS unit on ``made`` (``StandInNetwork.make_vpc``); each size: n CPU workers."""
    workers = {
        size: spec.model_copy(update={"n_workers": n_workers, "worker_gpu": 0, "worker_mem": 2048})
        for size, spec in local_unit().dask_workers.items()
    }
    return ComputeUnit(
        name=name,
        platform="aws",
        region=REGION,
        storage_root=storage_root,
        dask_workers=workers,
        fargate=FargateDask(
            image="sciflow:standin",
            subnets=made["subnets"],
            security_groups=[made["group"]],
            cluster_arn=made["cluster"],
            task_role_arn=f"arn:aws:iam::{ACCOUNT}:role/sciflow-task",
            execution_role_arn=f"arn:aws:iam::{ACCOUNT}:role/sciflow-exec",
            log_group="/sciflow/dask",
            prefect_api_url_secret=api_secret,
        ),
    )
