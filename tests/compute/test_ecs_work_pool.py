"""The ECS work pool's base job template, built by prefect-aws's ECS worker code.

What the worker would send for a flow run is built from the template with the worker's
configuration classes (``ECSJobConfiguration``, ``ECSWorker``, which sciflow's ``sciflow-ecs``
worker inherits), without AWS; the e2e test
(tests/e2e/test_ecs_pool.py) runs it on the stand-in.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import anyio
import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.server.schemas.actions import WorkPoolCreate
from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, temporary_settings
from prefect.utilities.schema_tools import validate
from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSWorker

from tasks.compute.ecs_worker import WORKER_TYPE, SciflowEcsWorker
from tests.compute.ecs_template import load_template, with_defaults

REGION = "us-east-1"
SECRETS = f"arn:aws:secretsmanager:{REGION}:123456789012:secret"
UNIT_VALUES = {
    "unit": "lab-a",
    "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/sciflow:1.0.0",
    "cluster": "sciflow-lab-a",
    "subnets": ["subnet-private-1", "subnet-private-2"],
    "security_groups": ["sg-flows"],
    "execution_role_arn": "arn:aws:iam::123456789012:role/sciflow-execution",
    "task_role_arn": "arn:aws:iam::123456789012:role/sciflow-task",
    "log_group": "/sciflow/lab-a",
    "prefect_api_url_secret_arn": f"{SECRETS}:sciflow/prefect-api-url-AbCdEf",
}
WORKER_API_URL = "http://prefect.internal:4200/api"
TASK_DEFINITION_ARN = f"arn:aws:ecs:{REGION}:123456789012:task-definition/sciflow:1"


def _bodies(
    template: dict[str, Any], job_variables: dict[str, Any], worker_key: str | None = None
) -> tuple[dict[str, Any], dict[str, Any], FlowRun]:
    """The RegisterTaskDefinition and RunTask bodies the worker builds for one flow run."""
    flow_run = FlowRun(flow_id=uuid4(), deployment_id=uuid4(), name="calm-otter")
    settings: dict[Any, Any] = {PREFECT_API_URL: WORKER_API_URL}
    if worker_key:
        settings[PREFECT_API_KEY] = worker_key
    with temporary_settings(settings):
        configuration = anyio.run(
            ECSJobConfiguration.from_template_and_values, template, job_variables
        )
        configuration.prepare_for_flow_run(flow_run, worker_name="ecs-worker-1")
    worker = ECSWorker(work_pool_name="sciflow-ecs")
    definition = worker._prepare_task_definition(configuration, region=REGION, flow_run=flow_run)
    request = worker._prepare_task_run_request(
        configuration, definition, TASK_DEFINITION_ARN, new_task_definition_registered=True
    )
    return definition, request, flow_run


def _container_environment(request: dict[str, Any]) -> dict[str, str]:
    [container] = request["overrides"]["containerOverrides"]
    return {item["name"]: item["value"] for item in container.get("environment", [])}


def test_the_template_is_a_valid_work_pool_template_for_the_ecs_worker():
    template = load_template()
    WorkPoolCreate(name="sciflow-ecs", type=WORKER_TYPE, base_job_template=template)  # server's
    # sciflow's worker takes prefect-aws's templates as they are.
    assert SciflowEcsWorker.job_configuration is ECSJobConfiguration
    default = SciflowEcsWorker.get_default_base_job_template()
    assert default == ECSWorker.get_default_base_job_template()
    fields = set(ECSJobConfiguration.model_fields)
    assert set(template["job_configuration"]) <= fields
    for name, variable in template["variables"]["properties"].items():
        assert variable.get("title"), name
        assert variable.get("description"), name


def test_a_pool_without_the_units_values_refuses_a_run_naming_them():
    schema = load_template()["variables"]
    errors = validate({}, schema, preprocess=True)
    missing = {e.message for e in errors}
    for name in ("image", "cluster", "subnets", "prefect_api_url_secret_arn"):
        assert any(repr(name) in message for message in missing), missing
    assert validate(UNIT_VALUES, schema, preprocess=True) == []


def test_a_run_is_a_private_fargate_task_with_the_api_url_as_a_secret():
    template = with_defaults(load_template(), UNIT_VALUES)
    definition, request, flow_run = _bodies(template, {})

    assert definition["networkMode"] == "awsvpc"
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    assert (definition["cpu"], definition["memory"]) == ("1024", "4096")
    assert definition["executionRoleArn"] == UNIT_VALUES["execution_role_arn"]
    assert definition["taskRoleArn"] == UNIT_VALUES["task_role_arn"]
    [container] = definition["containerDefinitions"]
    assert container["name"] == "prefect"
    assert container["image"] == UNIT_VALUES["image"]
    assert container["secrets"] == [
        {"name": "PREFECT_API_URL", "valueFrom": UNIT_VALUES["prefect_api_url_secret_arn"]}
    ]
    assert "environment" not in container
    assert container["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-create-group": "false",
            "awslogs-group": "/sciflow/lab-a",
            "awslogs-region": REGION,
            "awslogs-stream-prefix": "sciflow",
        },
    }

    assert request["launchType"] == "FARGATE"
    assert request["cluster"] == "sciflow-lab-a"
    assert request["taskDefinition"] == TASK_DEFINITION_ARN
    assert request["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": ["subnet-private-1", "subnet-private-2"],
            "securityGroups": ["sg-flows"],
            "assignPublicIp": "DISABLED",
        }
    }
    [override] = request["overrides"]["containerOverrides"]
    assert override["name"] == "prefect"
    assert override["command"] == ["prefect", "flow-run", "execute"]
    environment = _container_environment(request)
    assert environment["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    # The worker's own URL would point the task at the worker's view of the server.
    assert "PREFECT_API_URL" not in environment
    assert WORKER_API_URL not in str(request)
    tags = {tag["key"]: tag["value"] for tag in request["tags"]}
    assert tags["sciflow:unit"] == "lab-a"
    assert tags["prefect.io/flow-run-id"] == str(flow_run.id)


def test_the_api_key_is_a_secret_and_never_in_the_request():
    key_arn = f"{SECRETS}:sciflow/prefect-api-key-GhIjKl"
    values = {**UNIT_VALUES, "prefect_api_key_secret_arn": key_arn}
    template = with_defaults(load_template(), values)
    definition, request, _ = _bodies(template, {}, worker_key="pnu_worker_key_123456")
    [container] = definition["containerDefinitions"]
    assert {s["name"]: s["valueFrom"] for s in container["secrets"]} == {
        "PREFECT_API_URL": UNIT_VALUES["prefect_api_url_secret_arn"],
        "PREFECT_API_KEY": key_arn,
    }
    assert "PREFECT_API_KEY" not in _container_environment(request)
    assert "pnu_worker_key" not in str(request) + str(definition)


def test_a_deployments_environment_reaches_the_task_without_the_api_url():
    template = with_defaults(load_template(), UNIT_VALUES)
    job_variables = {"env": {"SCIFLOW_STORAGE_ROOT": "s3://lab-a-runs/sciflow"}, "cpu": 4096}
    definition, request, _ = _bodies(template, job_variables)
    environment = _container_environment(request)
    assert environment["SCIFLOW_STORAGE_ROOT"] == "s3://lab-a-runs/sciflow"
    assert "PREFECT_API_URL" not in environment
    assert definition["cpu"] == "4096"


def test_fargate_spot_runs_through_its_capacity_provider():
    template = with_defaults(load_template(), UNIT_VALUES)
    _, request, _ = _bodies(template, {"launch_type": "FARGATE_SPOT"})
    assert "launchType" not in request
    spot = {"capacityProvider": "FARGATE_SPOT", "weight": 1}
    assert request["capacityProviderStrategy"] == [spot]


@pytest.mark.parametrize("subnets", [[], "subnet-1"])
def test_subnets_must_be_a_nonempty_list(subnets):
    schema = with_defaults(load_template(), UNIT_VALUES)["variables"]
    assert validate({**UNIT_VALUES, "subnets": subnets}, schema, preprocess=True)
