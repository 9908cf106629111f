"""As an operator: ``prefect worker start --type aws-batch`` picks up a run and submits it.

A real Prefect server (``prefect_server``) and a real worker process; AWS is moto's server on
127.0.0.1 in this test process, with its Docker-less Batch (jobs finish at once).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import anyio
import boto3
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.compute.moto_batch import (
    REGION,
    make_job_queue,
    set_job_status,
    use_batch_without_docker,
)
from tests.conftest import FAKE_AWS_ENV
from tests.e2e.conftest import (
    REPO,
    VENV_BIN,
    WORKER_START_TIMEOUT_S,
    PrefectServer,
    Service,
    start_service,
    wait_for_worker,
)

pytestmark = pytest.mark.e2e

POOL = "sciflow-batch-e2e"
QUEUE = "sciflow-e2e"
SUBMIT_TIMEOUT_S = 60.0


@pytest.fixture
def batch_worker(prefect_server: PrefectServer, aws: str) -> Iterator[Service]:
    """``prefect worker start --pool sciflow-batch-e2e --type aws-batch``, AWS being moto."""
    use_batch_without_docker(aws)
    make_job_queue(QUEUE)
    env = {
        **prefect_server.env,
        **FAKE_AWS_ENV,
        "AWS_ENDPOINT_URL": aws,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    service = start_service(
        "aws-batch worker",
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "aws-batch"],
        env,
        prefect_server.service.log_path.with_name("batch-worker.log"),
    )
    try:
        wait_for_worker(prefect_server.api_url, POOL, service, WORKER_START_TIMEOUT_S)
        yield service
    finally:
        service.stop()


async def _deploy_and_run(api_url: str) -> tuple[str, str]:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            pool = await client.read_work_pool(POOL)
            assert pool.type == "aws-batch"
            flow_id = await client.create_flow_from_name("batch-e2e")
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name="moto",
                work_pool_name=POOL,
                job_variables={
                    "job_queue": QUEUE,
                    "image": "repo/sciflow-simulation:1",
                    "node_count": 2,
                    "poll_interval_s": 0.5,
                },
            )
            flow_run = await client.create_flow_run_from_deployment(deployment_id)
            return str(flow_run.id), flow_run.name


async def _infrastructure_pid(api_url: str, flow_run_id: str) -> str | None:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).infrastructure_pid


def test_the_worker_process_submits_a_deployment_run_to_batch_with_its_tags(
    prefect_server: PrefectServer, batch_worker: Service
):
    flow_run_id, flow_run_name = anyio.run(_deploy_and_run, prefect_server.api_url)
    batch = boto3.client("batch", region_name=REGION)
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    jobs: list[dict] = []
    while not jobs:
        batch_worker.check_alive()
        summaries = batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
        if summaries:
            jobs = batch.describe_jobs(jobs=[s["jobId"] for s in summaries])["jobs"]
        elif time.monotonic() > deadline:
            raise TimeoutError(f"no Batch job after {SUBMIT_TIMEOUT_S:.0f} s\n{batch_worker.log()}")
        else:
            time.sleep(0.5)

    (job,) = jobs
    assert job["tags"]["sciflow:run-id"] == flow_run_id
    assert job["tags"]["sciflow:unit"] == POOL
    assert job["tags"]["sciflow:flow"] == "batch-e2e"
    assert job["jobName"] == flow_run_name
    assert job["nodeProperties"]["numNodes"] == 2
    # The worker reported the job id to Prefect: it is what cancellation terminates.
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while (pid := anyio.run(_infrastructure_pid, prefect_server.api_url, flow_run_id)) is None:
        assert time.monotonic() < deadline, batch_worker.log()
        time.sleep(0.5)
    assert pid == job["jobId"]
    assert prefect_server.proxy.requests == []


CANCEL_ENTRYPOINT = "tests/e2e/batch_cancel_flow.py:wait_to_be_cancelled"


async def _deployed_cancel_run(api_url: str) -> str:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("batch-cancel-e2e")
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name="in-container",
                entrypoint=CANCEL_ENTRYPOINT,
                pull_steps=[
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
                ],
            )
            return str((await client.create_flow_run_from_deployment(deployment_id)).id)


async def _state_name(api_url: str, flow_run_id: str) -> str | None:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return (await client.read_flow_run(flow_run_id)).state_name


def _wait_for_state(api_url: str, flow_run_id: str, name: str, service: Service) -> None:
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while (state := anyio.run(_state_name, api_url, flow_run_id)) != name:
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {flow_run_id} is {state}, not {name}\n{service.log()}")
        time.sleep(0.3)


def test_cancelling_a_running_flow_terminates_its_own_batch_job(
    prefect_server: PrefectServer, aws: str, tmp_path
):
    """What a Batch container does: ``prefect flow-run execute`` with AWS_BATCH_JOB_ID set.

    Prefect cancels a running flow through its own process, not the worker; the flow's
    ``on_cancellation`` hook must then end the Batch job. moto stands in for Batch (it
    records TerminateJob's reason as the job's statusReason).
    """
    use_batch_without_docker(aws)
    make_job_queue(QUEUE)
    batch = boto3.client("batch", region_name=REGION)
    definition = batch.register_job_definition(
        jobDefinitionName="cancel-e2e",
        type="container",
        containerProperties={
            "image": "repo/sciflow:1",
            "resourceRequirements": [
                {"type": "VCPU", "value": "1"},
                {"type": "MEMORY", "value": "2048"},
            ],
        },
    )["jobDefinitionArn"]
    job_id = batch.submit_job(jobName="c", jobQueue=QUEUE, jobDefinition=definition)["jobId"]
    set_job_status(job_id, "RUNNING")

    flow_run_id = anyio.run(_deployed_cancel_run, prefect_server.api_url)
    env = {
        **prefect_server.env,
        **FAKE_AWS_ENV,
        "AWS_ENDPOINT_URL": aws,
        "AWS_BATCH_JOB_ID": f"{job_id}#0",
        "PREFECT__FLOW_RUN_ID": flow_run_id,
    }
    container = start_service(
        "flow-run execute",
        [str(VENV_BIN / "prefect"), "flow-run", "execute", flow_run_id],
        env,
        tmp_path / "container.log",
    )
    try:
        _wait_for_state(prefect_server.api_url, flow_run_id, "Running", container)
        prefect_server.cli("flow-run", "cancel", flow_run_id)
        _wait_for_state(prefect_server.api_url, flow_run_id, "Cancelled", container)
        deadline = time.monotonic() + SUBMIT_TIMEOUT_S
        while not (reason := batch.describe_jobs(jobs=[job_id])["jobs"][0].get("statusReason")):
            assert time.monotonic() < deadline, container.log()
            time.sleep(0.3)
    finally:
        container.stop()
    assert reason == f"Prefect flow run {flow_run_id} was cancelled", container.log()
