"""ECS tasks and Cloud Map: a server task published under a DNS name, and its worker tasks.

The mechanics beside ``tasks.compute.batch``: register task definitions, RunTask in batches of
10, wait for RUNNING with boto3's ``tasks_running`` waiter, follow the tasks to STOPPED, stop
them, and publish the server as an instance of a Cloud Map service in a private DNS namespace
(workers connect to ``<service>.<namespace>:<port>``). What runs in the tasks (commands,
environment) is the caller's: ``tasks.training.ecs`` builds the parameter server's.

Nothing here imports Prefect. Every AWS call goes through ``tasks.aws.clients.call``: botocore
retries throttling and 5xx, and what still fails becomes a sciflow error. ECS task states, in
order: PROVISIONING, PENDING, ACTIVATING, RUNNING, DEACTIVATING, STOPPING, DEPROVISIONING,
STOPPED.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tasks.aws.clients import AwsAccount, call, client, error_code
from tasks.aws.tags import RUN_ID_TAG, to_aws
from tasks.compute.batch import LOG_STREAMS_MAX, LogCursor, read_logs
from tasks.compute.launches import Launch, LaunchRecord
from tasks.compute.secrets import refuse_clear_credentials
from tasks.errors import InputError, SciflowError, TransientError

logger = logging.getLogger(__name__)

# RunTask starts at most 10 tasks a call; DescribeTasks takes at most 100 ids.
RUN_TASK_MAX = 10
DESCRIBE_TASKS_MAX = 100
# Cloud Map DNS TTL in seconds: short, since a restarted server gets a new IP.
DNS_TTL_S = 10
STARTING_STATES = frozenset({"PROVISIONING", "PENDING", "ACTIVATING"})
STOPPING_STATES = frozenset({"DEACTIVATING", "STOPPING", "DEPROVISIONING", "STOPPED"})
# Fargate's valid task sizes: CPU units -> allowed memory in MiB.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}


def check_fargate_size(role: str, cpu: int, memory: int) -> None:
    """Refuse CPU units and memory (MiB) Fargate cannot run; ``role`` names the fields."""
    if cpu not in FARGATE_SIZES:
        raise InputError(f"{role}_cpu={cpu}: Fargate takes CPU units {sorted(FARGATE_SIZES)}")
    allowed = FARGATE_SIZES[cpu]
    if memory not in allowed:
        raise InputError(
            f"{role}_memory={memory}: with {role}_cpu={cpu} Fargate takes {allowed[0]} to "
            f"{allowed[-1]} MiB in steps of {allowed[1] - allowed[0]}"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ServicePlan:
    """What to launch: a ``"server"`` task published in Cloud Map and ``worker_count`` workers."""

    cluster: str
    """ECS cluster name or ARN."""
    region: str
    """AWS region."""
    subnets: tuple[str, ...]
    """Private subnet ids; tasks get no public IP."""
    security_groups: tuple[str, ...]
    """Security group ids; they must let workers reach the server's port."""
    service_name: str
    """Cloud Map service (a DNS label); also every task's ``startedBy``."""
    namespace: str
    """Cloud Map private DNS namespace, shared by runs in the VPC."""
    port: int
    """TCP port the server listens on."""
    tags: Mapping[str, str]
    """The run's tags, on every task, definition and service."""
    definitions: Mapping[str, Mapping[str, Any]]
    """RegisterTaskDefinition arguments for ``"server"`` and ``"worker"``."""
    worker_count: int
    """Worker tasks, at least 1."""
    vpc: str | None = None
    """VPC of the subnets; looked up from the first subnet if unset."""

    @property
    def server_host(self) -> str:
        """The DNS name workers resolve to the server: ``<service>.<namespace>``."""
        return f"{self.service_name}.{self.namespace}"

    @property
    def started_by(self) -> str:
        """ECS ``startedBy`` of every task: the service name, so leftovers are findable."""
        return self.service_name

    def log_stream(self, role: str, task_arn: str) -> tuple[str, str] | None:
        """``(log group, stream)`` where awslogs writes ``role``'s task; None without awslogs.

        The awslogs driver names a task's stream ``<prefix>/<container name>/<task id>``.
        """
        [container] = self.definitions[role]["containerDefinitions"]
        config = container.get("logConfiguration") or {}
        options = config.get("options") or {}
        if config.get("logDriver") != "awslogs" or not options.get("awslogs-group"):
            return None
        prefix = options.get("awslogs-stream-prefix", "")
        return options["awslogs-group"], f"{prefix}/{container['name']}/{task_id(task_arn)}"


def aws_clients(account: AwsAccount | None, region: str) -> tuple[Any, Any, Any]:
    """``(ecs, servicediscovery, ec2)`` clients in ``account`` (the ambient one if ``None``)."""
    return (
        client("ecs", account, region=region),
        client("servicediscovery", account, region=region),
        client("ec2", account, region=region),
    )


def task_id(arn: str) -> str:
    """The id at the end of a task ARN."""
    return arn.rpartition("/")[2]


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """How one task ended."""

    task_arn: str
    role: str
    """``"server"`` or ``"worker"``."""
    exit_code: int | None
    """The container's exit code; ``None`` if it never ran."""
    reason: str
    """ECS ``stoppedReason`` (and ``stopCode``)."""


@dataclass(frozen=True, slots=True)
class LaunchOutcome:
    """Every task's end; the server's exit code decides success."""

    tasks: tuple[TaskOutcome, ...]

    @property
    def server(self) -> TaskOutcome:
        """The server task's outcome."""
        return next(t for t in self.tasks if t.role == "server")

    @property
    def succeeded(self) -> bool:
        """Whether the server exited with 0."""
        return self.server.exit_code == 0

    @property
    def failed_workers(self) -> tuple[TaskOutcome, ...]:
        """Workers that exited non-zero or never ran."""
        return tuple(t for t in self.tasks if t.role == "worker" and t.exit_code != 0)

    @property
    def exit_codes(self) -> dict[str, int | None]:
        """Exit code by task id."""
        return {task_id(t.task_arn): t.exit_code for t in self.tasks}


class ServerWorkersLaunch:
    """Starts, follows and stops one server task and its worker tasks on ECS Fargate.

    Use it as a context manager: leaving the block (normally or by an exception, e.g. the
    flow run was cancelled) stops every task it started and removes its Cloud Map service.

    Example:
        ```python
        with ServerWorkersLaunch(plan, unit.aws_account()) as launch:
            launch.start()
            outcome = launch.wait()
        ```
    """

    def __init__(
        self,
        plan: ServicePlan,
        account: AwsAccount | None = None,
        *,
        poll_s: float = 5.0,
        start_timeout_s: float = 900.0,
        clients: tuple[Any, Any, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        record: LaunchRecord | None = None,
    ) -> None:
        """A launch of ``plan``; nothing starts until ``start()``.

        Args:
            plan: What to launch.
            account: The unit's AWS account (``unit.aws_account()``); ambient if ``None``.
            poll_s: Seconds between DescribeTasks polls.
            start_timeout_s: Most seconds a task may take to reach RUNNING.
            clients: ``(ecs, servicediscovery, ec2)`` to use instead of ``account``'s.
            sleep: Waits between polls.
            record: The run's launch record; every task and the service go in it.
        """
        self.plan = plan
        self.ecs, self.discovery, self.ec2 = clients or aws_clients(account, plan.region)
        self.logs = client("logs", account, region=plan.region)
        self.poll_s, self.start_timeout_s, self._sleep = poll_s, start_timeout_s, sleep
        self.definition_arns: dict[str, str] = {}
        self.namespace_id: str | None = None
        self.service_id: str | None = None
        self.server_task: str | None = None
        self.server_ip: str | None = None
        self.worker_tasks: list[str] = []
        self._instance_registered = False
        self._stopped: set[str] = set()
        self.record = record
        self._recorded: dict[str, Launch] = {}
        self._account = replace(account or AwsAccount(), region=plan.region)

    def __enter__(self) -> ServerWorkersLaunch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        reason = f"sciflow: {exc_type.__name__}" if exc_type else "sciflow: launch closed"
        try:
            self.stop(reason)
        except SciflowError:
            if exc_type is None:
                raise
            logger.exception("cleanup after %s failed", exc_type.__name__)

    @property
    def tasks(self) -> list[str]:
        """ARNs of every task started, server first."""
        return ([self.server_task] if self.server_task else []) + self.worker_tasks

    def start(self) -> None:
        """Register, start the server, publish it in Cloud Map, start the workers.

        Returns once every task is RUNNING. On any failure it stops what it started.

        Raises:
            TransientError: A task did not reach RUNNING within ``start_timeout_s``, or
                AWS kept throttling.
            SciflowError: A task stopped before RUNNING, ECS refused to place one, or AWS
                refused a call.
            InputError: A definition's environment carries a credential in clear (nothing
                is registered or started).
        """
        if self.definition_arns:
            raise SciflowError("this launch has started already; make a new one to start again")
        refuse_clear_credentials(
            list(self.plan.definitions.values()),
            what=f"ECS launch {self.plan.service_name}",
            api_key_from="the task definition's `secrets`",
            role_from="the task definition's `taskRoleArn`",
        )
        try:
            self._start()
        except BaseException as exc:
            try:
                self.stop(f"sciflow: start failed: {type(exc).__name__}")
            except SciflowError:
                logger.exception("cleanup after a failed start failed")
            raise

    def _start(self) -> None:
        plan = self.plan
        for role, kwargs in plan.definitions.items():
            registered = call(
                self.ecs.register_task_definition,
                f"register task definition {kwargs['family']}",
                **kwargs,
            )
            self.definition_arns[role] = registered["taskDefinition"]["taskDefinitionArn"]
        self.namespace_id = self._namespace()
        self.service_id = call(
            self.discovery.create_service,
            f"create Cloud Map service {plan.service_name}",
            Name=plan.service_name,
            NamespaceId=self.namespace_id,
            CreatorRequestId=plan.service_name,
            DnsConfig={
                "RoutingPolicy": "MULTIVALUE",
                "DnsRecords": [{"Type": "A", "TTL": DNS_TTL_S}],
            },
            Tags=to_aws(plan.tags),
        )["Service"]["Id"]
        self._remember(Launch(kind="cloudmap-service", id=self.service_id, account=self._account,
                              label=plan.service_name))  # fmt: skip
        self._run("server", 1)
        self._wait_running(self.tasks)
        [server] = self.describe(self.tasks)  # the waiter does not hand back its answer
        self.server_ip = private_ip(server)
        self._register_server()
        for start in range(0, plan.worker_count, RUN_TASK_MAX):
            count = min(RUN_TASK_MAX, plan.worker_count - start)
            self._run("worker", count)
        self._wait_running(self.worker_tasks)
        logger.info(
            "server %s at %s:%d (%s), %d workers running",
            task_id(self.server_task),
            self.server_ip,
            plan.port,
            plan.server_host,
            len(self.worker_tasks),
        )

    def _namespace(self) -> str:
        """The id of the private DNS namespace, created if absent (it outlives runs)."""
        plan = self.plan
        kwargs: dict[str, Any] = {}
        while True:
            page = call(self.discovery.list_namespaces, "list Cloud Map namespaces", **kwargs)
            for namespace in page.get("Namespaces", []):
                if namespace["Name"] == plan.namespace and namespace["Type"] == "DNS_PRIVATE":
                    return namespace["Id"]
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        vpc = plan.vpc or self._vpc()
        # Shared by every run: a run id in its tags would make a sweep delete it.
        tags = {k: v for k, v in plan.tags.items() if k != RUN_ID_TAG}
        operation = call(
            self.discovery.create_private_dns_namespace,
            f"create Cloud Map namespace {plan.namespace} in {vpc}",
            Name=plan.namespace,
            Vpc=vpc,
            CreatorRequestId=f"{plan.namespace}-{vpc}",
            Tags=to_aws(tags),
        )["OperationId"]
        return self._operation(operation, f"create namespace {plan.namespace}")["NAMESPACE"]

    def _vpc(self) -> str:
        subnet = self.plan.subnets[0]
        found = call(self.ec2.describe_subnets, f"look up subnet {subnet}", SubnetIds=[subnet])[
            "Subnets"
        ]
        if not found:
            raise InputError(f"subnets: no subnet {subnet} in region {self.plan.region}")
        return found[0]["VpcId"]

    def _operation(self, operation_id: str, doing: str) -> dict[str, str]:
        """Wait for a Cloud Map operation; returns its targets."""
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            operation = call(self.discovery.get_operation, doing, OperationId=operation_id)[
                "Operation"
            ]
            if operation["Status"] == "SUCCESS":
                return operation.get("Targets", {})
            if operation["Status"] == "FAIL":
                raise SciflowError(
                    f"cannot {doing}: Cloud Map operation {operation_id} failed: "
                    f"{operation.get('ErrorCode')} {operation.get('ErrorMessage', '')}"
                )
            if time.monotonic() > deadline:
                raise TransientError(f"cannot {doing}: operation {operation_id} still pending")
            self._sleep(self.poll_s)

    def _run(self, role: str, count: int) -> None:
        """RunTask; the ARNs are kept before any failure is raised, so stop() finds them."""
        plan = self.plan
        response = call(
            self.ecs.run_task,
            f"run {count} {role} task(s) on cluster {plan.cluster}",
            cluster=plan.cluster,
            taskDefinition=self.definition_arns[role],
            count=count,
            launchType="FARGATE",
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": list(plan.subnets),
                    "securityGroups": list(plan.security_groups),
                    "assignPublicIp": "DISABLED",
                }
            },
            startedBy=plan.started_by,
            tags=to_aws(plan.tags, key="key", value="value"),
            enableExecuteCommand=False,
        )
        arns = [task["taskArn"] for task in response.get("tasks", [])]
        for arn in arns:
            self._remember(Launch(kind="ecs-task", id=arn, account=self._account,
                                  cluster=plan.cluster, label=role))  # fmt: skip
        if role == "server":
            self.server_task = arns[0] if arns else None
        else:
            self.worker_tasks += arns
        if response.get("failures") or len(arns) != count:
            reasons = "; ".join(
                f"{f.get('arn', '')} {f.get('reason', '')}" for f in response.get("failures", [])
            )
            raise SciflowError(
                f"ECS started {len(arns)} of {count} {role} task(s): {reasons or 'no reason'}"
            )

    def _remember(self, launch: Launch) -> None:
        if self.record is not None:
            self._recorded[launch.id] = self.record.add(launch)

    def _forget(self, launch_id: str) -> None:
        if self.record is not None and launch_id in self._recorded:
            self.record.done(self._recorded.pop(launch_id))

    def describe(self, arns: Sequence[str]) -> list[dict[str, Any]]:
        """DescribeTasks of ``arns``, 100 a call, in their order."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(arns), DESCRIBE_TASKS_MAX):
            chunk = list(arns[start : start + DESCRIBE_TASKS_MAX])
            response = call(
                self.ecs.describe_tasks,
                f"describe tasks on cluster {self.plan.cluster}",
                cluster=self.plan.cluster,
                tasks=chunk,
            )
            found |= {task["taskArn"]: task for task in response.get("tasks", [])}
        if missing := [a for a in arns if a not in found]:
            raise SciflowError(f"ECS no longer knows tasks {missing[:3]} ({len(missing)})")
        return [found[a] for a in arns]

    def _wait_running(self, arns: Sequence[str]) -> None:
        """boto3's ``tasks_running`` waiter, 100 ids a call; on failure, say which task and why.

        Raises:
            SciflowError: A task stopped before it was RUNNING.
            TransientError: A task was not RUNNING within ``start_timeout_s``.
        """
        from botocore.exceptions import WaiterError

        waiter = self.ecs.get_waiter("tasks_running")
        config = {
            "Delay": self.poll_s,
            "MaxAttempts": max(1, math.ceil(self.start_timeout_s / self.poll_s)),
        }
        try:
            for start in range(0, len(arns), DESCRIBE_TASKS_MAX):
                chunk = list(arns[start : start + DESCRIBE_TASKS_MAX])
                waiter.wait(cluster=self.plan.cluster, tasks=chunk, WaiterConfig=config)
            return
        except WaiterError:
            pass  # a task stopped, or time ran out: described below
        described = self.describe(arns)
        if stopping := [t for t in described if t["lastStatus"] in STOPPING_STATES]:
            task = stopping[0]
            raise SciflowError(
                f"task {task['taskArn']} is {task['lastStatus']} before the launch "
                f"finished: {_reason(task)}; exit codes {_exit_codes(task)}"
            )
        pending = [t for t in described if t["lastStatus"] != "RUNNING"]
        states = ", ".join(f"{task_id(t['taskArn'])} {t['lastStatus']}" for t in pending)
        raise TransientError(
            f"{len(pending)} task(s) not RUNNING after {self.start_timeout_s:.0f} s: {states}"
        )

    def _register_server(self) -> None:
        plan = self.plan
        if not (self.server_task and self.server_ip and self.service_id):
            raise SciflowError("internal: the server is not started")
        operation = call(
            self.discovery.register_instance,
            f"register the server in Cloud Map service {plan.service_name}",
            ServiceId=self.service_id,
            InstanceId=task_id(self.server_task),
            Attributes={"AWS_INSTANCE_IPV4": self.server_ip, "AWS_INSTANCE_PORT": str(plan.port)},
        )["OperationId"]
        self._instance_registered = True
        self._operation(operation, f"register instance in {plan.service_name}")
        found = call(
            self.discovery.discover_instances,
            f"discover {plan.server_host}",
            NamespaceName=plan.namespace,
            ServiceName=plan.service_name,
        )["Instances"]
        if not any(i["Attributes"].get("AWS_INSTANCE_IPV4") == self.server_ip for i in found):
            raise SciflowError(
                f"{plan.server_host} does not list the server ({self.server_ip}) after "
                "registering it; workers could not find it"
            )

    def wait(
        self,
        timeout_s: float | None = None,
        on_line: Callable[[str, str], None] | None = None,
    ) -> LaunchOutcome:
        """Poll until every task is STOPPED, handing on the tasks' output as it arrives.

        Args:
            timeout_s: Most seconds to wait; no limit if ``None``.
            on_line: Called with (task label: ``server``, ``worker-1``, ...; line) for each
                line the tasks wrote to CloudWatch Logs (awslogs), each once, in order per
                task, the last ones after the tasks stopped. Not read if ``None``.

        Returns:
            Every task's exit code and reason; failed workers are logged.

        Raises:
            TransientError: Tasks still running after ``timeout_s``.
        """
        if not self.server_task:
            raise SciflowError("nothing to wait for: start() has not started the server")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        stopping = False
        output = _TaskOutput(self.logs, self._log_streams()) if on_line else None
        while True:
            described = self.describe(self.tasks)
            if output is not None and on_line is not None:
                output.read(on_line)  # after the describe: all of a STOPPED task's lines
            if all(t["lastStatus"] == "STOPPED" for t in described):
                break
            failed = [t for t in described if _failed(t)]
            if failed and not stopping:
                stopping = True
                # The server would wait for the lost worker's gradients until its group
                # timeout; the run cannot finish as asked, so stop it now.
                self.stop(f"sciflow: task {task_id(failed[0]['taskArn'])} failed")
            if deadline is not None and time.monotonic() > deadline:
                running = sum(t["lastStatus"] != "STOPPED" for t in described)
                raise TransientError(f"{running} task(s) still running after {timeout_s} s")
            self._sleep(self.poll_s)
        self._stopped |= set(self.tasks)
        for arn in self.tasks:
            self._forget(arn)
        outcome = LaunchOutcome(
            tuple(
                TaskOutcome(
                    task_arn=t["taskArn"],
                    role="server" if t["taskArn"] == self.server_task else "worker",
                    exit_code=next(iter(_exit_codes(t)), None),
                    reason=_reason(t),
                )
                for t in described
            )
        )
        for worker in outcome.failed_workers:
            logger.warning(
                "worker %s exited %s: %s", worker.task_arn, worker.exit_code, worker.reason
            )
        return outcome

    def _log_streams(self) -> dict[tuple[str, str], str]:
        """``(log group, stream)`` -> label of every task that logs with awslogs."""
        labels = [("server", self.server_task)] if self.server_task else []
        labels += [(f"worker-{i}", arn) for i, arn in enumerate(self.worker_tasks, 1)]
        streams = {}
        for label, arn in labels:
            where = self.plan.log_stream("server" if label == "server" else "worker", arn)
            if where is not None:
                streams[where] = label
        return streams

    def stop(self, reason: str = "sciflow: stopped") -> None:
        """Stop every task started and remove the run's Cloud Map service; idempotent.

        Tasks already STOPPED are left alone (StopTask would overwrite their reason).

        Raises:
            SciflowError: A call failed; the others were still attempted.
        """
        errors: list[SciflowError] = []
        live = [arn for arn in self.tasks if arn not in self._stopped]
        if live:
            logger.info("stopping %d task(s) of %s: %s", len(live), self.plan.service_name, reason)
            try:
                described = self.describe(live)
            except SciflowError as exc:  # stop them all blind rather than none
                errors.append(exc)
                described = [{"taskArn": a, "lastStatus": "UNKNOWN"} for a in live]
            for task in described:
                if task["lastStatus"] != "STOPPED":
                    try:
                        call(
                            self.ecs.stop_task,
                            f"stop task {task['taskArn']}",
                            cluster=self.plan.cluster,
                            task=task["taskArn"],
                            reason=reason[:255],
                        )
                    except SciflowError as exc:
                        errors.append(exc)
                        continue
                self._stopped.add(task["taskArn"])
                self._forget(task["taskArn"])
        try:
            self._remove_service()
        except SciflowError as exc:
            errors.append(exc)
        if errors:
            raise errors[0]

    def _remove_service(self) -> None:
        if self.service_id and self._instance_registered and self.server_task:
            try:
                operation = call(
                    self.discovery.deregister_instance,
                    f"deregister the server from {self.plan.service_name}",
                    ServiceId=self.service_id,
                    InstanceId=task_id(self.server_task),
                )["OperationId"]
                # DeleteService refuses a service that still has instances.
                self._operation(operation, f"deregister instance from {self.plan.service_name}")
            except SciflowError as exc:
                if error_code(exc) not in ("InstanceNotFound", "ServiceNotFound"):
                    raise
            self._instance_registered = False
        if self.service_id:
            try:
                call(
                    self.discovery.delete_service,
                    f"delete Cloud Map service {self.plan.service_name}",
                    Id=self.service_id,
                )
            except SciflowError as exc:
                if error_code(exc) != "ServiceNotFound":
                    raise
            self._forget(self.service_id)
            self.service_id = None


class _TaskOutput:
    """New CloudWatch lines of the tasks' streams, read in groups of 100 streams a call."""

    def __init__(self, logs: Any, streams: Mapping[tuple[str, str], str]) -> None:
        self.logs, self.streams = logs, dict(streams)
        by_group: dict[str, list[str]] = {}
        for group, stream in self.streams:
            by_group.setdefault(group, []).append(stream)
        self.chunks = [
            (group, names[start : start + LOG_STREAMS_MAX])
            for group, names in by_group.items()
            for start in range(0, len(names), LOG_STREAMS_MAX)
        ]
        self.cursors = [LogCursor() for _ in self.chunks]

    def read(self, on_line: Callable[[str, str], None]) -> None:
        """Hand every line not read yet to ``on_line``, with its task's label."""
        for i, (group, names) in enumerate(self.chunks):
            events, self.cursors[i] = read_logs(self.logs, group, names, self.cursors[i])
            for event in events:
                on_line(self.streams.get((group, event.stream), event.stream), event.message)


def _failed(task: Mapping[str, Any]) -> bool:
    """Whether a task stopped with a non-zero (or no) exit code."""
    return task["lastStatus"] == "STOPPED" and any(code != 0 for code in _exit_codes(task))


def private_ip(task: Mapping[str, Any]) -> str:
    """The private IPv4 address of an ``awsvpc`` task, from DescribeTasks."""
    for attachment in task.get("attachments", []):
        if attachment.get("type") == "ElasticNetworkInterface":
            for detail in attachment.get("details", []):
                if detail.get("name") == "privateIPv4Address" and detail.get("value"):
                    return str(detail["value"])
    raise SciflowError(
        f"server task {task['taskArn']} is RUNNING but has no privateIPv4Address in its "
        "network interface attachment; is the task definition's networkMode awsvpc?"
    )


def _exit_codes(task: Mapping[str, Any]) -> list[int | None]:
    return [c.get("exitCode") for c in task.get("containers", [])]


def _reason(task: Mapping[str, Any]) -> str:
    reason = task.get("stoppedReason") or ""
    if code := task.get("stopCode"):
        reason = f"{code}: {reason}" if reason else code
    return reason or "no reason given"
