"""As an operator: a unit's ``small`` ECS pool, sciflow's ECS worker, moto's ECS.

A unit is registered from a ``terraform output -json`` naming what the test made in moto
(``blocks.registration.register_unit``): its ``small`` pool is made from
``deployments/work-pools/ecs-fargate.json``. ``prefect worker start --type sciflow-ecs``
(prefect-aws's ECS worker, which ``tasks.compute.ecs_worker`` extends only to cancel runs whose
flow has not begun) picks a deployment run from that pool, registers the task definition
in the class's fixed family and runs the task on moto; the stand-in runs the task's command
(``prefect flow-run execute``) as a process in a namespace holding the task's private
address. The task reaches the test's Prefect server through a relay on the bridge, whose URL
it gets from Secrets Manager (the pool's ``prefect_api_url_secret_arn``), and writes to
moto's S3. prefect-aws's ECS observer reads the stand-in's task-state events from SQS.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import boto3
import httpx
import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.registration import ECS_WORKER_TYPE, register_unit
from tests.conftest import FAKE_AWS_ENV
from tests.e2e.conftest import (
    VENV_BIN,
    WORKER_START_TIMEOUT_S,
    PrefectServer,
    Service,
    start_service,
    wait_for_worker,
)
from tests.standin.ecs import ACCOUNT, EcsStandIn
from tests.standin.fixtures import StandInNetwork

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
BUCKET = "sciflow-e2e"
LOG_GROUP = "/sciflow/e2e"
# The open-source server ignores it; set on the worker, it makes prefect-aws deliver the key
# as a secret (the pool's prefect_api_key_secret_arn), as on Prefect Cloud.
API_KEY = "pnu_e2e_not_a_real_key"
RUN_TIMEOUT_S = 240.0
ENTRYPOINT = "flows/mr_reconstruction.py:mr_reconstruction"


@dataclass
class EcsPool:
    """A pool made from the template, its worker, and what the test made in moto."""

    name: str
    unit: str
    worker: Service
    cluster: str
    api_url_for_tasks: str


def _terraform_output(unit: str, values: dict[str, Any]) -> dict[str, Any]:
    """``terraform output -json`` of a Mode 1 environment whose unit has a ``small`` pool."""
    values = {
        "unit_name": unit,
        "mode": "managed",
        "region": REGION,
        "storage_root": f"s3://{BUCKET}/runs",
        "work_pools": {"small": f"{unit}-small"},
        **values,
    }
    return {key: {"value": value, "type": "string"} for key, value in values.items()}


@pytest.fixture
def ecs_pool(
    prefect_server: PrefectServer,
    standin_network: StandInNetwork,
    ecs_standin: EcsStandIn,
    aws: str,
) -> Iterator[EcsPool]:
    """The unit's AWS side in moto, the unit registered with its ``small`` pool, a worker."""
    port = int(prefect_server.api_url.rsplit(":", 1)[1].split("/", 1)[0])
    api_url_for_tasks = standin_network.relay(port).url("/api")
    made = standin_network.make_vpc(cluster="sciflow-e2e")
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName=LOG_GROUP)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    boto3.client("sqs", region_name=REGION).create_queue(QueueName=ecs_standin.events_queue)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    url_secret = secrets.create_secret(
        Name="sciflow/prefect-api-url", SecretString=api_url_for_tasks
    )
    key_secret = secrets.create_secret(Name="sciflow/prefect-api-key", SecretString=API_KEY)
    unit = f"e2e-{uuid.uuid4().hex[:8]}"
    outputs = _terraform_output(
        unit,
        {
            "dask_image": "sciflow:e2e",  # the stand-in's image is this checkout and its venv
            "ecs_cluster_arn": made["cluster"],
            "subnets": made["subnets"],
            "security_groups": [made["group"]],
            "execution_role_arn": f"arn:aws:iam::{ACCOUNT}:role/sciflow-execution",
            "task_role_arn": f"arn:aws:iam::{ACCOUNT}:role/sciflow-task",
            "log_group": LOG_GROUP,
            "prefect_api_url_secret_arn": url_secret["ARN"],
            "prefect_api_key_secret_arn": key_secret["ARN"],
        },
    )
    # Through the API, as `python -m blocks save-unit` does: no collections-registry lookup.
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        [name] = register_unit(outputs, unit).pools
    env = {
        **prefect_server.env,
        **FAKE_AWS_ENV,
        "AWS_ENDPOINT_URL": aws,
        "PREFECT_API_KEY": API_KEY,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    worker = start_service(
        "ecs worker",
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", name, "--type", ECS_WORKER_TYPE],
        env,
        prefect_server.service.log_path.with_name(f"{name}.log"),
    )
    try:
        wait_for_worker(prefect_server.api_url, name, worker, WORKER_START_TIMEOUT_S)
        yield EcsPool(name, unit, worker, made["cluster"], api_url_for_tasks)
    finally:
        worker.stop()


async def _deploy_and_run(
    api_url: str, pool: str, flow_name: str, parameters: dict[str, Any], job_variables: dict
) -> str:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(flow_name)
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name=pool,
                entrypoint=ENTRYPOINT,
                work_pool_name=pool,
                job_variables=job_variables,
            )
            flow_run = await client.create_flow_run_from_deployment(
                deployment_id, parameters=parameters
            )
            return str(flow_run.id)


async def _read_run(api_url: str, flow_run_id: str) -> FlowRun:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)


def _wait_for_final(api_url: str, flow_run_id: str, pool: EcsPool, stand_in: EcsStandIn) -> FlowRun:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        flow_run = anyio.run(_read_run, api_url, flow_run_id)
        if flow_run.state is not None and flow_run.state.is_final():
            return flow_run
        pool.worker.check_alive()
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text() for p in stand_in.logs_dir.glob("ecs-*.log"))
            raise TimeoutError(
                f"flow run {flow_run_id} still {flow_run.state_name} after "
                f"{RUN_TIMEOUT_S:.0f} s\n--- worker\n{pool.worker.log()}\n--- tasks\n{logs}"
            )
        time.sleep(0.5)


def _stopped_task(cluster: str, flow_run_id: str, timeout: float = 60) -> dict[str, Any]:
    """The one ECS task tagged with the flow run's id (prefect-aws's tag), once STOPPED.

    A run is Completed when its process reports it, a moment before the process exits.
    """
    ecs = boto3.client("ecs", region_name=REGION)
    deadline = time.monotonic() + timeout
    while True:
        arns = ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"]
        arns += ecs.list_tasks(cluster=cluster)["taskArns"]
        tasks = ecs.describe_tasks(cluster=cluster, tasks=arns, include=["TAGS"])["tasks"]
        tag = {"key": "prefect.io/flow-run-id", "value": flow_run_id}
        [task] = [t for t in tasks if tag in t.get("tags", [])]
        if task["lastStatus"] == "STOPPED":
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.3)


def _events(api_url: str, prefix: str, flow_run_id: str) -> list[str]:
    """Names of the events about ``flow_run_id`` whose name starts with ``prefix``."""
    body = {
        "filter": {
            "event": {"prefix": [prefix]},
            "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        },
        "limit": 50,
    }
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.post(f"{api_url}/events/filter", json=body)
    response.raise_for_status()
    return [event["event"] for event in response.json()["events"]]


def _flow_run_logs(api_url: str, flow_run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.post(f"{api_url}/logs/filter", json=body)
    response.raise_for_status()
    return [log["message"] for log in response.json()]


def test_an_ecs_pool_run_completes_on_fargate_with_outputs_in_s3(
    prefect_server: PrefectServer, ecs_pool: EcsPool, ecs_standin: EcsStandIn, tmp_path
):
    from tasks.mr.phantom import make_phantom, phantom_acquisition

    signal, noise = phantom_acquisition(make_phantom(32, 32, 4), noise_samples=4096)
    s3 = boto3.client("s3", region_name=REGION)
    for name, array in (("signal", signal[..., 0, 0]), ("noise", noise)):
        np.save(tmp_path / f"{name}.npy", array)
        s3.upload_file(str(tmp_path / f"{name}.npy"), BUCKET, f"inputs/{name}.npy")
    parameters = {
        "signal": f"s3://{BUCKET}/inputs/signal.npy",
        "noise": f"s3://{BUCKET}/inputs/noise.npy",
        "options": {"method": "ac", "recon": "b1", "mask": "percentage", "mask_value": 10},
    }
    job_variables = {"env": {"SCIFLOW_STORAGE_ROOT": f"s3://{BUCKET}/runs"}}
    flow_run_id = anyio.run(
        _deploy_and_run,
        prefect_server.api_url,
        ecs_pool.name,
        "mr-reconstruction",
        parameters,
        job_variables,
    )

    flow_run = _wait_for_final(prefect_server.api_url, flow_run_id, ecs_pool, ecs_standin)

    assert flow_run.state_name == "Completed", (flow_run.state, ecs_pool.worker.log())
    # The flow wrote under the storage root given to the task, in moto's S3.
    prefix = f"runs/local/{flow_run_id}/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    assert f"{prefix}SNR.png" in keys, keys
    info = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{prefix}info.json")["Body"].read())
    assert info["sciflow"]["extra"]["median_snr_in_mask"] > 20
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}SNR.png")["Body"].read(4) == b"\x89PNG"

    # The task the worker ran: from the template, tagged, its API URL and key only as secrets.
    task = _stopped_task(ecs_pool.cluster, flow_run_id)
    assert task["containers"][0]["exitCode"] == 0
    assert task["launchType"] == "FARGATE"
    tags = {t["key"]: t["value"] for t in task["tags"]}
    assert tags["sciflow:unit"] == ecs_pool.unit
    assert flow_run.infrastructure_pid == f"{ecs_pool.cluster}::{task['taskArn']}"
    [override] = task["overrides"]["containerOverrides"]
    environment = {e["name"]: e["value"] for e in override["environment"]}
    assert environment["SCIFLOW_STORAGE_ROOT"] == f"s3://{BUCKET}/runs"
    assert "PREFECT_API_URL" not in environment
    assert "PREFECT_API_KEY" not in environment
    assert API_KEY not in json.dumps(task, default=str)
    ecs = boto3.client("ecs", region_name=REGION)
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    # The small class's fixed family and size (limits.small), not one per deployment.
    assert definition["taskDefinition"]["family"] == f"sciflow-{ecs_pool.unit}-small"
    assert (definition["taskDefinition"]["cpu"], definition["taskDefinition"]["memory"]) == (
        "4096",
        "16384",
    )
    [container] = definition["taskDefinition"]["containerDefinitions"]
    assert {s["name"] for s in container["secrets"]} == {"PREFECT_API_URL", "PREFECT_API_KEY"}
    assert container["logConfiguration"]["options"]["awslogs-group"] == LOG_GROUP

    # The container's output went to CloudWatch Logs, where the awslogs driver puts it.
    stream = f"sciflow/prefect/{task['taskArn'].rsplit('/', 1)[1]}"
    events = boto3.client("logs", region_name=REGION).get_log_events(
        logGroupName=LOG_GROUP, logStreamName=stream
    )["events"]
    assert any("Finished in state Completed" in e["message"] for e in events), events

    # prefect-aws's observer read the stand-in's state changes from SQS and replicated them.
    deadline = time.monotonic() + 30
    while "prefect.ecs.task.stopped" not in (
        seen := _events(prefect_server.api_url, "prefect.ecs.task.", flow_run_id)
    ):
        assert time.monotonic() < deadline, (seen, ecs_pool.worker.log())
        time.sleep(0.5)
    assert {"prefect.ecs.task.running", "prefect.ecs.task.stopped"} <= set(seen)
    assert prefect_server.proxy.requests == []


def test_a_task_that_exits_nonzero_marks_its_run_crashed_with_its_logs(
    prefect_server: PrefectServer, ecs_pool: EcsPool, ecs_standin: EcsStandIn
):
    """The worker returns as soon as the task is created; only the observer sees it fail."""
    command = "python -c \"print('sciflow: no flow here', flush=True); raise SystemExit(3)\""
    flow_run_id = anyio.run(
        _deploy_and_run,
        prefect_server.api_url,
        ecs_pool.name,
        "mr-reconstruction",
        {},
        {"command": command},
    )

    flow_run = _wait_for_final(prefect_server.api_url, flow_run_id, ecs_pool, ecs_standin)

    assert flow_run.state_name == "Crashed", flow_run.state
    assert "non-zero exit code" in flow_run.state.message
    task = _stopped_task(ecs_pool.cluster, flow_run_id)
    assert task["containers"][0]["exitCode"] == 3
    # The observer forwards the CloudWatch lines of a run that never reached the API.
    deadline = time.monotonic() + 30
    while "sciflow: no flow here" not in (
        logs := _flow_run_logs(prefect_server.api_url, flow_run_id)
    ):
        assert time.monotonic() < deadline, logs
        time.sleep(0.5)
