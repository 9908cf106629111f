"""AWS Batch in moto's server: Batch without Docker, and a compute environment and job queue.

Shared by tests/compute and tests/e2e. moto's Batch finishes every job at once when
``{"batch": {"use_docker": false}}`` is set; it has no child node jobs, ignores TerminateJob
for a job that has finished (it records the reason) and writes no logs.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import httpx

ACCOUNT = "123456789012"
REGION = "us-east-1"
QUEUE = "sciflow-test"
_ASSUME_BATCH = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "batch.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def use_batch_without_docker(endpoint: str) -> dict[str, Any]:
    """Switch moto's server to its Docker-less Batch; returns the config it now reports."""
    with httpx.Client(trust_env=False, timeout=30) as client:
        client.post(f"{endpoint}/moto-api/config", json={"batch": {"use_docker": False}})
        response = client.get(f"{endpoint}/moto-api/config")
    response.raise_for_status()
    return response.json()


def make_job_queue(name: str = QUEUE, endpoint: str | None = None) -> str:
    """A managed EC2 compute environment (with an instance profile) and a queue on it.

    Returns:
        The job queue's ARN.
    """
    kwargs: dict[str, Any] = {"region_name": REGION}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    iam, ec2, batch = (boto3.client(s, **kwargs) for s in ("iam", "ec2", "batch"))
    role = iam.create_role(
        RoleName=f"{name}-service", AssumeRolePolicyDocument=json.dumps(_ASSUME_BATCH)
    )["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName=f"{name}-instance")[
        "InstanceProfile"
    ]["Arn"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=name, Description="batch", VpcId=vpc)["GroupId"]
    environment = batch.create_compute_environment(
        computeEnvironmentName=f"{name}-ce",
        type="MANAGED",
        state="ENABLED",
        computeResources={
            "type": "EC2",
            "minvCpus": 0,
            "desiredvCpus": 0,
            "maxvCpus": 64,
            "instanceTypes": ["optimal"],
            "instanceRole": profile,
            "subnets": [subnet],
            "securityGroupIds": [group],
        },
        serviceRole=role,
    )["computeEnvironmentArn"]
    return batch.create_job_queue(
        jobQueueName=name,
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": environment}],
    )["jobQueueArn"]


def record_calls(client: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every call ``client`` makes from now on, as ``(operation, parameters)``, in order."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, json.loads(json.dumps(params, default=str))))

    client.meta.events.register(
        f"provide-client-params.{client.meta.service_model.service_name}", record
    )
    return calls


def set_job_status(job_id: str, status: str, reason: str | None = None) -> None:
    """Set a job's state in the in-process moto backend (moto finishes jobs at once)."""
    from moto.batch.models import batch_backends

    job = batch_backends[ACCOUNT][REGION]._jobs[job_id]
    job.status = status
    job.job_stopped = status in ("SUCCEEDED", "FAILED")
    if reason is not None:
        job.job_stopped_reason = reason


def operations(calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Just the operation names of ``record_calls``'s list."""
    return [name for name, _ in calls]


def describe_node_properties(monkeypatch: Any) -> None:
    """Make moto's DescribeJobDefinitions return a multi-node definition's ``nodeProperties``,
    as AWS does (moto leaves them out, so the node containers' ``secrets`` looked absent)."""
    from moto.batch.models import JobDefinition

    describe = JobDefinition.describe

    def with_nodes(self: Any) -> dict[str, Any]:
        result = describe(self)
        if self.node_properties is not None:
            result["nodeProperties"] = self.node_properties
        return result

    monkeypatch.setattr(JobDefinition, "describe", with_nodes)
