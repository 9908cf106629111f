"""The ``aws-batch`` worker: its template, its checks, and runs against moto's Batch.

moto's Batch finishes every job at once and ignores TerminateJob beyond recording its reason;
cancellation tests set the job's state in the in-process moto backend first, or use a
botocore Stubber (responses checked against the AWS API model), and say which.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, ClassVar

import anyio
import boto3
import pytest
from botocore.stub import Stubber
from prefect.client.orchestration import get_client
from prefect.exceptions import InfrastructureNotFound
from prefect.states import Cancelling
from prefect.workers.base import BaseWorker
from prefect_aws.workers.ecs_worker import ECSWorker
from pydantic import ValidationError

from blocks.compute_unit import DEFAULT_LIMITS
from tasks.aws.clients import client as aws_client
from tasks.compute import ecs_worker
from tasks.compute.batch import job_definition_name, job_definition_spec
from tasks.compute.batch_worker import (
    BATCH_DEFAULT_MEMORY_MIB,
    BATCH_DEFAULT_POLL_INTERVAL_S,
    BATCH_DEFAULT_VCPUS,
    WORKER_TYPE,
    AwsBatchJobConfiguration,
    AwsBatchVariables,
    AwsBatchWorker,
    default_base_job_template,
    launch,
)
from tasks.compute.ecs_worker import SciflowEcsWorker
from tasks.compute.hooks import stop_launches
from tasks.errors import InputError
from tests.compute.moto_batch import QUEUE, REGION, operations, record_calls, set_job_status

BASE = {"job_queue": QUEUE, "image": "repo/sciflow:1"}
KEY_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:key"  # an ARN, not a key


@pytest.fixture
def client(aws):
    return aws_client("batch", region=REGION)


def configuration(**values: Any) -> AwsBatchJobConfiguration:
    """A job configuration as a worker builds it from the pool's template and these values."""
    return anyio.run(
        AwsBatchJobConfiguration.from_template_and_values, default_base_job_template(), values
    )


# --- the work pool type ----------------------------------------------------------------------


def test_prefect_finds_the_worker_types_through_the_collections_entry_point():
    points = importlib.metadata.entry_points(group="prefect.collections")
    assert {p.name: p.value for p in points}["sciflow"] == "tasks.compute.workers"
    assert BaseWorker.get_worker_class_from_type(WORKER_TYPE) is AwsBatchWorker
    assert BaseWorker.get_worker_class_from_type(ecs_worker.WORKER_TYPE) is SciflowEcsWorker
    assert BaseWorker.get_worker_class_from_type("ecs") is ECSWorker  # prefect-aws's, untouched


def test_every_template_variable_has_a_title_and_a_description():
    variables = default_base_job_template()["variables"]
    assert variables["required"] == ["job_queue"]
    for name, prop in variables["properties"].items():
        assert prop.get("description"), name
        if name not in {"name", "env", "labels", "command"}:  # Prefect's own
            assert prop.get("title"), name
    props = variables["properties"]
    assert props["vcpus"]["default"] == BATCH_DEFAULT_VCPUS
    assert props["memory_mib"]["default"] == BATCH_DEFAULT_MEMORY_MIB
    assert str(BATCH_DEFAULT_MEMORY_MIB) in props["memory_mib"]["description"]
    assert f"{BATCH_DEFAULT_POLL_INTERVAL_S:g}" in props["poll_interval_s"]["description"]


def test_template_defaults_make_a_single_node_job():
    config = configuration(**BASE)
    assert (config.node_count, config.main_node, config.vcpus) == (1, 0, BATCH_DEFAULT_VCPUS)
    assert config.memory_mib == BATCH_DEFAULT_MEMORY_MIB
    assert config.log_group == "/aws/batch/job"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"node_count": 0}, "node_count"),
        ({"node_count": 2, "main_node": 2}, "main_node=2 must be less than node_count=2"),
        ({"memory_mib": 256}, "memory_mib"),
        ({"vcpus": 0}, "vcpus"),
        ({"gpus": -1}, "gpus"),
        ({"image": None}, "image is required"),
        ({"job_definition": "mine:3"}, "job_definition and image are both set"),
        ({"node_command": "serve"}, "node_command is set but node_count=1"),
        ({"efs_file_system_id": "efs-1"}, "efs_file_system_id"),
        ({"efs_mount_path": "mnt"}, "efs_mount_path='mnt' must be an absolute path"),
        ({"poll_interval_s": 0}, "poll_interval_s"),
    ],
)
def test_bad_template_values_are_rejected_before_any_aws_call(values, field):
    """No client is made: the values fail where the worker builds the configuration."""
    with pytest.raises(ValidationError, match=field):
        configuration(**{**BASE, **values})
    with pytest.raises(ValidationError, match=field):
        AwsBatchVariables(**{**BASE, **values})


def test_missing_queue_is_rejected_by_the_configuration():
    with pytest.raises(ValidationError, match="job_queue"):
        configuration(image="repo/sciflow:1")


def test_unknown_queue_fails_after_describe_job_queues_alone(batch_queue, client):
    calls = record_calls(client)
    with pytest.raises(InputError, match="job_queue='no-such-queue'"):
        launch(client, configuration(**{**BASE, "job_queue": "no-such-queue"}))
    assert operations(calls) == ["DescribeJobQueues"]


def test_unknown_job_definition_is_an_input_error(batch_queue, client):
    config = configuration(job_queue=QUEUE, job_definition="not-registered")
    with pytest.raises(InputError, match="job_definition='not-registered'"):
        launch(client, config)


# --- runs through the worker -----------------------------------------------------------------


async def _run_through_worker(pool: str, job_variables: dict[str, Any]) -> tuple[Any, ...]:
    """A deployment on an ``aws-batch`` pool, one run of it, and the worker's ``run``."""
    async with AwsBatchWorker(work_pool_name=pool) as worker, get_client() as prefect:
        flow_id = await prefect.create_flow_from_name("batch-sim")
        deployment_id = await prefect.create_deployment(
            flow_id=flow_id, name="aws", work_pool_name=pool, job_variables=job_variables
        )
        flow_run = await prefect.create_flow_run_from_deployment(deployment_id)
        config = await AwsBatchJobConfiguration.resolve_for_flow_run(
            flow_run,
            client=prefect,
            work_pool=worker.work_pool,
            worker_name=worker.name,
        )
        started: list[str] = []

        class Status:
            def started(self, value: str) -> None:
                started.append(value)

        result = await worker.run(flow_run, config, task_status=Status())
        return flow_run, config, result, started


def test_worker_runs_a_flow_run_as_a_batch_job_with_the_runs_tags(batch_queue, client):
    variables = {
        **BASE,
        "node_count": 2,
        "unit": "lab-aws",
        "tags": {"project": "mri"},
        "poll_interval_s": 0.01,
        "efs_file_system_id": "fs-0123456789abcdef0",
    }
    flow_run, config, result, started = anyio.run(_run_through_worker, "batch-test", variables)

    assert result.status_code == 0
    assert started == [result.identifier]
    job = client.describe_jobs(jobs=[result.identifier])["jobs"][0]
    assert job["status"] == "SUCCEEDED"
    assert job["tags"]["sciflow:run-id"] == str(flow_run.id)
    assert job["tags"]["sciflow:unit"] == "lab-aws"
    assert job["tags"]["sciflow:flow"] == "batch-sim"
    assert job["tags"]["project"] == "mri"
    assert job["tags"]["prefect.io/flow-run-id"] == str(flow_run.id)
    assert job["nodeProperties"]["numNodes"] == 2
    assert job["jobName"] == flow_run.name
    assert config.env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)

    # A second run of the same template registers nothing new: the definition is reused.
    _, _, second, _ = anyio.run(_run_through_worker, "batch-test", variables)
    definitions = client.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
    assert len(definitions) == 1
    assert definitions[0]["jobDefinitionName"].startswith("sciflow-")
    second_job = client.describe_jobs(jobs=[second.identifier])["jobs"][0]
    assert second_job["jobDefinition"] == job["jobDefinition"]


@pytest.mark.parametrize(
    ("variables", "size"),
    [
        ({}, "large"),
        ({"gpus": 1}, "gpu"),
        ({"node_count": 2}, "multinode"),
        ({"size_class": "small"}, "small"),
    ],
)
def test_every_job_is_submitted_with_its_classs_wall_time(batch_queue, client, variables, size):
    _, _, result, _ = anyio.run(
        _run_through_worker, "batch-test", {**BASE, **variables, "poll_interval_s": 0.01}
    )
    job = client.describe_jobs(jobs=[result.identifier])["jobs"][0]
    expected = DEFAULT_LIMITS[size].wall_time_s
    assert job["timeout"] == {"attemptDurationSeconds": expected}


def test_a_deployments_timeout_is_the_jobs_timeout(batch_queue, client):
    _, _, result, _ = anyio.run(
        _run_through_worker, "batch-test", {**BASE, "timeout_s": 900, "poll_interval_s": 0.01}
    )
    job = client.describe_jobs(jobs=[result.identifier])["jobs"][0]
    assert job["timeout"] == {"attemptDurationSeconds": 900}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"timeout_s": 59}, "greater than or equal to 60"),
        ({"timeout_s": 8 * 24 * 3600}, "less than or equal to 604800"),
        ({"size_class": "small", "gpus": 1}, "size_class='small' with gpus=1"),
    ],
)
def test_bad_timeout_variables_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        AwsBatchVariables(**BASE, **values)


def test_a_failed_job_gives_a_nonzero_status(batch_queue, client, monkeypatch):
    """moto fails every job when MOTO_SIMPLE_BATCH_FAIL_AFTER is set."""
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    _, _, result, _ = anyio.run(
        _run_through_worker, "batch-fail", {**BASE, "poll_interval_s": 0.01}
    )
    assert result.status_code == 1
    assert not result


# --- cancellation ----------------------------------------------------------------------------


def _submitted_job(client: Any) -> tuple[str, AwsBatchJobConfiguration]:
    config = configuration(**BASE)
    config.name = "to-cancel"
    return launch(client, config).job_id, config


def test_kill_infrastructure_terminates_a_job_not_yet_running(batch_queue, client):
    """moto: the job is set back to RUNNABLE in the in-process backend (moto finishes jobs
    at once); moto records TerminateJob's reason as the job's statusReason."""
    job_id, config = _submitted_job(client)
    set_job_status(job_id, "RUNNABLE")
    config._flow_run_id = "r-7"
    anyio.run(AwsBatchWorker(work_pool_name="batch-test").kill_infrastructure, job_id, config)
    reason = client.describe_jobs(jobs=[job_id])["jobs"][0]["statusReason"]
    assert reason == "Prefect flow run r-7 was cancelled"


def test_kill_infrastructure_of_a_finished_job_is_not_found(batch_queue, client, monkeypatch):
    job_id, config = _submitted_job(client)  # moto: SUCCEEDED at once
    calls = record_calls(client)
    worker = AwsBatchWorker(work_pool_name="batch-test")
    monkeypatch.setattr(AwsBatchJobConfiguration, "clients", lambda self: (client, None))
    with pytest.raises(InfrastructureNotFound, match="already SUCCEEDED"):
        anyio.run(worker.kill_infrastructure, job_id, config)
    assert operations(calls) == ["DescribeJobs"]


def test_kill_infrastructure_sends_terminate_job_with_a_reason(monkeypatch):
    """Stubber: the DescribeJobs answer (RUNNING) and the TerminateJob call are checked
    against the AWS API model; moto would have finished the job already."""
    batch_client = boto3.client(
        "batch",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106
        endpoint_url="http://127.0.0.1:9",
    )
    stub = Stubber(batch_client)
    job_id = "0f0e0d0c-aaaa-bbbb-cccc-123456789012"
    stub.add_response(
        "describe_jobs",
        {
            "jobs": [
                {
                    "jobName": "sim",
                    "jobId": job_id,
                    "jobQueue": QUEUE,
                    "status": "RUNNING",
                    "startedAt": 1,
                    "jobDefinition": "sciflow-0123456789abcdef:1",
                }
            ]
        },
        {"jobs": [job_id]},
    )
    stub.add_response(
        "terminate_job", {}, {"jobId": job_id, "reason": "Prefect flow run r-1 was cancelled"}
    )
    config = configuration(**BASE)
    config._flow_run_id = "r-1"
    monkeypatch.setattr(AwsBatchJobConfiguration, "clients", lambda self: (batch_client, None))
    with stub:
        anyio.run(AwsBatchWorker(work_pool_name="batch-test").kill_infrastructure, job_id, config)
    stub.assert_no_pending_responses()


def test_cancellation_hook_leaves_the_job_it_runs_in_to_end_with_its_process(
    batch_queue, client, monkeypatch
):
    """Terminating it would kill ``prefect flow-run execute`` before it records Cancelled.

    tests/e2e/test_batch_pool_simulation.py shows the run reach Cancelled and the job end.
    """
    job_id, _ = _submitted_job(client)
    monkeypatch.setenv("AWS_BATCH_JOB_ID", f"{job_id}#0")

    class Run:
        id = "run-42"
        parameters: ClassVar[dict[str, str]] = {}

    stop_launches(None, Run(), Cancelling())
    assert "statusReason" not in client.describe_jobs(jobs=[job_id])["jobs"][0]


def test_job_definition_names_do_not_change_with_the_run():
    """Per-run values (environment, tags, name) are submission arguments, not definition."""
    a, b = configuration(**BASE), configuration(**BASE, tags={"x": "y"})
    a.env, b.env = {"PREFECT__FLOW_RUN_ID": "1"}, {"PREFECT__FLOW_RUN_ID": "2"}
    names = {
        job_definition_name(job_definition_spec(c.container_spec(), c.node_count)) for c in (a, b)
    }
    assert len(names) == 1


def test_the_prefect_api_key_comes_from_a_secret_not_a_submission_argument(batch_queue, client):
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun

    key_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prefect-key-AbCdEf"
    config = configuration(
        **BASE,
        execution_role_arn="arn:aws:iam::123456789012:role/batch-exec",
        prefect_api_key_secret_arn=key_arn,
        env={"PREFECT_API_KEY": "pnu_not_to_be_seen"},
    )
    config.prepare_for_flow_run(FlowRun(flow_id=uuid4(), name="secret-run"))
    calls = record_calls(client)
    launch(client, config)

    assert "pnu_not_to_be_seen" not in str(calls)
    registered = dict(calls)["RegisterJobDefinition"]["containerProperties"]
    assert registered["secrets"] == [{"name": "PREFECT_API_KEY", "valueFrom": key_arn}]
    assert registered["executionRoleArn"] == "arn:aws:iam::123456789012:role/batch-exec"


def test_a_secret_without_an_execution_role_is_rejected():
    with pytest.raises(ValidationError, match="prefect_api_key_secret_arn needs execution_role"):
        configuration(**BASE, prefect_api_key_secret_arn=KEY_ARN)
