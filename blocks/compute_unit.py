"""The ComputeUnit block: where a job may run, on this machine or in an AWS account."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from tasks.aws.clients import AwsAccount
from tasks.errors import InputError, describe_validation
from tasks.settings import get_settings
from tasks.storage.access import Access, check_prefix
from tasks.storage.fsx import FsxLink
from tasks.storage.objects import ObjectStore, join_uri
from tasks.storage.registry import REGISTRY_DIR, Registry

SizeClass = Literal["small", "large", "multinode", "gpu"]
SIZE_CLASSES: tuple[SizeClass, ...] = ("small", "large", "multinode", "gpu")
LOCAL_UNIT = "local"
LOCAL_WORK_POOL = "sciflow-local"
UNIT_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
# The storage root's folder for cleanup records (beside the units' folders).
AUDIT_DIR = "audit"


class DaskWorkers(BaseModel):
    """Dask workers for one size class."""

    model_config = ConfigDict(extra="forbid")

    n_workers: int = Field(2, ge=1, le=1000, description="Number of Dask workers.")
    threads_per_worker: int = Field(1, ge=1, le=64, description="Threads in each worker.")
    worker_cpu: int = Field(
        1024, ge=256, le=16384, description="Fargate CPU units per worker (1024 = 1 vCPU)."
    )
    worker_mem: int = Field(4096, ge=512, le=122880, description="Memory per worker in MiB.")
    worker_gpu: int = Field(0, ge=0, le=8, description="GPUs per worker (EC2-backed ECS only).")


# Bounds of a size class's limits. AWS Batch takes no attempt timeout under 60 s; a week is
# longer than any sciflow job should run unattended. The largest EC2 instances have 192 vCPUs
# and 2 TiB of memory.
MIN_WALL_TIME_S = 60
MAX_WALL_TIME_S = 7 * 24 * 3600
MAX_VCPUS = 192
MAX_MEMORY_MIB = 2 * 1024 * 1024


class SizeLimits(BaseModel):
    """The most one job of a size class may take: per container, in time and in parallel."""

    model_config = ConfigDict(extra="forbid")

    vcpus: float = Field(
        ge=0.25,
        le=MAX_VCPUS,
        description=(
            f"Most vCPUs of one container (Batch node, ECS task, Dask worker), 0.25 to {MAX_VCPUS}."
        ),
    )
    memory_mib: int = Field(
        ge=512,
        le=MAX_MEMORY_MIB,
        description=f"Most memory of one container in MiB, 512 to {MAX_MEMORY_MIB}.",
    )
    wall_time_s: int = Field(
        ge=MIN_WALL_TIME_S,
        le=MAX_WALL_TIME_S,
        description=(
            "Most seconds a job runs before it is stopped (Batch attempt timeout, parameter "
            f"server wall clock, Dask worker lifetime), {MIN_WALL_TIME_S} to {MAX_WALL_TIME_S}."
        ),
    )
    concurrent_runs: int = Field(
        ge=1,
        le=1000,
        description=(
            "Most runs of this size class at once, 1 to 1000: the concurrency limit of the "
            "class's work queue (named after the class) in its work pool; a run over it waits "
            "Scheduled until a slot frees (blocks/registration.py, `make pools`)."
        ),
    )
    price_usd_per_hour: float | None = Field(
        None,
        ge=0,
        description=(
            "Estimated US dollars one container (one node of a multi-node job) of this class "
            "costs per hour; the class's default in DEFAULT_PRICE_USD_PER_HOUR if unset. An "
            "estimate for the spending cap, not a bill."
        ),
    )


# Sized to hold what the flows start today: Batch's default node (1 vCPU, 2 GiB), the
# parameter server's Fargate tasks (1 vCPU, 4 GiB) and every default Dask worker. An ECS GPU
# run's task reserves exactly limits.gpu, so it fits what Terraform's default GPU host
# (g5.2xlarge: 8 vCPU, 32 GiB, 1 GPU) registers with ECS, below its physical memory.
DEFAULT_LIMITS: dict[SizeClass, SizeLimits] = {
    "small": SizeLimits(vcpus=4, memory_mib=16384, wall_time_s=3600, concurrent_runs=16),
    "large": SizeLimits(vcpus=16, memory_mib=122880, wall_time_s=6 * 3600, concurrent_runs=4),
    "multinode": SizeLimits(vcpus=96, memory_mib=393216, wall_time_s=12 * 3600, concurrent_runs=2),
    "gpu": SizeLimits(vcpus=8, memory_mib=28672, wall_time_s=12 * 3600, concurrent_runs=2),
}


# Estimated on-demand prices (us-east-1, 2026) of a container at each class's default limits:
# Fargate at $0.04048 per vCPU-hour and $0.004445 per GB-hour for small (4 vCPU, 16 GiB)
# and large (16 vCPU, 120 GiB); per node for multinode (an m5.24xlarge, 96 vCPU, 384 GiB) and
# gpu (a g5.2xlarge, 8 vCPU, 32 GiB, 1 GPU). Other regions and Spot differ: a unit whose
# prices differ sets limits.<class>.price_usd_per_hour.
DEFAULT_PRICE_USD_PER_HOUR: dict[SizeClass, float] = {
    "small": 0.25,
    "large": 1.20,
    "multinode": 4.61,
    "gpu": 1.212,
}


class UnitLimits(BaseModel):
    """Limits of each size class; a class left out keeps its default."""

    model_config = ConfigDict(extra="forbid")

    small: SizeLimits = Field(
        default_factory=lambda: DEFAULT_LIMITS["small"].model_copy(),
        description="Limits of small jobs (default 4 vCPU, 16 GiB, 1 h, 16 at once).",
    )
    large: SizeLimits = Field(
        default_factory=lambda: DEFAULT_LIMITS["large"].model_copy(),
        description="Limits of large jobs (default 16 vCPU, 120 GiB, 6 h, 4 at once).",
    )
    multinode: SizeLimits = Field(
        default_factory=lambda: DEFAULT_LIMITS["multinode"].model_copy(),
        description="Limits per node of multi-node jobs (default 96 vCPU, 384 GiB, 12 h, 2).",
    )
    gpu: SizeLimits = Field(
        default_factory=lambda: DEFAULT_LIMITS["gpu"].model_copy(),
        description="Limits of GPU jobs (default 8 vCPU, 28 GiB, 12 h, 2 at once).",
    )

    def of(self, size: SizeClass) -> SizeLimits:
        """The limits of size class ``size``."""
        if size not in SIZE_CLASSES:
            raise InputError(f"size class {size!r}; expected one of {list(SIZE_CLASSES)}")
        limits: SizeLimits = getattr(self, size)
        return limits

    def price_usd_per_hour(self, size: SizeClass) -> float:
        """Estimated dollars per hour of one container of ``size``: its price, else the default."""
        price = self.of(size).price_usd_per_hour
        return DEFAULT_PRICE_USD_PER_HOUR[size] if price is None else price


# The small class's routing thresholds: MR Optimum's Lambda path, as tasks/mr/estimate.py's
# SMALL_MEMORY_BYTES and SMALL_SECONDS (3 GiB under its 4096 MB Lambda, its 900 s timeout).
# 2**30 spin-samples: 64 times a 64x64 phantom (one spin per voxel) through 64x64 samples.
ROUTE_SMALL_MEMORY_MIB = 3072
ROUTE_SMALL_SECONDS = 900.0
ROUTE_SMALL_SPIN_SAMPLES = 2**30


class ClassRule(BaseModel):
    """Most a job may need for the router to send it to one size class.

    A threshold left unset is bound by the class's limits only; a threshold above its class's
    limits counts as those limits.
    """

    model_config = ConfigDict(extra="forbid")

    max_memory_mib: int | None = Field(
        None,
        ge=1,
        description="Most estimated peak memory in MiB; limits.<class>.memory_mib if unset.",
    )
    max_seconds: float | None = Field(
        None, gt=0, description="Most estimated seconds; limits.<class>.wall_time_s if unset."
    )
    max_spin_samples: int | None = Field(
        None,
        ge=1,
        description="Most spins x ADC samples of a simulation; no bound if unset.",
    )


def _default_routing() -> dict[SizeClass, ClassRule]:
    return {
        "small": ClassRule(
            max_memory_mib=ROUTE_SMALL_MEMORY_MIB,
            max_seconds=ROUTE_SMALL_SECONDS,
            max_spin_samples=ROUTE_SMALL_SPIN_SAMPLES,
        )
    }


def _default_dask_workers() -> dict[SizeClass, DaskWorkers]:
    return {
        "small": DaskWorkers(n_workers=2, worker_cpu=1024, worker_mem=4096),
        "large": DaskWorkers(n_workers=4, worker_cpu=4096, worker_mem=16384),
        "multinode": DaskWorkers(n_workers=8, worker_cpu=4096, worker_mem=16384),
        "gpu": DaskWorkers(n_workers=1, worker_cpu=4096, worker_mem=16384, worker_gpu=1),
    }


class FargateDask(BaseModel):
    """Dask on ECS Fargate: the networking and images a unit's clusters use."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="Container image for scheduler and workers.")
    subnets: list[str] = Field(min_length=1, description="Subnet ids the tasks run in.")
    security_groups: list[str] = Field(
        min_length=1, description="Security group ids that let scheduler and workers talk."
    )
    public_subnets: bool = Field(
        False,
        description=(
            "Whether the subnets route to an internet gateway; if not, the client reaches "
            "the scheduler by its private IP."
        ),
    )
    vpc: str | None = Field(None, description="VPC id; taken from the subnets if omitted.")
    cluster_arn: str | None = Field(None, description="ECS cluster; a new one if omitted.")
    task_role_arn: str | None = Field(None, description="IAM role the Dask tasks assume.")
    execution_role_arn: str | None = Field(
        None, description="IAM role ECS uses to pull the image and write logs."
    )
    log_group: str | None = Field(None, description="CloudWatch log group for the tasks.")
    scheduler_cpu: int = Field(1024, ge=256, description="Scheduler CPU units (1024 = 1 vCPU).")
    scheduler_mem: int = Field(4096, ge=512, description="Scheduler memory in MiB.")
    scheduler_timeout: str = Field(
        "15 minutes", description="Idle time after which the scheduler shuts itself down."
    )
    fargate_spot: bool = Field(False, description="Run workers on Fargate Spot.")
    gpu_capacity_provider: str | None = Field(
        None,
        description=(
            "ECS capacity provider of EC2 GPU instances in `cluster_arn`; Dask workers that "
            "ask for GPUs run there (Fargate has none), the scheduler stays on Fargate."
        ),
        examples=["sciflow-gpu"],
    )
    prefect_api_url_secret: str | None = Field(
        None,
        description=(
            "ARN of the Secrets Manager secret (or SSM parameter) holding the Prefect API URL; "
            "ECS puts it in the tasks' PREFECT_API_URL, so task runs on the workers report."
        ),
    )
    prefect_api_key_secret: str | None = Field(
        None,
        description="ARN of the secret (or SSM parameter) holding PREFECT_API_KEY, if any.",
    )

    @model_validator(mode="after")
    def _check_gpu_capacity(self) -> Self:
        if self.gpu_capacity_provider and not self.cluster_arn:
            raise ValueError(
                "gpu_capacity_provider needs cluster_arn: the ECS cluster the capacity "
                "provider belongs to"
            )
        return self

    def prefect_api_secrets(self) -> list[dict[str, str]]:
        """ECS ``secrets`` entries for the Prefect API URL and key this unit names."""
        named = {"PREFECT_API_URL": self.prefect_api_url_secret}
        named["PREFECT_API_KEY"] = self.prefect_api_key_secret
        return [{"name": k, "valueFrom": v} for k, v in named.items() if v]


class ComputeUnit(Block):
    """Where a job may run: this machine, or an AWS account (Mode 1 managed, Mode 2 user).

    A unit names the work pool for each size class, the storage root runs write under,
    AWS Batch queue and job definitions, Dask-on-Fargate settings, limits per size class
    (vCPUs, memory, wall time, runs at once, price), a spending cap per run and a budget.
    AWS units are made from ``terraform output -json`` with ``from_terraform_output``.
    The unit ``local`` is built in and needs no registration.

    Example:
        ```python
        from blocks.compute_unit import ComputeUnit

        unit = ComputeUnit.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "sciflow Compute Unit"
    _block_type_slug = "sciflow-compute-unit"

    name: str = Field(
        description="Unit name, used in storage paths and resource tags.",
        pattern=UNIT_NAME_PATTERN,
        examples=["local", "lab-aws"],
    )
    platform: Literal["local", "aws"] = Field(
        "local", description="Where jobs run: this machine, or AWS."
    )
    mode: Literal["managed", "user"] = Field(
        "managed",
        description=(
            "Who owns the AWS account: `managed` (Mode 1, the service's) or `user` "
            "(Mode 2, the user's, reached by assuming `role_arn`)."
        ),
    )
    region: str | None = Field(None, description="AWS region.", examples=["us-east-1"])
    role_arn: str | None = Field(
        None,
        description="IAM role to assume in the user's account (Mode 2).",
        examples=["arn:aws:iam::123456789012:role/sciflow-runner"],
    )
    external_id: SecretStr | None = Field(
        None,
        description=(
            "ExternalId sent on every AssumeRole of `role_arn`; required in Mode 2, where the "
            "user's role trusts sciflow only with it (the confused-deputy guard)."
        ),
    )
    aws_credentials_block: str | None = Field(
        None,
        description="Name of an AwsCredentials block; the ambient AWS credentials if unset.",
    )
    storage_root: str | None = Field(
        None,
        description=(
            "Where runs write: a local path or s3://bucket/prefix; SCIFLOW_STORAGE_ROOT if unset."
        ),
        examples=["s3://lab-sciflow/runs"],
    )
    readable_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "Local paths or s3:// URIs a confined unit's runs may read besides its storage root "
            "and writable_prefixes."
        ),
        examples=[["s3://lab-raw/scans"]],
    )
    writable_prefixes: list[str] = Field(
        default_factory=list,
        description=(
            "Local paths or s3:// URIs a confined unit's runs may write (and read) besides its "
            "storage root."
        ),
        examples=[["s3://lab-results/shared"]],
    )
    confined: bool = Field(
        False,
        description=(
            "Whether runs may read and write only the storage root and the declared prefixes; "
            "AWS units always are, a local unit when this is set."
        ),
    )
    work_pools: dict[SizeClass, str] = Field(
        default_factory=lambda: dict.fromkeys(SIZE_CLASSES, LOCAL_WORK_POOL),
        description="Work pool for each size class (small, large, multinode, gpu).",
    )
    batch_job_queue: str | None = Field(None, description="AWS Batch job queue.")
    batch_job_definitions: dict[str, str] = Field(
        default_factory=dict,
        description="AWS Batch job definition for each runtime image, by runtime name.",
    )
    efs_file_system_id: str | None = Field(
        None, description="EFS file system shared by the nodes of multi-node jobs."
    )
    fsx_file_system_id: str | None = Field(
        None,
        description=(
            "FSx for Lustre file system with a data repository association over the storage "
            "root's registry/ prefix; published model versions are imported into it."
        ),
        examples=["fs-0123456789abcdef0"],
    )
    fsx_mount: str | None = Field(
        None,
        description="Where the FSx file system is mounted on the nodes that load models.",
        examples=["/fsx"],
    )
    dask_workers: dict[SizeClass, DaskWorkers] = Field(
        default_factory=_default_dask_workers,
        description="Dask worker count and size for each size class.",
    )
    fargate: FargateDask | None = Field(
        None, description="Dask-on-Fargate settings; required for Dask on an AWS unit."
    )
    spending_cap_usd: float | None = Field(
        None,
        ge=0,
        description=(
            "Most a single run may spend, in US dollars: a run whose estimate (its size "
            "class's price_usd_per_hour times its time limit and nodes) exceeds it is refused "
            "at its start."
        ),
    )
    budget_usd: float | None = Field(
        None,
        ge=0,
        description=(
            "Monthly US dollars the whole unit may spend: the limit of the AWS Budget "
            "`sciflow-<unit>` (Terraform's monitoring module); flows refuse new work once its "
            "actual spend reaches its limit."
        ),
    )
    cloud_map_namespace: str | None = Field(
        None, description="Cloud Map namespace (id or ARN) made by the unit's Terraform."
    )
    ecs_events_queue: str | None = Field(
        None,
        description=(
            "SQS queue the EventBridge rule sends ECS task-state changes to (prefect-aws's "
            "ECS observer reads it)."
        ),
    )
    ecr_repositories: dict[str, str] = Field(
        default_factory=dict, description="ECR repository URL for each runtime image, by name."
    )
    limits: UnitLimits = Field(
        default_factory=UnitLimits,
        description=(
            "Per size class: most vCPUs and memory of one container, wall time, runs at once."
        ),
    )
    routing: dict[SizeClass, ClassRule] = Field(
        default_factory=_default_routing,
        description=(
            "The router's thresholds per size class (route-job sends a job to the smallest class "
            f"it fits); default small: {ROUTE_SMALL_MEMORY_MIB} MiB, {ROUTE_SMALL_SECONDS:g} s, "
            f"{ROUTE_SMALL_SPIN_SAMPLES} spin-samples, other classes their limits."
        ),
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Extra tags on every resource the unit's runs create."
    )

    @model_validator(mode="after")
    def _check_platform(self) -> Self:
        if self.name in (AUDIT_DIR, REGISTRY_DIR):
            raise ValueError(
                f"name {self.name!r} is taken: cleanup records and the model registry live "
                f"under {AUDIT_DIR!r} and {REGISTRY_DIR!r}"
            )
        if self.platform == "aws":
            if not self.region:
                raise ValueError("region is required when platform is 'aws'")
            if not (self.storage_root or "").startswith("s3://"):
                raise ValueError(
                    f"storage_root={self.storage_root!r}: an AWS unit needs s3://bucket/prefix, "
                    "since its jobs run on machines that cannot see this one's disk"
                )
        for prefix in [*self.readable_prefixes, *self.writable_prefixes]:
            check_prefix(prefix)
        if self.mode == "user" and not self.role_arn:
            raise ValueError("role_arn is required when mode is 'user' (Mode 2)")
        if self.mode == "user" and not (self.external_id and self.external_id.get_secret_value()):
            raise ValueError(
                f"external_id is required when mode is 'user' (Mode 2): role_arn="
                f"{self.role_arn!r} is assumed only with the ExternalId its trust policy's "
                "sts:ExternalId condition names; set external_id to that value"
            )
        if missing := set(SIZE_CLASSES) - self.dask_workers.keys():
            raise ValueError(f"dask_workers lacks size classes {sorted(missing)}")
        for size, workers in self.dask_workers.items():
            limit = self.limits.of(size)
            if workers.worker_cpu / 1024 > limit.vcpus or workers.worker_mem > limit.memory_mib:
                raise ValueError(
                    f"dask_workers[{size!r}] asks {workers.worker_cpu / 1024:g} vCPU and "
                    f"{workers.worker_mem} MiB per worker; limits.{size} allows "
                    f"{limit.vcpus:g} vCPU and {limit.memory_mib} MiB"
                )
        return self

    @property
    def is_local(self) -> bool:
        """Whether jobs run on this machine."""
        return self.platform == "local"

    def work_pool(self, size: SizeClass) -> str:
        """The work pool for a size class."""
        try:
            return self.work_pools[size]
        except KeyError:
            raise InputError(
                f"compute unit {self.name!r} has no work pool for size {size!r}; "
                f"it has {sorted(self.work_pools)}"
            ) from None

    def size_limits(self, size: SizeClass) -> SizeLimits:
        """The limits of size class ``size`` (``limits``, defaults where unset)."""
        return self.limits.of(size)

    def access(self) -> Access:
        """What this unit's runs may read and write (``tasks.storage.access``)."""
        root = self.storage_root or get_settings().storage_root
        return Access(
            unit=self.name,
            confined=self.confined or not self.is_local,
            readable=(root, *self.writable_prefixes, *self.readable_prefixes),
            writable=(root, *self.writable_prefixes),
        )

    def largest_size(self, sizes: tuple[SizeClass, ...] = SIZE_CLASSES) -> SizeClass:
        """The class of ``sizes`` whose containers have the most memory (first on a tie)."""
        return max(sizes, key=lambda size: self.size_limits(size).memory_mib)

    def check_fits(
        self, estimate_bytes: int, what: str, sizes: tuple[SizeClass, ...] = SIZE_CLASSES
    ) -> None:
        """Refuse a job whose memory estimate exceeds the largest of ``sizes``.

        Field bounds are fixed when the code loads; the unit is known only at run time, so a
        flow calls this at its start, before it stages, writes or starts anything.

        Args:
            estimate_bytes: The job's peak memory in one container, bytes.
            what: What was estimated, naming its parameters (``"matrix=(64, 64), ..."``).
            sizes: The classes the job may run in.

        Raises:
            InputError: One line: what, the estimate, the largest class and its memory.
        """
        size = self.largest_size(sizes)
        memory_mib = self.size_limits(size).memory_mib
        if estimate_bytes > memory_mib * 2**20:
            raise InputError(
                f"{what}: estimated {estimate_bytes / 2**30:.2f} GiB "
                f"({estimate_bytes} bytes); expected at most the {memory_mib} MiB of unit "
                f"{self.name!r}'s largest size class {size!r} (limits.{size}.memory_mib)"
            )

    @property
    def budget_name(self) -> str:
        """Name of the unit's AWS Budget (``sciflow-<unit>``)."""
        return f"sciflow-{self.name}"

    def estimated_cost_usd(self, size: SizeClass, seconds: float, nodes: int = 1) -> float:
        """Estimated dollars of ``nodes`` containers of ``size`` running ``seconds``."""
        return self.limits.price_usd_per_hour(size) * nodes * seconds / 3600

    def aws_account(self) -> AwsAccount:
        """The unit's AWS account as plain data: region, role, credentials block, session name."""
        return AwsAccount(
            region=self.region,
            role_arn=self.role_arn,
            credentials_block=self.aws_credentials_block,
            session_name=f"sciflow-{self.name}",
            external_id=self.external_id.get_secret_value() if self.external_id else None,
        )

    def run_dir(self, run_id: str) -> str:
        """URI of the directory flow run ``run_id`` writes under: ``<root>/<unit>/<run id>``."""
        return join_uri(self.storage_root or get_settings().storage_root, self.name, run_id)

    def audit_uri(self, run_id: str) -> str:
        """URI of run ``run_id``'s cleanup record: ``<root>/audit/<unit>/<run id>/...json``.

        Outside the unit's run directories, so a run role's grant on those (on S3 a bucket
        policy denies it delete here) does not reach the record.
        """
        root = self.storage_root or get_settings().storage_root
        return join_uri(root, AUDIT_DIR, self.name, run_id, "cleanup_validation.json")

    def object_store(self) -> ObjectStore:
        """Storage through this unit's credentials, sized by the process settings."""
        settings = get_settings()
        account = None if self.is_local else self.aws_account()
        return ObjectStore(account, settings.part_size_mib, settings.transfer_concurrency)

    def registry(self) -> Registry:
        """The model registry under this unit's storage root, with its FSx file system if any."""
        root = join_uri(self.storage_root or get_settings().storage_root, REGISTRY_DIR)
        fsx = None
        if self.fsx_file_system_id:
            mount = Path(self.fsx_mount) if self.fsx_mount else None
            account = None if self.is_local else self.aws_account()
            fsx = FsxLink(self.fsx_file_system_id, mount, account)
        return Registry(self.object_store(), root, fsx=fsx)

    @classmethod
    def from_terraform_output(
        cls, path_or_json: str | Path | Mapping[str, Any], name: str | None = None
    ) -> Self:
        """A unit from ``terraform output -json`` of an environment; nothing is saved.

        ``blocks.registration.register_unit`` saves it with its blocks and work pools.

        Args:
            path_or_json: A file written by ``terraform output -json``, or its parsed JSON:
                each output is ``{"value": ..., "type": ...}``. Required: ``unit_name``,
                ``mode``, ``region``, ``storage_root``, ``work_pools``, and ``role_arn`` and
                ``external_id`` in Mode 2 (``mode = "user"``). The others are read when
                present (``TERRAFORM_OUTPUTS``; infrastructure/README.md says what each is).
            name: The unit the caller means; an output whose ``unit_name`` differs is from
                another environment and is refused.

        Raises:
            InputError: The file cannot be read, a required output is missing, the output
                names another unit, an ARN or URL is in a region the unit does not serve,
                or a value is invalid.
        """
        value = _terraform_values(path_or_json)
        if name is not None and value["unit_name"] != name:
            raise InputError(
                f"terraform output unit_name={value['unit_name']!r}; expected {name!r}: the "
                f"output is from another environment (run `terraform output -json` in the "
                f"environment of unit {name!r})"
            )
        _check_regions(value)
        try:
            fargate = None
            if value.get("dask_image"):
                fargate = FargateDask(
                    image=value["dask_image"],
                    subnets=value.get("subnets") or [],
                    security_groups=value.get("security_groups") or [],
                    public_subnets=bool(value.get("public_subnets", False)),
                    cluster_arn=value.get("ecs_cluster_arn"),
                    task_role_arn=value.get("task_role_arn"),
                    execution_role_arn=value.get("execution_role_arn"),
                    log_group=value.get("log_group"),
                    gpu_capacity_provider=value.get("gpu_capacity_provider"),
                    prefect_api_url_secret=value.get("prefect_api_url_secret_arn"),
                    prefect_api_key_secret=value.get("prefect_api_key_secret_arn"),
                )
            return cls(
                name=value["unit_name"],
                platform="aws",
                mode=value["mode"],
                region=value["region"],
                role_arn=value.get("role_arn"),
                external_id=value.get("external_id"),
                storage_root=value["storage_root"],
                work_pools=value["work_pools"],
                batch_job_queue=value.get("batch_job_queue"),
                batch_job_definitions=value.get("batch_job_definitions") or {},
                efs_file_system_id=value.get("efs_file_system_id"),
                fsx_file_system_id=value.get("fsx_file_system_id"),
                fsx_mount=value.get("fsx_mount"),
                fargate=fargate,
                spending_cap_usd=value.get("spending_cap_usd"),
                budget_usd=value.get("budget_usd"),
                cloud_map_namespace=value.get("cloud_map_namespace"),
                ecs_events_queue=value.get("ecs_events_queue"),
                ecr_repositories=value.get("ecr_repositories") or {},
                tags=value.get("tags") or {},
            )
        except ValueError as exc:
            problem = describe_validation(exc)
            raise InputError(
                f"terraform output does not make a valid ComputeUnit: {problem}"
            ) from None


# What `terraform output -json` of an environment holds (infrastructure/README.md).
TERRAFORM_REQUIRED = ("unit_name", "mode", "region", "storage_root", "work_pools")
TERRAFORM_OUTPUTS = (
    *TERRAFORM_REQUIRED,
    "role_arn",
    "external_id",
    "batch_job_queue",
    "batch_job_definitions",
    "efs_file_system_id",
    "dask_image",
    "subnets",
    "security_groups",
    "public_subnets",
    "ecs_cluster_arn",
    "task_role_arn",
    "execution_role_arn",
    "log_group",
    "gpu_capacity_provider",
    "prefect_api_url_secret_arn",
    "prefect_api_key_secret_arn",
    "spending_cap_usd",
    "budget_usd",
    "fsx_file_system_id",
    "fsx_mount",
    "cloud_map_namespace",
    "ecs_events_queue",
    "ecr_repositories",
    "tags",
)
# Regional names in outputs: ARNs (arn:aws:ecs:eu-west-1:...) and endpoints (ECR image and
# SQS queue URLs: ...ecr.eu-west-1.amazonaws.com, sqs.eu-west-1.amazonaws.com).
_ARN_REGION = re.compile(r"^arn:aws[a-z-]*:[a-z0-9-]+:([a-z0-9-]*):")
_URL_REGION = re.compile(r"\b(?:ecr|sqs)[.-]([a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com")
# Outputs whose values name regional resources.
_REGIONAL_OUTPUTS = (
    "batch_job_queue",
    "batch_job_definitions",
    "dask_image",
    "ecs_cluster_arn",
    "log_group",
    "prefect_api_url_secret_arn",
    "prefect_api_key_secret_arn",
    "cloud_map_namespace",
    "ecs_events_queue",
    "ecr_repositories",
)


def _terraform_values(path_or_json: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Each output's value from ``terraform output -json`` (a file or its parsed JSON)."""
    if isinstance(path_or_json, str | Path):
        try:
            outputs = json.loads(Path(path_or_json).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(
                f"terraform output {str(path_or_json)!r} cannot be read: {exc}; expected the "
                "file `terraform output -json` writes"
            ) from None
    else:
        outputs = path_or_json
    if not isinstance(outputs, Mapping):
        raise InputError(
            f"terraform output is a JSON {type(outputs).__name__}; expected an object of outputs"
        )
    if missing := set(TERRAFORM_REQUIRED) - outputs.keys():
        raise InputError(
            f"terraform output lacks {sorted(missing)}; expected {sorted(TERRAFORM_REQUIRED)}"
        )
    try:
        return {key: out["value"] for key, out in outputs.items()}
    except (TypeError, KeyError):
        raise InputError(
            "terraform output is not `terraform output -json`: expected "
            '{"name": {"value": ...}} for every output'
        ) from None


def _check_regions(value: dict[str, Any]) -> None:
    """Refuse an output whose ARN or endpoint is in another region than ``region``."""
    region = value["region"]
    for key in _REGIONAL_OUTPUTS:
        named = value.get(key)
        items = named.values() if isinstance(named, Mapping) else [named]
        for item in items:
            if not isinstance(item, str):
                continue
            found = _ARN_REGION.match(item) or _URL_REGION.search(item)
            if found and found.group(1) and found.group(1) != region:
                raise InputError(
                    f"terraform output {key}={item!r} is in region {found.group(1)!r}; unit "
                    f"{value['unit_name']!r} serves {region!r} only (outputs from mixed "
                    "environments?)"
                )


def local_unit() -> ComputeUnit:
    """The built-in unit: this machine, storage under SCIFLOW_STORAGE_ROOT.

    Dask worker counts are capped at this machine's cores.
    """
    cores = os.cpu_count() or 1
    workers = {
        size: spec.model_copy(update={"n_workers": min(spec.n_workers, cores)})
        for size, spec in _default_dask_workers().items()
    }
    return ComputeUnit(name=LOCAL_UNIT, dask_workers=workers)


def load_unit(name: str | None = None) -> ComputeUnit:
    """The compute unit called ``name`` (SCIFLOW_DEFAULT_UNIT if omitted).

    ``local`` is built in; any other name is a saved ComputeUnit block.

    Raises:
        InputError: No unit has that name, or the saved block is no longer valid.
    """
    name = name or get_settings().default_unit
    if name == LOCAL_UNIT:
        return local_unit()
    try:
        unit = ComputeUnit.load(name)
    except ValidationError as exc:
        raise InputError(f"compute unit {name!r} is invalid: {describe_validation(exc)}") from None
    except ValueError as exc:
        raise InputError(
            f"compute unit {name!r} not found ({exc}); expected {LOCAL_UNIT!r} or the name of "
            "a saved ComputeUnit block (`prefect block ls`)"
        ) from None
    return unit
