"""Remove a run's cloud resources, found by its tag ``sciflow:run-id`` alone, and nothing else.

Every resource a run creates carries ``sciflow:run-id`` (``tasks.aws.tags``). The Resource
Groups Tagging API does not return every kind (Batch jobs, Cloud Map services and ECS task
definitions are missing in moto, and Batch jobs in AWS), so each service is asked for its own
resources and their tags, and a resource is the run's only when its tag value equals the run
id exactly, compared here, never through a service's filter (EC2 filters take ``*`` and
``?`` as wildcards). What is found and how it goes:

- ECS tasks (not yet stopping): stopped. ECS services: deleted (forced). ECS clusters:
  deleted (a Dask cluster's own, when the unit names none).
- Batch jobs not yet finished: terminated; the job this process runs in is spared (the
  end-of-run hook runs inside the flow's own job, which carries the run's tag too).
- Cloud Map services: their instances deregistered, then deleted. The namespace is shared
  by runs and carries no run id.
- ECS task definitions: deregistered, then deleted (``DeleteTaskDefinitions``).
- EFS access points and security groups: deleted.
- Log streams of the run's Dask tasks: streams carry no tags; awslogs names a Dask task's
  ``dask/<container>/<task id>`` in the unit's Dask log group, and the task carries the tag,
  which identifies them while ECS still lists the task (an hour or more after it stopped).
- Secrets Manager secrets named ``sciflow-``* (a Dask cluster's TLS certificates): deleted
  without a recovery window.

Tasks and jobs go first; what they use goes after. A delete refused because something still
uses the resource (a security group's network interfaces outlive a stopping task by minutes)
is retried until ``IN_USE_WAIT_S``. botocore retries throttling (``tasks.aws.clients``). A
resource that cannot be removed is reported and the others are still removed; a refusal
for lack of permission stops at once with the IAM action to grant. Afterwards the run's
resources are looked for again, until none is left or ``SETTLE_S`` has passed.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from tasks.aws.clients import AwsAccount, aws_errors, call, client, error_code
from tasks.aws.tags import RUN_ID_TAG, from_aws
from tasks.cleanup.audit import Check
from tasks.cleanup.sweep import check_run_id
from tasks.errors import InputError, SciflowError

ResourceKind = Literal[
    "ecs-task",
    "batch-job",
    "ecs-service",
    "cloudmap-service",
    "ecs-cluster",
    "task-definition",
    "efs-access-point",
    "security-group",
    "log-stream",
    "secret",
]
# Removal order: what runs, then what it runs in or with.
KINDS: tuple[ResourceKind, ...] = get_args(ResourceKind)
CHECK_NAME = "cloud resources removed"
# Mirrors tasks.compute.dask's DEFAULT_LOG_GROUP and LOG_STREAM_PREFIX (tasks.compute imports
# tasks.cleanup, so not the other way round; a test pins them equal).
DASK_LOG_GROUP = "/sciflow/dask"
DASK_LOG_PREFIX = "dask"
# Every task definition family sciflow registers starts so (Dask, parameter server): listing
# only those spares describing every revision in the account, one call each, at every run's end.
FAMILY_PREFIX = "sciflow-"
# Every secret a run makes is named so (tasks.compute.dask's TLS_SECRET_PREFIX starts so);
# the unit's own secrets (the Prefect API URL and key) carry no run id.
SECRET_PREFIX = "sciflow-"  # noqa: S105  # a name prefix, not a secret
# Batch's variable naming the job a process runs in (``<job id>#<node>`` on a node).
BATCH_JOB_ID = "AWS_BATCH_JOB_ID"
# Seconds to keep retrying deletes refused because the resource is still in use, and between
# tries; an ENI of a stopped Fargate task is released within minutes.
IN_USE_WAIT_S = 600.0
IN_USE_POLL_S = 10.0
# Seconds to wait for removals AWS finishes later (a terminated Batch job ends RUNNING).
SETTLE_S = 180.0
SETTLE_POLL_S = 2.0
ACTIVE_JOB_STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
# AWS error codes: the caller may not do it; the resource is still used; it is already gone.
DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException"}
)
IN_USE = frozenset(
    {
        "DependencyViolation",
        "ResourceInUse",
        "ResourceInUseException",
        "ClusterContainsTasksException",
        "ClusterContainsServicesException",
        "AccessPointInUse",
    }
)
GONE = frozenset(
    {
        "InvalidGroup.NotFound",
        "ServiceNotFound",
        "AccessPointNotFound",
        "ResourceNotFoundException",
        "ClusterNotFoundException",
        "ServiceNotFoundException",
    }
)
# IAM's prefix for each boto3 service, to name a missing permission.
IAM_PREFIX = {"efs": "elasticfilesystem"}


@dataclass(frozen=True, slots=True)
class Resource:
    """One cloud resource of a run, and what removing it needs."""

    kind: ResourceKind
    """What it is."""
    id: str
    """ARN (ECS, Batch, Cloud Map), id (security group, access point) or log stream name."""
    parent: str = ""
    """ECS cluster of a task or service; log group of a log stream."""
    state: str = field(default="", compare=False)
    """Its state when found (task, job, task definition); not part of its identity."""

    def __str__(self) -> str:
        return f"{self.kind} {self.id}"


class CleanupDenied(InputError):
    """The unit's credentials may not remove a resource; the message names the IAM action."""


class Clients:
    """The boto3 clients of one account, each made once (``tasks.aws.clients.client``).

    Args:
        account: The unit's account; the ambient one if ``None``.
        **made: Clients to use instead of making them, by service (tests: a Stubber's).
    """

    def __init__(self, account: AwsAccount | None = None, **made: Any) -> None:
        self.account = account
        self._made: dict[str, Any] = dict(made)

    def __call__(self, service: str) -> Any:
        """The client for ``service`` (``"ecs"``, ``"batch"`` ...)."""
        if service not in self._made:
            self._made[service] = client(service, self.account)
        return self._made[service]


@dataclass(slots=True)
class Removal:
    """What a removal found, removed, could not remove, and what is still there after it."""

    run_id: str
    found: list[Resource] = field(default_factory=list)
    removed: list[Resource] = field(default_factory=list)
    failed: list[tuple[Resource, str]] = field(default_factory=list)
    left: list[Resource] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """Nothing failed and nothing of the run's is left (a dry run: nothing found)."""
        if self.dry_run:
            return not self.found
        return not self.failed and not self.left

    def check(self) -> Check:
        """The removal as a cleanup check: kinds and ids removed, failed and left."""
        if self.dry_run:
            detail = f"would remove {_listing(self.found)}" if self.found else "nothing tagged"
            return Check(CHECK_NAME, self.ok, f"{detail} ({RUN_ID_TAG}={self.run_id})")
        parts = [f"removed {_listing(self.removed)}" if self.removed else "nothing tagged"]
        if self.failed:
            parts.append("failed: " + "; ".join(f"{r}: {why}" for r, why in self.failed))
        if self.left:
            parts.append(f"left: {_listing(self.left)}")
        detail = "; ".join(parts) + f" ({RUN_ID_TAG}={self.run_id})"
        return Check(CHECK_NAME, self.ok, detail, removed=len(self.removed))


def _listing(resources: Sequence[Resource]) -> str:
    by_kind: dict[str, list[str]] = defaultdict(list)
    for resource in resources:
        by_kind[resource.kind].append(resource.id)
    kinds = ", ".join(f"{kind} x{len(ids)} ({', '.join(ids)})" for kind, ids in by_kind.items())
    return f"{len(resources)}: {kinds}"


# --- finding ----------------------------------------------------------------------------------


def tagged_run_ids(
    account: AwsAccount | None = None,
    clients: Clients | None = None,
    log_groups: Collection[str] = (DASK_LOG_GROUP,),
) -> dict[str, list[Resource]]:
    """Every run id that still holds tagged resources in the account, with those resources.

    Args:
        account: The unit's account (``ComputeUnit.aws_account()``).
        clients: Clients to use instead of ``account``'s.
        log_groups: Log groups the Dask tasks log to (the unit's).
    """
    clients = clients or Clients(account)
    found: dict[str, list[Resource]] = defaultdict(list)
    for run_id, resource in _tagged(clients, log_groups):
        found[run_id].append(resource)
    return {run_id: _ordered(resources) for run_id, resources in found.items()}


def find_run_resources(
    run_id: str, clients: Clients, log_groups: Collection[str] = (DASK_LOG_GROUP,)
) -> list[Resource]:
    """The resources tagged ``sciflow:run-id`` = ``run_id``, in removal order.

    Raises:
        InputError: ``run_id`` is not a flow-run id (an empty or wildcard value would match
            every run's resources, or none that are tagged).
    """
    wanted = _run_tag_value(run_id)
    return _ordered([r for tag, r in _tagged(clients, log_groups, wanted) if tag == wanted])


def _run_tag_value(run_id: str) -> str:
    try:
        return check_run_id(run_id)
    except InputError as exc:
        raise InputError(
            f"{exc}; cloud resources are removed only by an exact {RUN_ID_TAG} tag, so a run "
            "id is required: nothing was removed"
        ) from None


def _ordered(resources: list[Resource]) -> list[Resource]:
    return sorted(resources, key=lambda r: KINDS.index(r.kind))


def _tagged(
    clients: Clients, log_groups: Collection[str], run_id: str | None = None
) -> Iterator[tuple[str, Resource]]:
    """``(run id, resource)`` for every resource carrying ``sciflow:run-id``.

    With ``run_id`` (a checked UUID), services that filter by tag value are asked for that
    run's alone, so cleaning many runs does not list the whole account for each one.
    """
    yield from _ecs(clients, log_groups)
    yield from _batch_jobs(clients)
    yield from _cloudmap_services(clients)
    yield from _task_definitions(clients)
    yield from _access_points(clients)
    yield from _security_groups(clients, run_id)
    yield from _secrets(clients)


def _pages(fn_client: Any, operation: str, key: str, doing: str, **kwargs: Any) -> Iterator[Any]:
    with aws_errors(doing):
        for page in fn_client.get_paginator(operation).paginate(**kwargs):
            yield from page.get(key, [])


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ecs(clients: Clients, log_groups: Collection[str]) -> Iterator[tuple[str, Resource]]:
    ecs = clients("ecs")
    clusters = list(_pages(ecs, "list_clusters", "clusterArns", "list ECS clusters"))
    streams: list[tuple[str, str, str]] = []  # (run id, task id, container)
    for chunk in _chunks(clusters, 100):
        described = call(
            ecs.describe_clusters, "describe ECS clusters", clusters=list(chunk), include=["TAGS"]
        )
        for cluster in described.get("clusters", []):
            run = from_aws(cluster.get("tags", [])).get(RUN_ID_TAG)
            if run and cluster.get("status") != "INACTIVE":
                yield run, Resource("ecs-cluster", cluster["clusterArn"], state=cluster["status"])
    for cluster in clusters:
        arns: list[str] = []
        for desired in ("RUNNING", "STOPPED"):  # stopped ones still name their log streams
            arns += _pages(
                ecs,
                "list_tasks",
                "taskArns",
                f"list tasks of {cluster}",
                cluster=cluster,
                desiredStatus=desired,
            )
        for chunk in _chunks(sorted(set(arns)), 100):
            described = call(
                ecs.describe_tasks,
                f"describe tasks of {cluster}",
                cluster=cluster,
                tasks=list(chunk),
                include=["TAGS"],
            )
            for task in described.get("tasks", []):
                run = from_aws(task.get("tags", [])).get(RUN_ID_TAG)
                if not run:
                    continue
                task_id = task["taskArn"].rsplit("/", 1)[-1]
                streams += [(run, task_id, c["name"]) for c in task.get("containers", [])]
                if "STOPPED" not in (task.get("desiredStatus"), task.get("lastStatus")):
                    yield run, Resource("ecs-task", task["taskArn"], cluster, task["lastStatus"])
        services = list(
            _pages(
                ecs, "list_services", "serviceArns", f"list services of {cluster}", cluster=cluster
            )
        )
        for chunk in _chunks(services, 10):
            described = call(
                ecs.describe_services,
                f"describe services of {cluster}",
                cluster=cluster,
                services=list(chunk),
                include=["TAGS"],
            )
            for service in described.get("services", []):
                run = from_aws(service.get("tags", [])).get(RUN_ID_TAG)
                if run and service.get("status") != "INACTIVE":
                    yield (
                        run,
                        Resource(
                            "ecs-service", service["serviceArn"], cluster, service.get("status", "")
                        ),
                    )
    yield from _log_streams(clients, log_groups, streams)


def _log_streams(
    clients: Clients, log_groups: Collection[str], streams: list[tuple[str, str, str]]
) -> Iterator[tuple[str, Resource]]:
    """The Dask log streams ``dask/<container>/<task id>`` of the run's tasks that exist."""
    if not streams:
        return
    logs = clients("logs")
    for group in log_groups:
        for run, task_id, container in streams:
            name = f"{DASK_LOG_PREFIX}/{container}/{task_id}"
            try:
                found = call(
                    logs.describe_log_streams,
                    f"find log stream {group}:{name}",
                    logGroupName=group,
                    logStreamNamePrefix=name,
                )
            except SciflowError as exc:
                if error_code(exc) in GONE:  # the group does not exist
                    break
                raise
            if any(s["logStreamName"] == name for s in found.get("logStreams", [])):
                yield run, Resource("log-stream", name, group)


def _batch_jobs(clients: Clients) -> Iterator[tuple[str, Resource]]:
    batch = clients("batch")
    queues = [
        q["jobQueueArn"]
        for q in _pages(batch, "describe_job_queues", "jobQueues", "list Batch job queues")
    ]
    for queue in queues:
        ids: list[str] = []
        for status in ACTIVE_JOB_STATES:
            ids += [
                j["jobId"]
                for j in _pages(
                    batch,
                    "list_jobs",
                    "jobSummaryList",
                    f"list {status} jobs of {queue}",
                    jobQueue=queue,
                    jobStatus=status,
                )
            ]
        for chunk in _chunks(ids, 100):
            described = call(batch.describe_jobs, "describe Batch jobs", jobs=list(chunk))
            for job in described.get("jobs", []):
                run = (job.get("tags") or {}).get(RUN_ID_TAG)
                if run and job["status"] in ACTIVE_JOB_STATES:
                    yield run, Resource("batch-job", job["jobId"], queue, job["status"])


def _cloudmap_services(clients: Clients) -> Iterator[tuple[str, Resource]]:
    discovery = clients("servicediscovery")
    for service in _pages(discovery, "list_services", "Services", "list Cloud Map services"):
        tags = call(
            discovery.list_tags_for_resource,
            f"read tags of {service['Arn']}",
            ResourceARN=service["Arn"],
        )
        if run := from_aws(tags.get("Tags", [])).get(RUN_ID_TAG):
            yield run, Resource("cloudmap-service", service["Id"], state=service.get("Name", ""))


def _task_definitions(clients: Clients) -> Iterator[tuple[str, Resource]]:
    ecs = clients("ecs")
    # ListTaskDefinitions takes a whole family name; ListTaskDefinitionFamilies a prefix.
    families = _pages(
        ecs,
        "list_task_definition_families",
        "families",
        "list task definition families",
        familyPrefix=FAMILY_PREFIX,
    )
    for family in families:
        for status in ("ACTIVE", "INACTIVE"):
            for arn in _pages(
                ecs,
                "list_task_definitions",
                "taskDefinitionArns",
                f"list {status} task definitions of {family}",
                familyPrefix=family,
                status=status,
            ):
                described = call(
                    ecs.describe_task_definition,
                    f"describe {arn}",
                    taskDefinition=arn,
                    include=["TAGS"],
                )
                if run := from_aws(described.get("tags", [])).get(RUN_ID_TAG):
                    yield run, Resource("task-definition", arn, state=status)


def _access_points(clients: Clients) -> Iterator[tuple[str, Resource]]:
    efs = clients("efs")
    for point in _pages(efs, "describe_access_points", "AccessPoints", "list EFS access points"):
        if run := from_aws(point.get("Tags", [])).get(RUN_ID_TAG):
            yield (
                run,
                Resource(
                    "efs-access-point",
                    point["AccessPointId"],
                    point.get("FileSystemId", ""),
                    point.get("LifeCycleState", ""),
                ),
            )


def _security_groups(clients: Clients, run_id: str | None) -> Iterator[tuple[str, Resource]]:
    ec2 = clients("ec2")
    # EC2 reads * and ? in a tag value as wildcards: a run id is a checked UUID, which has
    # none; without one, any value of the key. The caller compares the value exactly anyway.
    if run_id is None:
        with_tag = [{"Name": "tag-key", "Values": [RUN_ID_TAG]}]
    else:
        with_tag = [{"Name": f"tag:{RUN_ID_TAG}", "Values": [run_id]}]
    for group in _pages(
        ec2, "describe_security_groups", "SecurityGroups", "list security groups", Filters=with_tag
    ):
        if run := from_aws(group.get("Tags", [])).get(RUN_ID_TAG):
            yield run, Resource("security-group", group["GroupId"], state=group["GroupName"])


def _secrets(clients: Clients) -> Iterator[tuple[str, Resource]]:
    secrets = clients("secretsmanager")
    named = [{"Key": "name", "Values": [SECRET_PREFIX]}]  # a prefix match
    for secret in _pages(secrets, "list_secrets", "SecretList", "list secrets", Filters=named):
        if run := from_aws(secret.get("Tags", [])).get(RUN_ID_TAG):
            yield run, Resource("secret", secret["ARN"], state=secret["Name"])


# --- removing ---------------------------------------------------------------------------------


def remove_resources(
    resources: Sequence[Resource],
    clients: Clients,
    reason: str = "sciflow secure cleanup",
    *,
    in_use_wait_s: float = IN_USE_WAIT_S,
    in_use_poll_s: float = IN_USE_POLL_S,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[Resource], list[tuple[Resource, str]]]:
    """Remove ``resources``, tasks and jobs first; those still in use again until the wait ends.

    Args:
        resources: What to remove (``find_run_resources``), in any order.
        clients: The account's clients.
        reason: Why, for ECS and Batch (shows in their consoles).
        in_use_wait_s: How long to retry deletes refused because the resource is in use.
        in_use_poll_s: Seconds between those retries.
        sleep: Waits between retries (tests pass a recorder).
        clock: Seconds, for the wait's end (tests pass their own).

    Returns:
        The resources removed (or already gone), and those that could not be, with why.

    Raises:
        CleanupDenied: The credentials may not remove one; it names the IAM action, and what
            was removed before.
    """
    removed: list[Resource] = []
    failed: list[tuple[Resource, str]] = []
    pending = _ordered(list(resources))
    deadline = clock() + in_use_wait_s
    while pending:
        in_use: list[tuple[Resource, str]] = []
        for resource in pending:
            try:
                _remove(clients, resource, reason)
            except SciflowError as exc:
                code = error_code(exc)
                if code in DENIED:
                    raise _denied(exc, resource, removed) from exc
                if code in IN_USE:
                    in_use.append((resource, str(exc)))
                elif code in GONE:
                    removed.append(resource)
                else:
                    failed.append((resource, str(exc)))
                continue
            removed.append(resource)
        if not in_use or clock() >= deadline:
            failed += in_use
            break
        sleep(in_use_poll_s)
        pending = [resource for resource, _ in in_use]
    return removed, failed


def _denied(exc: SciflowError, resource: Resource, removed: list[Resource]) -> CleanupDenied:
    service = _SERVICE[resource.kind]
    action = f"{IAM_PREFIX.get(service, service)}:{exc.operation or 'unknown'}"
    went = f"removed before: {_listing(removed)}" if removed else "nothing was removed"
    return CleanupDenied(
        f"the unit's credentials may not remove {resource} ({exc.code}); grant {action} on "
        f"resources tagged {RUN_ID_TAG} to the cleanup role; {went}"
    )


_SERVICE: dict[ResourceKind, str] = {
    "ecs-task": "ecs",
    "batch-job": "batch",
    "ecs-service": "ecs",
    "cloudmap-service": "servicediscovery",
    "ecs-cluster": "ecs",
    "task-definition": "ecs",
    "efs-access-point": "efs",
    "security-group": "ec2",
    "log-stream": "logs",
    "secret": "secretsmanager",
}


def _remove(clients: Clients, resource: Resource, reason: str) -> None:
    kind, rid, doing = resource.kind, resource.id, f"remove {resource}"
    api = clients(_SERVICE[kind])
    if kind == "ecs-task":
        call(api.stop_task, doing, cluster=resource.parent, task=rid, reason=reason[:255])
    elif kind == "batch-job":
        call(api.terminate_job, doing, jobId=rid, reason=reason[:1024])
    elif kind == "ecs-service":
        call(api.delete_service, doing, cluster=resource.parent, service=rid, force=True)
    elif kind == "cloudmap-service":
        for instance in _pages(api, "list_instances", "Instances", doing, ServiceId=rid):
            call(api.deregister_instance, doing, ServiceId=rid, InstanceId=instance["Id"])
        call(api.delete_service, doing, Id=rid)  # ResourceInUse until deregistered: retried
    elif kind == "ecs-cluster":
        call(api.delete_cluster, doing, cluster=rid)
    elif kind == "task-definition":
        if resource.state == "ACTIVE":
            call(api.deregister_task_definition, doing, taskDefinition=rid)
        answer = call(api.delete_task_definitions, doing, taskDefinitions=[rid])
        if problems := answer.get("failures"):
            raise SciflowError(f"cannot {doing}: {problems[0].get('reason', problems[0])}")
    elif kind == "efs-access-point":
        call(api.delete_access_point, doing, AccessPointId=rid)
    elif kind == "security-group":
        call(api.delete_security_group, doing, GroupId=rid)
    elif kind == "log-stream":
        call(api.delete_log_stream, doing, logGroupName=resource.parent, logStreamName=rid)
    elif kind == "secret":
        call(api.delete_secret, doing, SecretId=rid, ForceDeleteWithoutRecovery=True)


def own_batch_job(env: Mapping[str, str] | None = None) -> str | None:
    """The Batch job this process runs in (a node's parent job), if any.

    Args:
        env: The process's environment if ``None``.
    """
    job = (os.environ if env is None else env).get(BATCH_JOB_ID)
    return job.split("#", 1)[0] if job else None


def remove_run_resources(
    run_id: str,
    clients: Clients,
    *,
    log_groups: Collection[str] = (DASK_LOG_GROUP,),
    dry_run: bool = False,
    spare: Collection[str] | None = None,
    settle_s: float = SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
    **removal: Any,
) -> Removal:
    """Find the run's tagged resources, remove them, then look again until none is left.

    Args:
        run_id: The flow run (its UUID); only resources whose ``sciflow:run-id`` equals it.
        clients: The unit's clients (``Clients(unit.aws_account())``).
        log_groups: Log groups the run's Dask tasks log to.
        dry_run: Only list what would go.
        spare: Ids never to touch; ``None``: the Batch job this process runs in.
        settle_s: How long to wait for removals AWS completes later (a terminated job).
        sleep: Waits between looks (tests pass a recorder).
        **removal: ``remove_resources``'s waits for resources in use.

    Raises:
        InputError: ``run_id`` is not a flow-run id; nothing is looked for or removed.
        CleanupDenied: The credentials may not remove something (see ``remove_resources``).
    """
    spared = set(spare) if spare is not None else {own_batch_job()} - {None}
    found = [r for r in find_run_resources(run_id, clients, log_groups) if r.id not in spared]
    if dry_run:
        return Removal(run_id, found=found, dry_run=True)
    removed, failed = remove_resources(
        found, clients, f"sciflow secure cleanup of flow run {run_id}", sleep=sleep, **removal
    )
    could_not = {resource for resource, _ in failed}
    deadline = time.monotonic() + settle_s
    while True:
        left = [r for r in find_run_resources(run_id, clients, log_groups) if r.id not in spared]
        # Wait while something removed is still listed: AWS may still be finishing it.
        settling = [r for r in left if r in removed]
        if not settling or time.monotonic() >= deadline:
            break
        sleep(SETTLE_POLL_S)
    left = [r for r in left if r not in could_not]  # reported as failed already
    return Removal(run_id, found=found, removed=removed, failed=failed, left=left)


def cloud_resources_check(
    account: AwsAccount | None,
    run_id: str,
    *,
    log_groups: Collection[str] = (DASK_LOG_GROUP,),
    dry_run: bool = False,
    clients: Clients | None = None,
) -> Check:
    """The check "cloud resources removed" for a run in an AWS account.

    Args:
        account: The unit's account; ``None`` for a unit without one (a local unit): the
            check passes, saying so.
        run_id: The flow run.
        log_groups: The unit's Dask log group(s).
        dry_run: Only list what would go (the check fails if anything would).
        clients: Clients to use instead of ``account``'s.

    Raises:
        InputError: ``run_id`` is not a flow-run id.
    """
    if account is None and clients is None:
        return Check(CHECK_NAME, True, "the unit has no cloud account: nothing to remove")
    removal = remove_run_resources(
        run_id, clients or Clients(account), log_groups=log_groups, dry_run=dry_run
    )
    return removal.check()
