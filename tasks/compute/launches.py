"""One record of what a flow run launched, and one function that stops it all.

Batch jobs, ECS tasks (a Fargate Dask cluster's among them), Cloud Map services and local
process groups a run starts are written to its run directory, one small JSON file each under
``launches/`` (written atomically: a rename locally, one PUT on S3), and removed when they end
on their own. Prefect may run
cancellation and crash hooks in another process, and the secure-cleanup flow runs as its own
deployment: both read the record, not this process's memory. Each entry says what it is and
how to stop it (kind, id, the AWS account and region, ECS cluster, process group, start time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from tasks.aws.clients import AwsAccount, call, client, error_code
from tasks.errors import SciflowError
from tasks.storage.objects import ObjectStore, join_uri

if TYPE_CHECKING:
    from blocks.compute_unit import ComputeUnit

logger = logging.getLogger(__name__)

Kind = Literal["batch-job", "ecs-task", "cloudmap-service", "process"]
RECORD_DIR = "launches"
# Seconds between SIGTERM and SIGKILL of a recorded process group.
KILL_GRACE_S = 10.0
# A recorded process's start time may differ from psutil's by rounding.
START_TOLERANCE_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """Something a run started, and what another process needs to stop it."""

    kind: Kind
    """What it is."""
    id: str
    """Batch job id, ECS task ARN, Cloud Map service id, or process id."""
    account: AwsAccount | None = None
    """AWS account and region of an AWS resource."""
    cluster: str | None = None
    """ECS cluster of a task."""
    pgid: int | None = None
    """Process group of a local process (its own: stopping it stops its children)."""
    process_started: float | None = None
    """A process's start time (seconds since the epoch), so a reused pid is not killed."""
    label: str = ""
    """What the run called it (``torchrun``, ``server``, a job name)."""
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    """When it was recorded (ISO 8601, UTC)."""

    @property
    def key(self) -> str:
        """The record's file name: kind and a hash of the id."""
        return f"{self.kind}-{hashlib.sha256(self.id.encode()).hexdigest()[:16]}.json"

    def to_json(self) -> str:
        """The entry as JSON."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "id": self.id,
            "account": self.account.to_dict() if self.account else None,
            "cluster": self.cluster,
            "pgid": self.pgid,
            "process_started": self.process_started,
            "label": self.label,
            "started_at": self.started_at,
        }
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Launch:
        """The inverse of ``to_json``."""
        data = json.loads(text)
        account = data.pop("account", None)
        return cls(**data, account=AwsAccount.from_dict(account) if account else None)


def process_launch(pid: int, label: str) -> Launch:
    """The entry of a local process that leads its own process group."""
    import psutil

    return Launch(
        kind="process",
        id=str(pid),
        pgid=os.getpgid(pid),
        process_started=psutil.Process(pid).create_time(),
        label=label,
    )


class LaunchRecord:
    """The launches of one flow run: ``<run dir>/launches/<kind>-<hash>.json``.

    Args:
        store: Storage of the run directory.
        run_root: URI of the run directory (``ComputeUnit.run_dir(run_id)``).
        account: The unit's account, whose ``external_id`` the launches read back get
            (records leave it out), so a Mode 2 launch can be stopped.
    """

    def __init__(
        self, store: ObjectStore, run_root: str, account: AwsAccount | None = None
    ) -> None:
        self.store = store
        self.root = join_uri(run_root, RECORD_DIR)
        self.account = account

    @classmethod
    def of_run(cls, unit: ComputeUnit, run_id: str) -> LaunchRecord:
        """The record of flow run ``run_id`` on ``unit``, through the unit's storage."""
        account = None if unit.is_local else unit.aws_account()
        return cls(unit.object_store(), unit.run_dir(run_id), account)

    def add(self, launch: Launch) -> Launch:
        """Record ``launch`` (atomically); returns it."""
        self.store.write_text(join_uri(self.root, launch.key), launch.to_json())
        return launch

    def done(self, launch: Launch) -> None:
        """Forget ``launch``: it ended, or was stopped."""
        self.store.remove(join_uri(self.root, launch.key))

    def launches(self) -> list[Launch]:
        """Every launch recorded and not yet done, oldest first."""
        found = [
            self._with_external_id(
                Launch.from_json(self.store.read_bytes(join_uri(self.root, name)).decode())
            )
            for name in self.store.walk(self.root)
            if name.endswith(".json")
        ]
        return sorted(found, key=lambda launch: launch.started_at)

    def _with_external_id(self, launch: Launch) -> Launch:
        """``launch`` with the unit's ExternalId on its role, which records leave out."""
        mine, theirs = self.account, launch.account
        if not (mine and theirs and theirs.role_arn and theirs.role_arn == mine.role_arn):
            return launch
        return replace(launch, account=replace(theirs, external_id=mine.external_id))

    def stop_all(self, reason: str) -> list[Launch]:
        """Stop every recorded launch, newest first, and forget each one stopped.

        Returns:
            The launches stopped.

        Raises:
            SciflowError: Some could not be stopped (they stay recorded); the others were.
        """
        stopped, errors = [], []
        for launch in reversed(self.launches()):
            try:
                stop(launch, reason)
            except SciflowError as exc:
                errors.append(exc)
                continue
            self.done(launch)
            stopped.append(launch)
        if errors:
            raise SciflowError(
                f"could not stop {len(errors)} launch(es) recorded under {self.root}: {errors[0]}"
            ) from errors[0]
        return stopped


def stop(launch: Launch, reason: str) -> None:
    """Stop one launch, whatever it is; one already gone counts as stopped.

    Raises:
        SciflowError: AWS refused.
    """
    logger.info("stopping %s %s (%s): %s", launch.kind, launch.id, launch.label, reason)
    if launch.kind == "process":
        _stop_process(launch)
        return
    if launch.kind == "batch-job":
        batch = client("batch", launch.account)
        call(batch.terminate_job, f"terminate Batch job {launch.id}", jobId=launch.id,
             reason=reason[:1024])  # fmt: skip
    elif launch.kind == "ecs-task":
        ecs = client("ecs", launch.account)
        call(ecs.stop_task, f"stop task {launch.id}", cluster=launch.cluster, task=launch.id,
             reason=reason[:255])  # fmt: skip
    elif launch.kind == "cloudmap-service":
        _remove_service(client("servicediscovery", launch.account), launch.id)


def _remove_service(discovery: Any, service_id: str) -> None:
    """Deregister the service's instances, then delete it (DeleteService refuses otherwise)."""
    try:
        instances = call(discovery.list_instances, "list instances", ServiceId=service_id)
        for instance in instances.get("Instances", []):
            call(discovery.deregister_instance, f"deregister {instance['Id']}",
                 ServiceId=service_id, InstanceId=instance["Id"])  # fmt: skip
        for _ in range(50):  # deregistering is asynchronous
            if not call(discovery.list_instances, "list instances", ServiceId=service_id).get(
                "Instances"
            ):
                break
            time.sleep(0.2)
        call(discovery.delete_service, f"delete Cloud Map service {service_id}", Id=service_id)
    except SciflowError as exc:
        if error_code(exc) != "ServiceNotFound":
            raise


def _stop_process(launch: Launch, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the recorded process group, then SIGKILL after ``grace_s``.

    A live process with the recorded pid but another start time is someone else's (the pid
    was reused): it is left alone.
    """
    import psutil

    pid, pgid = int(launch.id), launch.pgid or int(launch.id)
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        started = None
    if started is not None and launch.process_started is not None:
        if abs(started - launch.process_started) > START_TOLERANCE_S:
            return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def current_record() -> LaunchRecord | None:
    """The record of the flow run this is called from (tasks included); ``None`` outside one.

    The run directory comes from the run's ``unit`` parameter, as the hooks find it.
    """
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return None
    return LaunchRecord.of_run(unit_of(flow_run.get_parameters()), run_id)


def unit_of(parameters: Mapping[str, Any] | None) -> ComputeUnit:
    """The compute unit a flow run's ``unit`` parameter names (the default unit if none)."""
    from blocks.compute_unit import load_unit

    return load_unit((parameters or {}).get("unit") or None)
