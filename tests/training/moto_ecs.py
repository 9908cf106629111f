"""ECS Fargate and Cloud Map in moto's server: a private network, a cluster, task lifecycles.

Shared by tests/training/test_ecs.py and tests/flows/test_distributed_training_aws.py; a test
module takes the fixtures it uses as names: ``lifecycle = moto_ecs.lifecycle``.

moto 5.2.5 models an ECS task's life with its state manager (model ``ecs::task``, by default
``manual`` with ``times: 1``: each DescribeTasks moves a task one state on), but starts tasks
in RUNNING: the states before it are commented out in ``moto/ecs/models.py``. The
``lifecycle`` fixture gives moto's tasks those states back (PROVISIONING, PENDING, ACTIVATING
first) and sets the transition over HTTP, so a launcher has to poll its tasks to RUNNING.
moto runs no container: a task's exit code is whatever ``set_exit_code`` put in its backend.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest

from blocks.compute_unit import ComputeUnit, FargateDask

ACCOUNT = "123456789012"
REGION = "us-east-1"
CLUSTER = "sciflow"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sciflow:1"
# Real ECS's task states; moto comments out the first three.
FULL_LIFECYCLE = [
    ("PROVISIONING", "PENDING"),
    ("PENDING", "ACTIVATING"),
    ("ACTIVATING", "RUNNING"),
    ("RUNNING", "DEACTIVATING"),
    ("DEACTIVATING", "STOPPING"),
    ("STOPPING", "DEPROVISIONING"),
    ("DEPROVISIONING", "STOPPED"),
]
# DescribeTasks calls that move a task one state on, under the `lifecycle` fixture.
DESCRIBES_PER_STATE = 2


def set_transition(endpoint: str, times: int) -> None:
    """Tasks move one state on every ``times`` DescribeTasks of them."""
    with httpx.Client(trust_env=False, timeout=30) as client:
        client.post(
            f"{endpoint}/moto-api/state-manager/set-transition",
            json={
                "model_name": "ecs::task",
                "transition": {"progression": "manual", "times": times},
            },
        ).raise_for_status()


@pytest.fixture
def lifecycle(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Tasks start PROVISIONING and move one state per 2 DescribeTasks of them."""
    from moto.ecs.models import Task

    original = Task.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._transitions, self._status = FULL_LIFECYCLE, "PROVISIONING"

    monkeypatch.setattr(Task, "__init__", init)
    set_transition(aws, times=DESCRIBES_PER_STATE)
    yield DESCRIBES_PER_STATE
    with httpx.Client(trust_env=False, timeout=30) as client:
        client.post(
            f"{aws}/moto-api/state-manager/unset-transition", json={"model_name": "ecs::task"}
        ).raise_for_status()


def make_network(region: str = REGION, cluster: str = CLUSTER) -> dict[str, Any]:
    """A VPC (DNS hostnames on), two private subnets, a security group, an ECS cluster."""
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    # Cloud Map private DNS needs DNS hostnames on (and moto's task ENIs need it too).
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.1.{i}.0/24")["Subnet"]["SubnetId"]
        for i in (1, 2)
    ]
    group = ec2.create_security_group(GroupName="ps", Description="ps", VpcId=vpc)["GroupId"]
    created = boto3.client("ecs", region_name=region).create_cluster(clusterName=cluster)
    return {
        "vpc": vpc,
        "subnets": subnets,
        "group": group,
        "cluster": created["cluster"]["clusterArn"],
    }


@pytest.fixture
def network(aws: str) -> dict[str, Any]:
    """``make_network()`` in moto: vpc, subnets, group and cluster (ARN) by those keys."""
    return make_network()


def fargate_settings(network: dict[str, Any], **overrides: Any) -> FargateDask:
    """A unit's Fargate settings on ``network``'s private subnets, with roles and logs."""
    settings = {
        "image": IMAGE,
        "subnets": network["subnets"],
        "security_groups": [network["group"]],
        "cluster_arn": network["cluster"],
        "execution_role_arn": f"arn:aws:iam::{ACCOUNT}:role/exec",
        "task_role_arn": f"arn:aws:iam::{ACCOUNT}:role/task",
        "log_group": "/sciflow/train",
    } | overrides
    return FargateDask(**settings)


def make_unit(
    network: dict[str, Any],
    name: str = "lab",
    storage_root: str = "s3://lab-sciflow/runs",
    **fargate: Any,
) -> ComputeUnit:
    """An AWS unit whose ``fargate`` settings are ``fargate_settings(network, **fargate)``."""
    return ComputeUnit(
        name=name,
        platform="aws",
        region=REGION,
        storage_root=storage_root,
        fargate=fargate_settings(network, **fargate),
    )


def set_exit_code(task_arn: str, code: int, cluster: str = CLUSTER) -> None:
    """What the task's container will report once STOPPED (moto runs none)."""
    from moto.ecs.models import ecs_backends

    ecs_backends[ACCOUNT][REGION].tasks[cluster][task_arn].containers[0].exitCode = code


def cloud_map() -> Any:
    """A Cloud Map client that moto's server can answer DiscoverInstances on."""
    from tasks.compute.ecs import aws_clients

    return aws_clients(None, REGION)[1]


class Recorder:
    """Wire bodies of RunTask and the states DescribeTasks answered, from botocore's events.

    moto does not echo a task's network configuration; the RunTask bodies on the wire are
    recorded with a botocore ``before-call`` hook instead.
    """

    def __init__(self, client: Any) -> None:
        self.run_tasks: list[dict[str, Any]] = []
        self.states: list[dict[str, str]] = []
        client.meta.events.register("before-call.ecs.RunTask", self._before_run)
        client.meta.events.register("after-call.ecs.DescribeTasks", self._after_describe)

    def _before_run(self, params: dict[str, Any], **_: Any) -> None:
        self.run_tasks.append(json.loads(params["body"]))

    def _after_describe(self, parsed: dict[str, Any], **_: Any) -> None:
        self.states.append({t["taskArn"]: t["lastStatus"] for t in parsed.get("tasks", [])})

    def seen(self, arn: str) -> list[str]:
        """The states ``arn`` went through, each once, in order."""
        states: list[str] = []
        for answer in self.states:
            if arn in answer and (not states or states[-1] != answer[arn]):
                states.append(answer[arn])
        return states
