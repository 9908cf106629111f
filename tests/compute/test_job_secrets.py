"""No credential in clear in a Batch or ECS job body: one check on every path that builds one.

Calls are counted with a botocore event hook on the client that would send them; the bodies
AWS would keep are read back from moto's server (DescribeJobs, DescribeJobDefinitions).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anyio
import pytest
from prefect.settings import PREFECT_API_KEY, temporary_settings

from tasks.aws.clients import client as aws_client
from tasks.compute import ecs as compute_ecs
from tasks.compute.batch import (
    ContainerSpec,
    ensure_job_definition,
    job_definition_spec,
    submit_job,
)
from tasks.compute.batch_worker import AwsBatchJobConfiguration
from tasks.compute.secrets import clear_credentials, refuse_clear_credentials
from tasks.errors import InputError
from tasks.training import ecs as training_ecs
from tests.compute.moto_batch import QUEUE, REGION, operations, record_calls
from tests.compute.test_batch_worker import BASE, _run_through_worker
from tests.training import moto_ecs

CANARY_KEY = "pnu_canary_never_in_a_body_0123456789"
KEY_ARN = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:prefect-key-AbCdEf"
EXECUTION_ROLE = "arn:aws:iam::123456789012:role/batch-exec"
TAGS = {"sciflow:run-id": "run-1", "sciflow:unit": "lab", "sciflow:flow": "sim"}
network = moto_ecs.network  # the shared fixture


@pytest.fixture
def batch(aws):
    return aws_client("batch", region=REGION)


@pytest.fixture
def worker_clients(monkeypatch) -> list[list[tuple[str, dict[str, Any]]]]:
    """Every Batch call the worker's own clients make, per client made."""
    made: list[list[tuple[str, dict[str, Any]]]] = []
    original = AwsBatchJobConfiguration.clients

    def counted(self: AwsBatchJobConfiguration) -> tuple[Any, Any]:
        batch, logs = original(self)
        made.append(record_calls(batch))
        return batch, logs

    monkeypatch.setattr(AwsBatchJobConfiguration, "clients", counted)
    return made


def _sent(made: list[list[tuple[str, dict[str, Any]]]]) -> list[tuple[str, dict[str, Any]]]:
    return [call for calls in made for call in calls]


# --- the check ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"environment": {"PREFECT_API_KEY": CANARY_KEY, "PORT": 8080}},  # a plain one
        {"containerOverrides": {"environment": [{"name": "PREFECT_API_KEY", "value": "k"}]}},
        {
            "nodeOverrides": {
                "nodePropertyOverrides": [
                    {"targetNodes": "0:0", "containerOverrides": {"environment": []}},
                    {
                        "targetNodes": "1:1",
                        "containerOverrides": {
                            "environment": [{"name": "PREFECT_API_KEY", "value": "k"}]
                        },
                    },
                ]
            }
        },
        [{"containerDefinitions": [{"environment": [{"name": "PREFECT_API_KEY", "value": "k"}]}]}],
        {"environment": {"PREFECT_API_KEY": "k"}},  # dask-cloudprovider's RunTask environment
    ],
)
def test_a_clear_api_key_is_found_wherever_a_body_sets_environment(body):
    assert clear_credentials(body) == ["PREFECT_API_KEY"]


def test_secrets_and_harmless_variables_are_not_credentials():
    body = {
        "containerProperties": {
            "environment": [{"name": "PREFECT_API_URL", "value": "http://x/api"}],
            "secrets": [{"name": "PREFECT_API_KEY", "valueFrom": KEY_ARN}],
        }
    }
    assert clear_credentials(body) == []
    refuse_clear_credentials(body, what="job", api_key_from="x", role_from="y")  # no error


def test_the_refusal_names_the_variables_and_the_fix_and_never_the_value():
    env = {"environment": {"PREFECT_API_KEY": CANARY_KEY, "AWS_SESSION_TOKEN": "tok-canary"}}
    with pytest.raises(InputError) as caught:
        refuse_clear_credentials(
            env, what="Batch job j", api_key_from="`ARN_FIELD`", role_from="`ROLE`"
        )
    message = str(caught.value)
    assert "AWS_SESSION_TOKEN=<redacted>, PREFECT_API_KEY=<redacted>" in message
    assert "`ARN_FIELD`" in message
    assert "`ROLE`" in message
    assert CANARY_KEY not in message
    assert "tok-canary" not in message
    assert "\n" not in message


# --- Batch: submit_job (run_batch_job's path) --------------------------------------------------


def test_submit_job_refuses_a_clear_key_before_submitting(batch_queue, batch):
    spec = job_definition_spec(ContainerSpec(image="repo/sim:1"), node_count=2)
    definition, _ = ensure_job_definition(batch, spec, TAGS)
    calls = record_calls(batch)
    with pytest.raises(InputError, match=r"PREFECT_API_KEY=<redacted> in clear.*`secrets`"):
        submit_job(
            batch,
            name="sim",
            queue=QUEUE,
            definition=definition,
            tags=TAGS,
            environment={"PREFECT_API_KEY": CANARY_KEY},
            timeout_s=600,
            node_count=2,
        )
    assert calls == []
    assert batch.list_jobs(jobQueue=QUEUE)["jobSummaryList"] == []


# --- Batch: the aws-batch worker ---------------------------------------------------------------


def test_the_worker_refuses_its_api_key_without_a_secret_arn(batch_queue, batch, worker_clients):
    with (
        temporary_settings({PREFECT_API_KEY: CANARY_KEY}),
        pytest.raises(InputError) as caught,
    ):
        anyio.run(_run_through_worker, "batch-test", {**BASE, "poll_interval_s": 0.01})
    message = str(caught.value)
    assert "PREFECT_API_KEY=<redacted>" in message
    assert "job variable `prefect_api_key_secret_arn`" in message
    assert CANARY_KEY not in message
    # The queue was looked up; nothing was registered or submitted.
    assert operations(_sent(worker_clients)) == ["DescribeJobQueues"]
    assert batch.list_jobs(jobQueue=QUEUE)["jobSummaryList"] == []


def test_the_worker_sends_its_api_key_as_the_secret_arn(batch_queue, batch, worker_clients):
    variables = {
        **BASE,
        "poll_interval_s": 0.01,
        "execution_role_arn": EXECUTION_ROLE,
        "prefect_api_key_secret_arn": KEY_ARN,
    }
    with temporary_settings({PREFECT_API_KEY: CANARY_KEY}):
        _, _, result, _ = anyio.run(_run_through_worker, "batch-test", variables)

    assert CANARY_KEY not in json.dumps(_sent(worker_clients))
    [job] = batch.describe_jobs(jobs=[result.identifier])["jobs"]
    assert CANARY_KEY not in json.dumps(job, default=str)
    assert "PREFECT_API_KEY" not in {e["name"] for e in job["container"]["environment"]}
    # The job runs its definition's secrets (moto's DescribeJobs leaves them out).
    [definition] = batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])[
        "jobDefinitions"
    ]
    secrets = definition["containerProperties"]["secrets"]
    assert secrets == [{"name": "PREFECT_API_KEY", "valueFrom": KEY_ARN}]


def test_a_named_definition_with_the_key_secret_takes_the_key_from_it(
    batch_queue, batch, worker_clients
):
    secret = ContainerSpec(
        image="repo/sim:1",
        execution_role_arn=EXECUTION_ROLE,
        secrets=(("PREFECT_API_KEY", KEY_ARN),),
    )
    for name, spec in (("with-key", secret), ("without-key", replace(secret, secrets=()))):
        body = job_definition_spec(spec, node_count=1)
        batch.register_job_definition(jobDefinitionName=name, **body)
    base = {"job_queue": QUEUE, "poll_interval_s": 0.01}

    with temporary_settings({PREFECT_API_KEY: CANARY_KEY}):
        _, _, result, _ = anyio.run(
            _run_through_worker, "batch-test", {**base, "job_definition": "with-key"}
        )
        with pytest.raises(
            InputError, match=r"through the `secrets` of job definition 'without-key'"
        ):
            anyio.run(_run_through_worker, "batch-test", {**base, "job_definition": "without-key"})

    assert CANARY_KEY not in json.dumps(_sent(worker_clients))
    assert operations(_sent(worker_clients)).count("SubmitJob") == 1  # the first run only
    [job] = batch.describe_jobs(jobs=[result.identifier])["jobs"]
    assert "PREFECT_API_KEY" not in {e["name"] for e in job["container"]["environment"]}


# --- ECS: task launches and Dask clusters ------------------------------------------------------


def test_an_ecs_launch_refuses_a_clear_key_before_registering_or_running(network):
    plan = training_ecs.plan_from_unit(
        moto_ecs.make_unit(network), "run-1", TAGS, "s3://lab/runs/1/config.json", 1
    ).service_plan()
    definitions = {role: dict(body) for role, body in plan.definitions.items()}
    [container] = definitions["worker"]["containerDefinitions"]
    leaked = {"name": "AWS_SECRET_ACCESS_KEY", "value": "secret-canary"}
    container["environment"] = [*container["environment"], leaked]
    ecs, discovery, ec2 = compute_ecs.aws_clients(None, plan.region)
    calls = record_calls(ecs)
    launch = compute_ecs.ServerWorkersLaunch(
        replace(plan, definitions=definitions), clients=(ecs, discovery, ec2)
    )
    with pytest.raises(InputError, match=r"AWS_SECRET_ACCESS_KEY=<redacted>.*`taskRoleArn`"):
        launch.start()
    assert calls == []


def test_a_parameter_server_plan_refuses_a_clear_key(network):
    with pytest.raises(InputError, match=r"PREFECT_API_KEY=<redacted>.*leave PREFECT_API_KEY out"):
        training_ecs.plan_from_unit(
            moto_ecs.make_unit(network), "run-1", TAGS, "s3://lab/runs/1/config.json", 1,
            environment={"PREFECT_API_KEY": CANARY_KEY},
        )  # fmt: skip


def test_a_dask_cluster_refuses_a_clear_key_before_any_ecs_call(aws, monkeypatch):
    from tasks.compute import dask as dask_module
    from tests.compute.test_dask import TAGS as DASK_TAGS
    from tests.compute.test_dask import aws_unit

    made: list[list[tuple[str, dict[str, Any]]]] = []
    original = dask_module.client

    def counted(service: str, *args: Any, **kwargs: Any) -> Any:
        made_client = original(service, *args, **kwargs)
        made.append(record_calls(made_client))
        return made_client

    monkeypatch.setattr(dask_module, "client", counted)
    unit = aws_unit(public_subnets=False)
    cls, kwargs = dask_module.cluster_spec(unit, "small", DASK_TAGS)
    definitions = dask_module.task_definitions(unit, cls, kwargs)
    kwargs["environment"] = {"PREFECT_API_KEY": CANARY_KEY}
    with (
        pytest.raises(InputError, match=r"`fargate.prefect_api_key_secret`"),
        dask_module.recorded_ecs_cluster(cls, definitions, unit.aws_account(), None, **kwargs),
    ):
        pass
    assert _sent(made) == []
