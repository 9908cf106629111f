"""register_unit against the session's real Prefect server (tests/conftest.py's harness)."""

from __future__ import annotations

import json
from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect_aws import AwsCredentials
from prefect_aws.s3 import S3Bucket

from blocks.compute_unit import ComputeUnit
from blocks.registration import (
    BATCH_WORKER_TYPE,
    ECS_WORKER_TYPE,
    credentials_block_name,
    fargate_size,
    register_unit,
    unregister_unit,
)
from tasks.compute import batch_worker, ecs_worker
from tasks.errors import InputError

EXTERNAL_ID = "sciflow-7f3c91-reg"
ACCOUNT = "123456789012"


def full_output(name: str, region: str = "eu-west-1", **overrides: object) -> dict:
    """``terraform output -json`` of a Mode 2 environment, every output of the contract."""
    secrets = f"arn:aws:secretsmanager:{region}:{ACCOUNT}:secret"
    values = {
        "unit_name": name,
        "mode": "user",
        "region": region,
        "storage_root": f"s3://{name}-bucket/runs",
        "work_pools": {
            "small": f"{name}-small",
            "large": f"{name}-large",
            "multinode": f"{name}-batch",
            "gpu": f"{name}-gpu",
        },
        "role_arn": f"arn:aws:iam::{ACCOUNT}:role/sciflow-runner",
        "external_id": EXTERNAL_ID,
        "batch_job_queue": f"arn:aws:batch:{region}:{ACCOUNT}:job-queue/{name}-mnp",
        "batch_job_definitions": {"simulation": f"{name}-sim", "training": f"{name}-train"},
        "efs_file_system_id": "fs-0123abcd",
        "dask_image": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/sciflow-flows:abc123",
        "subnets": ["subnet-a", "subnet-b"],
        "security_groups": ["sg-dask"],
        "public_subnets": False,
        "ecs_cluster_arn": f"arn:aws:ecs:{region}:{ACCOUNT}:cluster/{name}",
        "task_role_arn": f"arn:aws:iam::{ACCOUNT}:role/{name}-task",
        "execution_role_arn": f"arn:aws:iam::{ACCOUNT}:role/{name}-exec",
        "log_group": f"/sciflow/{name}",
        "gpu_capacity_provider": f"sciflow-{name}-gpu",
        "prefect_api_url_secret_arn": f"{secrets}:{name}/prefect-api-url-AbC123",
        "prefect_api_key_secret_arn": f"{secrets}:{name}/prefect-api-key-DeF456",
        "spending_cap_usd": 40.0,
        "budget_usd": 500.0,
        "fsx_file_system_id": "fs-0123456789abcdef0",
        "fsx_mount": "/fsx",
        "cloud_map_namespace": "ns-abc",
        "ecs_events_queue": f"https://sqs.{region}.amazonaws.com/{ACCOUNT}/{name}-ecs-events",
        "ecr_repositories": {
            "flows": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/sciflow-flows",
            "gpu": f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/sciflow-gpu",
        },
        "tags": {"project": "mr"},
    } | overrides
    out = {key: {"value": value, "type": "string"} for key, value in values.items()}
    out["external_id"]["sensitive"] = True
    return out


def fresh_name() -> str:
    return f"reg-{uuid4().hex[:10]}"


def what_exists(name: str) -> list[str]:
    """Every block and pool ``register_unit`` would write for unit ``name``."""
    found = []
    pools = {f"{name}-small", f"{name}-large", f"{name}-batch", f"{name}-gpu"}
    with get_client(sync_client=True) as client:
        for slug, block in [
            ("sciflow-compute-unit", name),
            ("aws-credentials", credentials_block_name(name)),
            ("s3-bucket", credentials_block_name(name)),
        ]:
            try:
                client.read_block_document_by_name(name=block, block_type_slug=slug)
                found.append(f"{slug}/{block}")
            except ObjectNotFound:
                pass
        for pool in sorted(pools):
            try:
                client.read_work_pool(pool)
                found.append(f"pool/{pool}")
            except ObjectNotFound:
                pass
    return found


def read_pool(name: str):
    with get_client(sync_client=True) as client:
        return client.read_work_pool(name)


def queue_limits(pool: str) -> dict[str, int | None]:
    """Each work queue of ``pool`` and its concurrency limit."""
    with get_client(sync_client=True) as client:
        queues = client.read_work_queues(work_pool_name=pool)
    return {queue.name: queue.concurrency_limit for queue in queues}


def defaults(pool) -> dict:
    props = pool.base_job_template["variables"]["properties"]
    return {key: prop.get("default") for key, prop in props.items()}


def test_register_unit_saves_the_unit_its_blocks_and_its_pools(tmp_path):
    """Guards against a unit saved without the credentials, bucket and pools it names, or
    pools whose templates lack the unit's cluster, network, roles and class sizes."""
    name = fresh_name()
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(full_output(name)))

    saved = register_unit(path, name)

    unit = ComputeUnit.load(name)
    assert unit.aws_credentials_block == credentials_block_name(name)
    assert unit.external_id.get_secret_value() == EXTERNAL_ID
    assert unit.budget_usd == 500.0
    assert unit.fsx_mount == "/fsx"
    assert unit.ecr_repositories["gpu"].endswith("/sciflow-gpu")
    assert AwsCredentials.load(credentials_block_name(name)).region_name == "eu-west-1"
    bucket = S3Bucket.load(credentials_block_name(name))
    assert (bucket.bucket_name, bucket.bucket_folder) == (f"{name}-bucket", "runs")
    assert sorted(saved.pools) == sorted(
        [f"{name}-small", f"{name}-large", f"{name}-batch", f"{name}-gpu"]
    )
    secrets = f"arn:aws:secretsmanager:eu-west-1:{ACCOUNT}:secret:{name}"
    assert unit.fargate.prefect_api_url_secret == f"{secrets}/prefect-api-url-AbC123"
    assert unit.fargate.prefect_api_key_secret == f"{secrets}/prefect-api-key-DeF456"

    small, large = read_pool(f"{name}-small"), read_pool(f"{name}-large")
    assert small.type == large.type == ECS_WORKER_TYPE == ecs_worker.WORKER_TYPE
    small_vars = defaults(small)
    assert small_vars["cluster"] == f"arn:aws:ecs:eu-west-1:{ACCOUNT}:cluster/{name}"
    assert small_vars["subnets"] == ["subnet-a", "subnet-b"]
    assert small_vars["security_groups"] == ["sg-dask"]
    assert small_vars["task_role_arn"].endswith(f"role/{name}-task")
    assert small_vars["execution_role_arn"].endswith(f"role/{name}-exec")
    assert small_vars["unit"] == name
    assert (small_vars["cpu"], small_vars["memory"]) == (4096, 16384)  # limits.small
    assert small_vars["launch_type"] == "FARGATE"
    assert small_vars["family"] == f"sciflow-{name}-small"
    assert defaults(large)["family"] == f"sciflow-{name}-large"
    assert small_vars["prefect_api_url_secret_arn"] == unit.fargate.prefect_api_url_secret
    assert small_vars["prefect_api_key_secret_arn"] == unit.fargate.prefect_api_key_secret
    assert small_vars["labels"] == {"project": "mr"}
    assert (defaults(large)["cpu"], defaults(large)["memory"]) == (16384, 122880)
    credentials_id = str(AwsCredentials.load(credentials_block_name(name))._block_document_id)
    assert small_vars["aws_credentials"] == {"$ref": {"block_document_id": credentials_id}}

    batch = read_pool(f"{name}-batch")
    assert batch.type == BATCH_WORKER_TYPE == batch_worker.WORKER_TYPE
    batch_vars = defaults(batch)
    assert batch_vars["job_queue"].endswith(f"job-queue/{name}-mnp")
    assert batch_vars["efs_file_system_id"] == "fs-0123abcd"
    assert batch_vars["unit"] == name
    assert batch_vars["aws_credentials"] == {"$ref": {"block_document_id": credentials_id}}
    assert batch_vars["size_class"] == "multinode"

    gpu = read_pool(f"{name}-gpu")
    assert gpu.type == ECS_WORKER_TYPE
    gpu_vars = defaults(gpu)
    assert gpu_vars["capacity_provider"] == f"sciflow-{name}-gpu"
    assert "launch_type" not in gpu_vars  # never Fargate
    assert (gpu_vars["cpu"], gpu_vars["memory"]) == (8 * 1024, 28672)  # limits.gpu
    assert gpu_vars["family"] == f"sciflow-{name}-gpu"
    assert gpu_vars["prefect_api_url_secret_arn"] == unit.fargate.prefect_api_url_secret
    assert gpu_vars["aws_credentials"] == {"$ref": {"block_document_id": credentials_id}}


def test_each_pool_and_class_queue_is_limited_to_the_units_concurrent_runs():
    """Guards against pools that start any number of runs: SizeLimits.concurrent_runs is the
    limit of each class's queue, and a pool's limit is the sum over the classes it serves."""
    name = fresh_name()
    outputs = full_output(name)
    outputs["work_pools"]["value"]["large"] = f"{name}-small"  # one pool, two classes
    register_unit(outputs, name)

    shared, batch = read_pool(f"{name}-small"), read_pool(f"{name}-batch")
    assert shared.concurrency_limit == 16 + 4  # limits.small + limits.large
    assert batch.concurrency_limit == 2
    assert queue_limits(f"{name}-small") == {"default": None, "small": 16, "large": 4}
    assert queue_limits(f"{name}-gpu") == {"default": None, "gpu": 2}


def test_registering_the_same_outputs_again_gives_the_same_result():
    """Guards against a rerun (a retried create flow) that fails on what the first run
    saved, or that makes new block documents and pools instead of keeping them."""
    name = fresh_name()
    register_unit(full_output(name), name)
    first = what_exists(name)
    first_id = ComputeUnit.load(name)._block_document_id
    first_pool = read_pool(f"{name}-small")

    register_unit(full_output(name), name)  # no overwrite needed: nothing differs

    assert what_exists(name) == first
    assert ComputeUnit.load(name)._block_document_id == first_id
    again = read_pool(f"{name}-small")
    assert (again.id, again.base_job_template) == (first_pool.id, first_pool.base_job_template)


def _drop(outputs: dict, key: str) -> dict:
    del outputs[key]
    return outputs


REFUSALS = {
    "missing key": (lambda n: _drop(full_output(n), "storage_root"), r"lacks \['storage_root'\]"),
    "wrong environment": (
        lambda n: full_output(f"{n}-other"),
        r"unit_name='reg-[0-9a-f]+-other'; expected 'reg-[0-9a-f]+'.*another environment",
    ),
    "region not served": (
        lambda n: full_output(n, ecs_cluster_arn=f"arn:aws:ecs:us-west-2:{ACCOUNT}:cluster/{n}"),
        r"ecs_cluster_arn='arn:aws:ecs:us-west-2:.*' is in region 'us-west-2'.*serves 'eu-west-1'",
    ),
    "image from another region": (
        lambda n: full_output(n, dask_image=f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/x:1"),
        r"dask_image=.* is in region 'us-east-1'",
    ),
    "mode 2 without external id": (
        lambda n: _drop(full_output(n), "external_id"),
        r"external_id is required when mode is 'user'",
    ),
    "value a pool's schema refuses": (
        lambda n: full_output(n, efs_file_system_id="fs-0abc"),
        r"work pool 'reg-[0-9a-f]+-batch' \(aws-batch\) refuses .*efs_file_system_id.*'fs-0abc'",
    ),
    "GPU capacity without its cluster": (
        lambda n: _drop(full_output(n), "ecs_cluster_arn"),
        r"valid ComputeUnit: .*gpu_capacity_provider needs cluster_arn",
    ),
    "ECS pool without its log group": (
        lambda n: _drop(full_output(n), "log_group"),
        r"lacks \['log_group'\]: work_pools.small=",
    ),
    "ECS pool without the Prefect API URL secret": (
        lambda n: _drop(full_output(n), "prefect_api_url_secret_arn"),
        r"lacks \['prefect_api_url_secret_arn'\]: work_pools.small=",
    ),
    "GPU pool without GPU capacity": (
        lambda n: _drop(full_output(n), "gpu_capacity_provider"),
        r"lacks \['gpu_capacity_provider'\]: work_pools.gpu=.* EC2 GPU capacity",
    ),
    "GPU and Fargate classes in one pool": (
        lambda n: full_output(n, work_pools={"small": f"{n}-ecs", "gpu": f"{n}-ecs"}),
        r"maps 'small' and 'gpu' to 'reg-[0-9a-f]+-ecs': small runs on ECS Fargate, gpu on "
        r"ECS on EC2 GPU hosts",
    ),
    "secret from another region": (
        lambda n: full_output(
            n, prefect_api_url_secret_arn=f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:x"
        ),
        r"prefect_api_url_secret_arn=.* is in region 'us-east-1'",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_outputs_are_refused_in_one_line_and_nothing_is_registered(case):
    """Guards against bad outputs half-registering a unit (credentials or pools written
    before a later check fails) and against refusals that do not name the key and value."""
    name = fresh_name()
    make, pattern = REFUSALS[case]
    with pytest.raises(InputError, match=pattern) as caught:
        register_unit(make(name), name)
    assert "\n" not in str(caught.value)
    assert EXTERNAL_ID not in str(caught.value)
    assert what_exists(name) == []


def test_a_changed_external_id_is_refused_even_with_overwrite():
    """Guards against re-registration silently swapping the external id of a saved unit
    (the confused-deputy guard its role trusts) and against a half-written retry."""
    name = fresh_name()
    register_unit(full_output(name), name)
    before = what_exists(name)
    with pytest.raises(InputError, match=r"external_id \(redacted\) differs") as caught:
        register_unit(full_output(name, external_id="another-id-123"), name, overwrite=True)
    assert "another-id-123" not in str(caught.value)
    assert ComputeUnit.load(name).external_id.get_secret_value() == EXTERNAL_ID
    assert what_exists(name) == before


def test_a_taken_name_is_refused_without_overwrite_and_replaced_with_it():
    """Guards against register_unit replacing a saved unit's settings unasked, and against
    a refusal that already rewrote some of its blocks or pools."""
    name = fresh_name()
    register_unit(full_output(name), name)
    pool_before = read_pool(f"{name}-small").base_job_template
    changed = full_output(name, subnets=["subnet-z"], spending_cap_usd=5.0)

    with pytest.raises(InputError, match=rf"unit name '{name}' is taken.*overwrite=True"):
        register_unit(changed, name)
    assert ComputeUnit.load(name).spending_cap_usd == 40.0
    assert read_pool(f"{name}-small").base_job_template == pool_before

    register_unit(changed, name, overwrite=True)
    assert ComputeUnit.load(name).spending_cap_usd == 5.0
    assert defaults(read_pool(f"{name}-small"))["subnets"] == ["subnet-z"]


def test_a_pool_of_another_unit_is_never_taken_over():
    """Guards against a unit's registration rewriting a pool another unit's runs use."""
    first, second = fresh_name(), fresh_name()
    register_unit(full_output(first), first)
    shared = full_output(second)
    shared["work_pools"]["value"]["small"] = f"{first}-small"
    with pytest.raises(InputError, match=rf"work pool '{first}-small' exists .* unit '{first}'"):
        register_unit(shared, second, overwrite=True)
    assert what_exists(second) == []
    assert defaults(read_pool(f"{first}-small"))["unit"] == first


def test_unregister_removes_the_units_blocks_and_pools():
    """Guards against delete leaving pools or credentials behind for a removed unit."""
    name = fresh_name()
    register_unit(full_output(name), name)
    removed = unregister_unit(name)
    assert len(removed) == 7
    assert what_exists(name) == []
    assert unregister_unit(name) == []


def test_fargate_sizes_are_valid_pairs_within_the_limits():
    """Guards against pool CPU/memory defaults Fargate rejects or that exceed the limits."""
    assert fargate_size(4, 16384) == (4096, 16384)
    assert fargate_size(3, 16384) == (2048, 16384)
    assert fargate_size(16, 2048) == (1024, 2048)  # 16 vCPU need 32 GiB on Fargate
    assert fargate_size(96, 393216) == (16384, 122880)
