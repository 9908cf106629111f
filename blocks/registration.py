"""Save a compute unit from ``terraform output -json``: its blocks and its work pools, or none.

``register_unit`` makes the ``ComputeUnit`` block, an ``AwsCredentials`` block and an
``S3Bucket`` block (both named ``sciflow-<unit>``), and the work pools the unit names:
``sciflow-ecs`` pools (prefect-aws's ECS templates) for the ``small`` and ``large`` classes from
``deployments/work-pools/ecs-fargate.json`` and for ``gpu`` from ``ecs-gpu.json`` (EC2 GPU
hosts through the unit's capacity provider: Fargate has no GPUs), filled with the unit's
cluster, subnets, security groups, roles, log group, Prefect API secrets, tags, a fixed task
definition family ``sciflow-<unit>-<class>`` and CPU and memory from the class's limits; an
``aws-batch`` pool for ``multinode``, filled with the unit's queue, EFS and roles.

Each pool's concurrency limit is the sum of ``limits.<class>.concurrent_runs`` of the classes
it serves, and it has a work queue named after each class with that class's limit: a run sent
to a class's queue (``work_queue_name``) waits Scheduled while the class is at its limit.
``apply_pools`` creates or updates a unit's pools without touching its blocks (``make pools``,
``blocks.pools``); a local unit's pools are ``process`` pools.

Every check (outputs, region, unit name, external id, pools of other units or types) runs
before anything is written; registering the same outputs again gives the same blocks and
pools. ``unregister_unit`` removes them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from blocks.compute_unit import LOCAL_WORK_POOL, SIZE_CLASSES, ComputeUnit, SizeClass
from tasks.errors import InputError

if TYPE_CHECKING:
    from prefect.blocks.core import Block

REPO = Path(__file__).resolve().parents[1]
WORK_POOL_DIR = REPO / "deployments" / "work-pools"
ECS_TEMPLATE = WORK_POOL_DIR / "ecs-fargate.json"
ECS_GPU_TEMPLATE = WORK_POOL_DIR / "ecs-gpu.json"
# tasks.compute.ecs_worker.WORKER_TYPE and tasks.compute.batch_worker.WORKER_TYPE; Prefect
# finds those workers by their entry point.
ECS_WORKER_TYPE = "sciflow-ecs"
BATCH_WORKER_TYPE = "aws-batch"
PROCESS_WORKER_TYPE = "process"
# Which worker runs an AWS unit's flow runs of a class, and how: ECS on Fargate, ECS on the
# unit's EC2 GPU hosts, or Batch for multi-node jobs. A pool serves classes of one kind.
POOL_KINDS: dict[SizeClass, tuple[str, str]] = {
    "small": (ECS_WORKER_TYPE, "ECS Fargate"),
    "large": (ECS_WORKER_TYPE, "ECS Fargate"),
    "multinode": (BATCH_WORKER_TYPE, "AWS Batch"),
    "gpu": (ECS_WORKER_TYPE, "ECS on EC2 GPU hosts"),
}
POOL_TYPES: dict[SizeClass, str] = {size: kind[0] for size, kind in POOL_KINDS.items()}
# Fargate's CPU units and, for each, the memory range it allows (MiB).
FARGATE_MEMORY = {
    256: (512, 2048),
    512: (1024, 4096),
    1024: (2048, 8192),
    2048: (4096, 16384),
    4096: (8192, 30720),
    8192: (16384, 61440),
    16384: (32768, 122880),
}


@dataclass
class PoolPlan:
    """A work pool to create: name, worker type, base job template, the classes it serves.

    ``limits`` is each class's ``concurrent_runs``: the limit of the pool's work queue named
    after the class. ``template`` is ``None`` for a ``process`` pool, whose template (the
    worker's default, or what the operator set) is kept.
    """

    name: str
    type: str
    template: dict[str, Any] | None
    classes: list[SizeClass] = field(default_factory=list)
    limits: dict[SizeClass, int] = field(default_factory=dict)
    kind: str = ""

    @property
    def concurrency_limit(self) -> int:
        """The pool's limit: the sum of its classes' limits."""
        return sum(self.limits.values())


@dataclass
class Registration:
    """What ``register_unit`` saved: the unit, its block names and its work pools."""

    unit: ComputeUnit
    credentials_block: str
    bucket_block: str
    pools: list[str]


def credentials_block_name(unit: str) -> str:
    """Name of the ``AwsCredentials`` and ``S3Bucket`` blocks of unit ``unit``."""
    return f"sciflow-{unit}"


def register_unit(
    outputs: str | Path | Mapping[str, Any], name: str | None = None, *, overwrite: bool = False
) -> Registration:
    """Save unit ``name`` from ``terraform output -json`` with its blocks and work pools.

    Args:
        outputs: The file ``terraform output -json`` wrote, or its parsed JSON.
        name: The unit's name; the outputs' ``unit_name`` must be it (it is used if
            ``None``).
        overwrite: Replace a saved unit of that name whose settings differ. The same
            outputs registered again need no ``overwrite``.

    Raises:
        InputError: The outputs are bad (``ComputeUnit.from_terraform_output``); a saved
            unit of that name has another external id; the name, a block or a pool is
            taken (by other settings without ``overwrite``, or by another unit or worker
            type); the ``aws-batch`` worker is not installed. Nothing is written then.
    """
    from prefect_aws import AwsCredentials
    from prefect_aws.s3 import S3Bucket

    unit = ComputeUnit.from_terraform_output(outputs, name)
    name = unit.name
    block_name = credentials_block_name(name)
    unit = unit.model_copy(update={"aws_credentials_block": block_name})
    credentials = AwsCredentials(region_name=unit.region)
    bucket, _, prefix = (unit.storage_root or "").removeprefix("s3://").partition("/")
    storage = S3Bucket(bucket_name=bucket, bucket_folder=prefix, credentials=credentials)
    pools = plan_pools(unit)

    with get_client(sync_client=True) as client:
        _check_external_id(client, unit)
        credentials_id = _differs(client, credentials, block_name, name, overwrite)
        _differs(client, storage, block_name, name, overwrite)
        _differs(client, unit, name, name, overwrite)
        for pool in pools:
            _check_pool(client, pool, unit.name, credentials_id, overwrite)

        # Every check passed: write. The unit last, so a unit that loads has its pools.
        credentials_id = credentials.save(block_name, overwrite=True)
        storage.credentials = AwsCredentials.load(block_name)
        storage.save(block_name, overwrite=True)
        for pool in pools:
            _create_pool(client, pool, credentials_id, name)
        unit.save(name, overwrite=True)
    return Registration(
        unit=unit,
        credentials_block=block_name,
        bucket_block=block_name,
        pools=[pool.name for pool in pools],
    )


def unregister_unit(name: str) -> list[str]:
    """Remove unit ``name``'s work pools and blocks; returns what was removed.

    Pools are removed only if their template names this unit (a pool another unit shares
    stays). Missing pieces are skipped, so a second call removes nothing and succeeds.
    """
    removed: list[str] = []
    with get_client(sync_client=True) as client:
        unit_doc = _read_block(client, "sciflow-compute-unit", name)
        pools = set((unit_doc.data.get("work_pools") or {}).values()) if unit_doc else set()
        for pool_name in sorted(pools):
            try:
                pool = client.read_work_pool(pool_name)
            except ObjectNotFound:
                continue
            if _pool_unit(pool.base_job_template) == name:
                client.delete_work_pool(pool_name)
                removed.append(f"work pool {pool_name}")
        block_name = credentials_block_name(name)
        for slug, doc_name in [
            ("sciflow-compute-unit", name),
            ("s3-bucket", block_name),
            ("aws-credentials", block_name),
        ]:
            if doc := _read_block(client, slug, doc_name):
                client.delete_block_document(doc.id)
                removed.append(f"{slug} block {doc_name}")
    return removed


def plan_pools(unit: ComputeUnit) -> list[PoolPlan]:
    """The work pools ``unit`` names, each with its filled base job template and limits.

    A local unit's pools are ``process`` pools (templates kept as they are). A class an AWS
    unit leaves on ``sciflow-local`` (the default) runs its flow on this machine's process
    worker and sends only its compute to AWS; that pool and its limits are the local unit's, so
    the AWS unit plans no pool for it.

    Raises:
        InputError: One pool name serves classes of different kinds (ECS Fargate, ECS GPU,
            Batch), or an output a pool needs (cluster, network, Prefect API secret and GPU
            capacity for ECS, queue for Batch) is missing.
    """
    by_name: dict[str, PoolPlan] = {}
    for size in SIZE_CLASSES:
        pool_name = unit.work_pools.get(size)
        if pool_name is None or (pool_name == LOCAL_WORK_POOL and not unit.is_local):
            continue
        kind = (PROCESS_WORKER_TYPE, "process") if unit.is_local else POOL_KINDS[size]
        plan = by_name.setdefault(pool_name, PoolPlan(pool_name, kind[0], None, kind=kind[1]))
        if plan.kind != kind[1]:
            raise InputError(
                f"work_pools maps {plan.classes[0]!r} and {size!r} to {pool_name!r}: "
                f"{plan.classes[0]} runs on {plan.kind}, {size} on {kind[1]}; expected a "
                "pool per kind"
            )
        plan.classes.append(size)
        plan.limits[size] = unit.size_limits(size).concurrent_runs
    for plan in by_name.values():
        if plan.type == PROCESS_WORKER_TYPE:
            continue
        if plan.type == ECS_WORKER_TYPE:
            plan.template = _ecs_template(unit, plan.classes[0])
        else:
            plan.template = _batch_template(unit, plan.classes)
        _check_defaults(plan)
    return list(by_name.values())


def apply_pools(unit: ComputeUnit) -> list[PoolPlan]:
    """Create or update ``unit``'s work pools, their limits and class queues; no block is saved.

    Every pool is checked before any is written. An AWS unit's pools get its
    ``AwsCredentials`` block (``aws_credentials_block``) as their credentials.

    Raises:
        InputError: ``plan_pools`` refuses the unit, a pool belongs to another unit or worker
            type, or the unit's credentials block is missing.
    """
    pools = plan_pools(unit)
    with get_client(sync_client=True) as client:
        credentials_id = None
        if not unit.is_local and unit.aws_credentials_block:
            saved = _read_block(client, "aws-credentials", unit.aws_credentials_block)
            if saved is None:
                raise InputError(
                    f"compute unit {unit.name!r} names aws_credentials_block="
                    f"{unit.aws_credentials_block!r}, which is not saved; expected the block "
                    "registration saved (re-run `python -m blocks save-unit`)"
                )
            credentials_id = saved.id
        for pool in pools:
            _check_pool(client, pool, unit.name, credentials_id, overwrite=True)
        for pool in pools:
            _create_pool(client, pool, credentials_id, unit.name)
    return pools


def _check_defaults(plan: PoolPlan) -> None:
    """Refuse defaults the pool's variables schema rejects, as the server would on create."""
    from prefect.utilities.schema_tools import ValidationError, validate

    schema = plan.template["variables"]
    values = {
        key: prop["default"]
        for key, prop in schema["properties"].items()
        if "default" in prop and key != "aws_credentials"  # a block reference, made later
    }
    try:
        validate(
            values,
            schema,
            raise_on_error=True,
            preprocess=True,
            ignore_required=True,
            allow_none_with_default=True,
        )
    except ValidationError as exc:
        raise InputError(
            f"work pool {plan.name!r} ({plan.type}) refuses a value from the terraform "
            f"output: {exc}: nothing was registered"
        ) from None


def fargate_size(vcpus: float, memory_mib: int) -> tuple[int, int]:
    """The largest Fargate CPU and memory pair within ``vcpus`` and ``memory_mib``."""
    fits = [c for c, (low, _) in FARGATE_MEMORY.items() if c <= vcpus * 1024 and low <= memory_mib]
    cpu = max(fits, default=256)
    low, high = FARGATE_MEMORY[cpu]
    return cpu, max(low, min(high, memory_mib))


def task_family(unit: str, size: SizeClass) -> str:
    """The fixed ECS task definition family of unit ``unit``'s class ``size``."""
    return f"sciflow-{unit}-{size}"


def _ecs_template(unit: ComputeUnit, size: SizeClass) -> dict[str, Any]:
    fargate = unit.fargate
    gpu = size == "gpu"
    needed = {
        "dask_image": fargate and fargate.image,
        "ecs_cluster_arn": fargate and fargate.cluster_arn,
        "subnets": fargate and fargate.subnets,
        "security_groups": fargate and fargate.security_groups,
        "execution_role_arn": fargate and fargate.execution_role_arn,
        "task_role_arn": fargate and fargate.task_role_arn,
        "log_group": fargate and fargate.log_group,
        "prefect_api_url_secret_arn": fargate and fargate.prefect_api_url_secret,
    }
    if gpu:
        needed["gpu_capacity_provider"] = fargate and fargate.gpu_capacity_provider
    missing = sorted(key for key, value in needed.items() if not value)
    if fargate is None or missing:
        where = "EC2 GPU capacity" if gpu else "Fargate"
        raise InputError(
            f"terraform output lacks {missing}: work_pools.{size}={unit.work_pool(size)!r} is "
            f"an ECS pool on {where} and needs the unit's image, cluster, network, roles, "
            "logs and Prefect API URL secret" + (" and its GPU capacity provider" if gpu else "")
        )
    limits = unit.size_limits(size)
    values: dict[str, Any] = {
        "unit": unit.name,
        "image": fargate.image,
        "cluster": fargate.cluster_arn,
        "subnets": fargate.subnets,
        "security_groups": fargate.security_groups,
        "execution_role_arn": fargate.execution_role_arn,
        "task_role_arn": fargate.task_role_arn,
        "log_group": fargate.log_group,
        "family": task_family(unit.name, size),
        "prefect_api_url_secret_arn": fargate.prefect_api_url_secret,
    }
    if fargate.prefect_api_key_secret:
        values["prefect_api_key_secret_arn"] = fargate.prefect_api_key_secret
    if unit.tags:
        values["labels"] = unit.tags
    if gpu:
        template = json.loads(ECS_GPU_TEMPLATE.read_text())
        values |= {
            "capacity_provider": fargate.gpu_capacity_provider,
            "cpu": int(limits.vcpus * 1024),
            "memory": limits.memory_mib,
        }
    else:
        template = json.loads(ECS_TEMPLATE.read_text())
        values["cpu"], values["memory"] = fargate_size(limits.vcpus, limits.memory_mib)
    _defaults(template, **values)
    return template


def _batch_template(unit: ComputeUnit, classes: list[SizeClass]) -> dict[str, Any]:
    from prefect.workers.base import BaseWorker

    if not unit.batch_job_queue:
        raise InputError(
            f"terraform output lacks ['batch_job_queue']: work_pools.{classes[0]}="
            f"{unit.work_pool(classes[0])!r} is an AWS Batch pool and needs the unit's queue"
        )
    worker = BaseWorker.get_worker_class_from_type(BATCH_WORKER_TYPE)
    if worker is None:
        raise InputError(
            f"worker type {BATCH_WORKER_TYPE!r} is not installed; expected sciflow installed "
            "with its prefect.collections entry point (`make install`)"
        )
    template = copy.deepcopy(worker.get_default_base_job_template())
    fargate = unit.fargate
    defaults: dict[str, Any] = {
        "unit": unit.name,
        "job_queue": unit.batch_job_queue,
        "image": fargate.image if fargate else None,
        "efs_file_system_id": unit.efs_file_system_id,
        "job_role_arn": fargate.task_role_arn if fargate else None,
        "execution_role_arn": fargate.execution_role_arn if fargate else None,
        "tags": unit.tags or None,
    }
    if len(classes) == 1:
        defaults["size_class"] = classes[0]
    if fargate and fargate.log_group:
        defaults["log_group"] = fargate.log_group
    _defaults(template, **{key: value for key, value in defaults.items() if value is not None})
    return template


def _defaults(template: dict[str, Any], **values: Any) -> None:
    """Set the default of each named job variable of ``template``."""
    properties = template["variables"]["properties"]
    for key, value in values.items():
        if key not in properties:
            raise KeyError(f"base job template has no variable {key!r}")  # a template bug
        properties[key]["default"] = value


def _pool_unit(template: Mapping[str, Any]) -> str | None:
    """The unit a pool's template names (its ``unit`` variable's default), if any."""
    unit = template.get("variables", {}).get("properties", {}).get("unit", {})
    return unit.get("default") if isinstance(unit, Mapping) else None


def _with_credentials(template: dict[str, Any], credentials_id: UUID | None) -> dict[str, Any]:
    """``template`` whose ``aws_credentials`` variable defaults to the unit's block."""
    filled = copy.deepcopy(template)
    if credentials_id is not None:
        prop = filled["variables"]["properties"]["aws_credentials"]
        prop["default"] = {"$ref": {"block_document_id": str(credentials_id)}}
    return filled


def _read_block(client: Any, slug: str, name: str) -> Any:
    try:
        return client.read_block_document_by_name(name=name, block_type_slug=slug)
    except ObjectNotFound:
        return None


def _check_external_id(client: Any, unit: ComputeUnit) -> None:
    """Refuse a unit whose external id differs from the saved unit of that name's."""
    saved = _read_block(client, "sciflow-compute-unit", unit.name)
    if saved is None:
        return
    before = saved.data.get("external_id")
    after = unit.external_id.get_secret_value() if unit.external_id else None
    if before != after:
        raise InputError(
            f"terraform output external_id (redacted) differs from the saved unit "
            f"{unit.name!r}'s: the role's trust policy names one of them; expected the same "
            "external_id (or remove the unit first to change it): nothing was registered"
        )


def _differs(client: Any, block: Block, name: str, unit: str, overwrite: bool) -> UUID | None:
    """Refuse (unless ``overwrite``) a saved block ``name`` of that type with other settings.

    Returns:
        The saved block's id, if one exists.
    """
    slug = block.get_block_type_slug()
    saved = _read_block(client, slug, name)
    if saved is None:
        return None
    try:
        current: Any = type(block).load(name)
        same = _comparable(current) == _comparable(block)
    except ValueError:  # no longer valid for this block type
        same = False
    if not same and not overwrite:
        raise InputError(
            f"unit name {unit!r} is taken: a {slug} block {name!r} exists with other "
            "settings; pass overwrite=True (--overwrite) to replace it: nothing was registered"
        )
    block_id: UUID = saved.id
    return block_id


def _comparable(block: Block) -> Any:
    """A block's settings as plain data, secrets revealed, nested blocks inline."""
    data = json.loads(json.dumps(block.model_dump(mode="python"), default=_reveal))
    return _public(data)


def _public(data: Any) -> Any:
    """``data`` without Prefect's private keys (``_block_document_id`` ...), at every level."""
    if isinstance(data, dict):
        return {k: _public(v) for k, v in data.items() if not k.startswith("_")}
    if isinstance(data, list):
        return [_public(v) for v in data]
    return data


def _reveal(value: Any) -> Any:
    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def _check_pool(
    client: Any, pool: PoolPlan, unit: str, credentials_id: UUID | None, overwrite: bool
) -> None:
    """Refuse a pool ``pool.name`` of another unit or type, or with another template.

    Another template is refused only without ``overwrite``. A ``process`` pool names no unit
    (local units share ``sciflow-local``): only its type is checked.
    """
    try:
        saved = client.read_work_pool(pool.name)
    except ObjectNotFound:
        return
    if pool.template is None:
        if saved.type != pool.type:
            raise InputError(
                f"work pool {pool.name!r} exists with type {saved.type!r}; unit {unit!r} "
                f"needs a {pool.type!r} pool there: rename it in work_pools or remove that "
                "pool: nothing was changed"
            )
        return
    owner = _pool_unit(saved.base_job_template)
    if saved.type != pool.type or owner != unit:
        raise InputError(
            f"work pool {pool.name!r} exists with type {saved.type!r} for unit {owner!r}; "
            f"unit {unit!r} needs a {pool.type!r} pool of its own: rename it in work_pools or "
            "remove that pool: nothing was registered"
        )
    same = saved.base_job_template == _with_credentials(pool.template, credentials_id)
    if not same and not overwrite:
        raise InputError(
            f"unit name {unit!r} is taken: work pool {pool.name!r} exists with another "
            "template; pass overwrite=True (--overwrite) to replace it: nothing was registered"
        )


def _create_pool(client: Any, pool: PoolPlan, credentials_id: UUID | None, unit: str) -> None:
    """Create or update pool ``pool.name``, its concurrency limit and its class queues."""
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    description = f"sciflow unit {unit}: flow runs of size classes {', '.join(pool.classes)}"
    if pool.template is None:  # a process pool: keep the template it has
        try:
            client.read_work_pool(pool.name)
            client.update_work_pool(
                pool.name, WorkPoolUpdate(concurrency_limit=pool.concurrency_limit)
            )
        except ObjectNotFound:
            from prefect.workers.process import ProcessWorker

            client.create_work_pool(
                WorkPoolCreate(
                    name=pool.name,
                    type=pool.type,
                    description=description,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    concurrency_limit=pool.concurrency_limit,
                )
            )
    else:
        client.create_work_pool(
            WorkPoolCreate(
                name=pool.name,
                type=pool.type,
                description=description,
                base_job_template=_with_credentials(pool.template, credentials_id),
                concurrency_limit=pool.concurrency_limit,
            ),
            overwrite=True,
        )
    for size, limit in pool.limits.items():
        _apply_queue(client, pool.name, size, limit)


def _apply_queue(client: Any, pool: str, size: SizeClass, limit: int) -> None:
    """Make pool ``pool``'s work queue ``size`` with concurrency limit ``limit``."""
    try:
        queue = client.read_work_queue_by_name(size, work_pool_name=pool)
    except ObjectNotFound:
        client.create_work_queue(
            name=size,
            work_pool_name=pool,
            concurrency_limit=limit,
            description=f"flow runs of size class {size}: at most {limit} at once",
        )
        return
    if queue.concurrency_limit != limit:
        client.update_work_queue(queue.id, concurrency_limit=limit)
