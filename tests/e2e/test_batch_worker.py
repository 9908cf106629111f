"""As an operator: ``prefect worker start --type aws-batch`` picks up a run and submits it.

A real Prefect server (``prefect_server``) and a real worker process; AWS is moto's server on
127.0.0.1 in this test process, with its Docker-less Batch (jobs finish at once).
"""

from __future__ import annotations

import time

import anyio
import boto3
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.compute.moto_batch import (
    REGION,
)
from tests.e2e.conftest import (
    BATCH_POOL,
    BATCH_QUEUE,
    PrefectServer,
    Service,
)

pytestmark = pytest.mark.e2e

POOL = BATCH_POOL
QUEUE = BATCH_QUEUE
SUBMIT_TIMEOUT_S = 60.0


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
