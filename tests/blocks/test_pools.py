"""Pools as ``make pools`` leaves them, and what prefect-aws's ECS worker builds from them.

Pools are applied against the session's real Prefect server (tests/conftest.py's harness);
the RegisterTaskDefinition and RunTask bodies come from prefect-aws's own
``ECSJobConfiguration`` and ``ECSWorker``, without AWS.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import anyio
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL, temporary_settings
from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSWorker

from blocks import pools
from blocks.compute_unit import DEFAULT_LIMITS, LOCAL_WORK_POOL, SIZE_CLASSES, ComputeUnit
from blocks.registration import ECS_WORKER_TYPE, plan_pools, register_unit, unregister_unit
from tests.blocks.test_registration import (
    defaults,
    fresh_name,
    full_output,
    queue_limits,
    read_pool,
)

REGION = "eu-west-1"


def _bodies(template: dict[str, Any], deployment_id=None) -> tuple[dict, dict]:
    """The task definition and RunTask request the ECS worker builds for one flow run."""
    flow_run = FlowRun(flow_id=uuid4(), deployment_id=deployment_id or uuid4(), name="calm-otter")
    # The worker has the key (prefect-aws drops it from the task's environment: the pool names
    # its secret).
    settings = {PREFECT_API_URL: "http://prefect.internal:4200/api", PREFECT_API_KEY: "pnu_x"}
    with temporary_settings(settings):
        configuration = anyio.run(ECSJobConfiguration.from_template_and_values, template, {})
        configuration.prepare_for_flow_run(flow_run, worker_name="ecs-worker-1")
    worker = ECSWorker(work_pool_name="lab-gpu")
    definition = worker._prepare_task_definition(configuration, region=REGION, flow_run=flow_run)
    worker._validate_task_definition(definition, configuration)
    request = worker._prepare_task_run_request(
        configuration, definition, "arn:aws:ecs:eu-west-1:1:task-definition/x:1", True
    )
    return definition, request


def _plan(unit: ComputeUnit, name: str):
    [plan] = [p for p in plan_pools(unit) if p.name == name]
    return plan


def test_a_gpu_run_is_an_ec2_task_on_the_units_gpu_capacity_provider():
    """Guards against GPU runs sent to Fargate (which has no GPUs), without a GPU reserved,
    or with a public IP."""
    name = fresh_name()
    unit = ComputeUnit.from_terraform_output(full_output(name))

    definition, request = _bodies(_plan(unit, f"{name}-gpu").template)

    assert definition["requiresCompatibilities"] == ["EC2"]
    assert definition["family"] == f"sciflow-{name}-gpu"
    [container] = definition["containerDefinitions"]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert (container["cpu"], container["memory"]) == (8 * 1024, 28672)  # limits.gpu
    secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    assert secrets["PREFECT_API_URL"] == unit.fargate.prefect_api_url_secret
    assert secrets["PREFECT_API_KEY"] == unit.fargate.prefect_api_key_secret
    assert "pnu_x" not in str(request)
    assert "launchType" not in request
    assert request["capacityProviderStrategy"] == [
        {"capacityProvider": f"sciflow-{name}-gpu", "weight": 1, "base": 0}
    ]
    network = request["networkConfiguration"]["awsvpcConfiguration"]
    assert network["subnets"] == ["subnet-a", "subnet-b"]
    assert "assignPublicIp" not in network  # awsvpc tasks on EC2 get none
    tags = {t["key"]: t["value"] for t in request["tags"]}
    assert (tags["sciflow:unit"], tags["project"]) == (name, "mr")


def test_every_deployments_runs_share_the_classes_task_definition_family():
    """Guards against a task definition family per deployment (prefect-aws's default): runs
    of a class reuse one family's latest revision while it matches."""
    name = fresh_name()
    unit = ComputeUnit.from_terraform_output(full_output(name))
    for size in ("small", "large", "gpu"):
        template = _plan(unit, f"{name}-{size}").template
        first, _ = _bodies(template)
        second, _ = _bodies(template)  # another deployment
        assert first["family"] == second["family"] == f"sciflow-{name}-{size}"
        assert first == second
    _, request = _bodies(_plan(unit, f"{name}-small").template)
    assert request["launchType"] == "FARGATE"
    assert request["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"


def _block_updated(slug: str, name: str):
    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(name=name, block_type_slug=slug)
        return doc.id, doc.data


def test_make_pools_restores_every_units_pools_and_limits_without_saving_blocks(capsys):
    """Guards against `make pools` that leaves a changed limit or a deleted class queue as it
    is, that misses the local pool, or that re-saves the units' blocks."""
    name = fresh_name()
    register_unit(full_output(name), name)
    unit_before = _block_updated("sciflow-compute-unit", name)
    with get_client(sync_client=True) as client:
        client.update_work_pool(f"{name}-small", WorkPoolUpdate(concurrency_limit=99))
        queue = client.read_work_queue_by_name("small", work_pool_name=f"{name}-small")
        client.delete_work_queue_by_id(queue.id)
        client.update_work_queue(
            client.read_work_queue_by_name("gpu", work_pool_name=f"{name}-gpu").id,
            concurrency_limit=50,
        )
    template_before = read_pool(f"{name}-small").base_job_template

    assert pools.main() == 0

    out = capsys.readouterr().out
    assert (
        f"unit {name!r}: {ECS_WORKER_TYPE} pool '{name}-small', at most 16 runs (queues: small 16)"
        in out
    )
    assert read_pool(f"{name}-small").concurrency_limit == 16
    assert queue_limits(f"{name}-small") == {"default": None, "small": 16}
    assert queue_limits(f"{name}-gpu") == {"default": None, "gpu": 2}
    assert read_pool(f"{name}-small").base_job_template == template_before
    assert defaults(read_pool(f"{name}-gpu"))["capacity_provider"] == f"sciflow-{name}-gpu"
    assert _block_updated("sciflow-compute-unit", name) == unit_before

    local = read_pool(LOCAL_WORK_POOL)
    assert local.type == "process"
    total = sum(DEFAULT_LIMITS[size].concurrent_runs for size in SIZE_CLASSES)
    assert local.concurrency_limit == total
    expected = {size: DEFAULT_LIMITS[size].concurrent_runs for size in SIZE_CLASSES}
    assert queue_limits(LOCAL_WORK_POOL) == {"default": None, **expected}

    assert pools.main() == 0  # again: the same pools, nothing new
    assert queue_limits(LOCAL_WORK_POOL) == {"default": None, **expected}
    assert read_pool(f"{name}-small").base_job_template == template_before


def test_make_pools_names_the_unit_whose_pools_are_refused(capsys):
    """Guards against a bad saved unit failing `make pools` without saying which one, and
    against it turning another unit's ECS pool into a process pool."""
    owner, name = fresh_name(), fresh_name()
    register_unit(full_output(owner), owner)
    ComputeUnit(name=name, work_pools={"small": f"{owner}-small"}).save(name)
    try:
        assert pools.main() == 1
    finally:
        unregister_unit(name)

    err = capsys.readouterr().err
    refused = f"work pool '{owner}-small' exists with type {ECS_WORKER_TYPE!r}"
    assert f"compute unit {name!r}: {refused}" in err
    assert read_pool(f"{owner}-small").type == ECS_WORKER_TYPE


def test_make_pools_leaves_the_local_pool_to_the_local_unit_when_an_aws_unit_uses_it(capsys):
    """Guards against an AWS unit that keeps a class on sciflow-local (the default, as a
    unit whose flows run here and send their compute to AWS) failing `make pools`, or
    turning the local process pool into an ECS pool with its own limits."""
    name = fresh_name()
    work_pools = full_output(name)["work_pools"]["value"] | {"small": LOCAL_WORK_POOL}
    register_unit(full_output(name, work_pools=work_pools), name)
    try:
        assert pools.main() == 0
    finally:
        unregister_unit(name)

    out = capsys.readouterr().out
    assert f"unit {name!r}: {ECS_WORKER_TYPE} pool '{name}-large'" in out
    assert f"unit {name!r}: {ECS_WORKER_TYPE} pool '{LOCAL_WORK_POOL}'" not in out
    assert read_pool(LOCAL_WORK_POOL).type == "process"
    expected = {size: DEFAULT_LIMITS[size].concurrent_runs for size in SIZE_CLASSES}
    assert queue_limits(LOCAL_WORK_POOL) == {"default": None, **expected}
