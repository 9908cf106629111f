"""moto's ECS, made to run its tasks: each task's container is a process in a namespace.

Installed on the moto backends of this process (``ThreadedMotoServer`` serves them):

- RunTask: the task gets an address from its subnet inside the stand-in's block (moto would
  pick any ``10.x``), then starts PROVISIONING; a thread makes its namespace, resolves its
  ``secrets`` from Secrets Manager or SSM, and starts its essential container's command
  (task definition, then the overrides) with the image's environment under the task's own.
- moto's state manager no longer moves tasks (``ecs::task`` is pinned): the stand-in does,
  PROVISIONING -> PENDING -> RUNNING once the process runs, STOPPED once it exits, with the
  exit code, ``stopCode`` and ``stoppedReason`` ECS would report.
- Output goes to the task definition's ``awslogs`` group, stream
  ``<prefix>/<container>/<task id>``, as the awslogs driver writes it; a missing group fails
  the task the way ECS does, unless ``awslogs-create-group`` is ``true``.
- A task stays PROVISIONING while ``held_provisioning()`` is entered (as with no free
  capacity), then goes on.
- StopTask stops the process (SIGTERM, then SIGKILL) and the task ends STOPPED with the
  caller's reason; a task stopped before its process started ends STOPPED without starting it.
- Each state change is posted, as EventBridge would, to the SQS queue ``events_queue`` when
  that queue exists (prefect-aws's ECS observer reads it).
- Cloud Map instances registered in moto resolve, as ``<service>.<namespace>``, in every
  task's hosts file.
"""

from __future__ import annotations

import inspect
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.standin.containers import Container
from tests.standin.network import Host, Network

ACCOUNT = "123456789012"
# The queue prefect-aws's ECS observer reads by default.
EVENTS_QUEUE = "prefect-ecs-tasks-events"
STATES_TO_RUNNING = ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING"]
PINNED = 10**9  # DescribeTasks calls before moto's state manager would move a task


class EcsStandIn:
    """Runs what moto's ECS is asked to run, while installed (``with stand_in.installed():``)."""

    def __init__(
        self, network: Network, image_env: dict[str, str], logs_dir: Path, region: str
    ) -> None:
        self.network = network
        self.image_env = image_env
        self.logs_dir = logs_dir
        self.region = region
        self.events_queue = EVENTS_QUEUE
        self.containers: dict[str, Container] = {}  # task ARN -> its running container
        self.hosts: dict[str, Host] = {}
        self.exits: dict[str, int] = {}  # task ARN -> exit status, once ended
        # task ARN -> the command it ran: its task definition may be gone with its run.
        self.commands: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        self._starters: list[threading.Thread] = []
        self._next_address = threading.local()
        self._provisioning = threading.Event()  # cleared: tasks wait in PROVISIONING
        self._provisioning.set()
        self._stop_requested: set[str] = set()  # task ARNs stopped before their process began

    # ---- moto backends -------------------------------------------------------------------------

    @property
    def ecs(self) -> Any:
        from moto.ecs.models import ecs_backends

        return ecs_backends[ACCOUNT][self.region]

    def task(self, arn: str) -> Any:
        for tasks in self.ecs.tasks.values():
            if arn in tasks:
                return tasks[arn]
        raise KeyError(arn)

    @contextmanager
    def installed(self) -> Iterator[EcsStandIn]:
        """Patch moto's ECS and Cloud Map in this process; stop every container after."""
        import moto.ecs.models as ecs_models
        import moto.servicediscovery.models as sd_models
        from moto.moto_api import state_manager

        backend_class = ecs_models.EC2ContainerServiceBackend
        patched = {
            (backend_class, "run_task"): self._wrap_run_task(backend_class.run_task),
            (backend_class, "stop_task"): self._wrap_stop_task(backend_class.stop_task),
            (ecs_models.Task, "__init__"): self._wrap_task_init(ecs_models.Task.__init__),
            (ecs_models, "random_private_ip"): self._private_ip,
            (backend_class, "_calculate_task_resource_requirements"): staticmethod(
                _fargate_resources(backend_class._calculate_task_resource_requirements)
            ),
        }
        sd_class = sd_models.ServiceDiscoveryBackend
        for name in ("register_instance", "deregister_instance"):
            patched[(sd_class, name)] = self._wrap_cloud_map(getattr(sd_class, name))
        # Raw attributes (a staticmethod stays one when put back).
        originals = {key: inspect.getattr_static(*key) for key in patched}
        for (owner, name), value in patched.items():
            setattr(owner, name, value)
        state_manager.set_transition("ecs::task", {"progression": "manual", "times": PINNED})
        try:
            yield self
        finally:
            for (owner, name), value in originals.items():
                setattr(owner, name, value)
            state_manager.unset_transition("ecs::task")
            self.close()

    @contextmanager
    def held_provisioning(self) -> Iterator[None]:
        """Tasks stay PROVISIONING while this is entered (no free capacity), then go on."""
        self._provisioning.clear()
        try:
            yield
        finally:
            self._provisioning.set()

    def close(self) -> None:
        """Stop every container still running and delete the tasks' namespaces."""
        for thread in list(self._starters):
            thread.join(timeout=60)
        with self._lock:
            running = list(self.containers.items())
        for _, container in running:
            container.stop(grace=2)
        for host in list(self.hosts.values()):
            self.network.remove_host(host)
        self.hosts.clear()

    # ---- patches ----------------------------------------------------------------------

    def _private_ip(self, *_: Any, **__: Any) -> str:
        return self._next_address.value

    def _wrap_task_init(self, original: Any) -> Any:
        stand_in = self

        def init(task: Any, *args: Any, **kwargs: Any) -> None:
            config = kwargs.get("networking_configuration") or {}
            subnets = config.get("awsvpcConfiguration", {}).get("subnets") or []
            if subnets:
                from moto.ec2.models import ec2_backends

                subnet = ec2_backends[ACCOUNT][stand_in.region].get_subnet(subnets[0])
                stand_in._next_address.value = stand_in.network.allocate(subnet.cidr_block)
            original(task, *args, **kwargs)
            task._transitions = list(itertools.pairwise(STATES_TO_RUNNING))
            task._status = "PROVISIONING"

        return init

    def _wrap_run_task(self, original: Any) -> Any:
        stand_in = self

        def run_task(backend: Any, *args: Any, **kwargs: Any) -> Any:
            tasks = original(backend, *args, **kwargs)
            for task in tasks:
                stand_in._post_event(task)
                starter = threading.Thread(
                    target=stand_in._start, args=(task,), name=f"start {task.id}", daemon=True
                )
                stand_in._starters.append(starter)
                starter.start()
            return tasks

        return run_task

    def _wrap_stop_task(self, original: Any) -> Any:
        stand_in = self

        def stop_task(backend: Any, cluster: str, task_str: str, reason: str) -> Any:
            task = original(backend, cluster, task_str, reason)
            stand_in._stop(task, reason)
            return task

        return stop_task

    def _wrap_cloud_map(self, original: Any) -> Any:
        stand_in = self

        def call(backend: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(backend, *args, **kwargs)
            stand_in._publish_names(backend)
            return result

        return call

    # ---- a task's life ------------------------------------------------------------

    def _start(self, task: Any) -> None:
        try:
            while not self._provisioning.wait(0.05):
                if task.task_arn in self._stop_requested:
                    break
            if self._stopped_before_start(task):
                return
            address = self._address(task)
            host = self.network.add_host(address, f"ip-{address.replace('.', '-')}.ec2.internal")
            self.hosts[task.task_arn] = host
            self._set_status(task, "PENDING")
            argv, env, logs = self._container_spec(task)
            sink = self._log_sink(task, logs)
            self._set_status(task, "ACTIVATING")
            log_path = self.logs_dir / f"ecs-{task.id}.log"
            # Held until RUNNING is set: a container that exits at once ends after it started.
            with self._lock:
                if task.task_arn in self._stop_requested:
                    self._finish(task, None, "UserInitiated", task.stopped_reason)
                    return
                self.containers[task.task_arn] = Container(
                    host,
                    argv,
                    {**self.image_env, **env},
                    log_path,
                    sink,
                    lambda code: self._ended(task, code),
                )
                task.started_at = datetime.now(UTC)
                self._set_status(task, "RUNNING")
        except TaskCannotStart as exc:
            self._finish(task, None, "TaskFailedToStart", str(exc))
        except Exception as exc:  # the stand-in's own failure: the task fails, loudly
            self._finish(task, None, "TaskFailedToStart", f"stand-in: {exc!r}")

    def _stopped_before_start(self, task: Any) -> bool:
        with self._lock:
            if task.task_arn not in self._stop_requested:
                return False
        self._finish(task, None, "UserInitiated", task.stopped_reason)
        return True

    def _address(self, task: Any) -> str:
        for attachment in task.attachments:
            for detail in attachment["details"]:
                if detail["name"] == "privateIPv4Address":
                    return detail["value"]
        raise TaskCannotStart("the stand-in runs awsvpc tasks only (no private address)")

    def _container_spec(self, task: Any) -> tuple[list[str], dict[str, str], dict[str, str]]:
        definition = self.ecs.describe_task_definition(task.task_definition_arn)
        containers = definition.container_definitions
        essential = [c for c in containers if c.get("essential", True)]
        if len(essential) != 1:
            raise TaskCannotStart(
                f"the stand-in runs one essential container, not {len(essential)}"
            )
        container = essential[0]
        override = next(
            (
                o
                for o in task.overrides.get("containerOverrides", [])
                if o.get("name") == container.get("name")
            ),
            {},
        )
        command = override.get("command") or container.get("command") or []
        argv = [*(container.get("entryPoint") or []), *command]
        if not argv:
            raise TaskCannotStart(f"container {container.get('name')!r} has no command")
        self.commands[task.task_arn] = argv
        env = {e["name"]: e["value"] for e in container.get("environment") or []}
        env.update({e["name"]: e["value"] for e in override.get("environment") or []})
        for secret in container.get("secrets") or []:
            env[secret["name"]] = self._secret(secret["valueFrom"])
        log_options = (container.get("logConfiguration") or {}).get("options") or {}
        logs = {
            "group": log_options.get("awslogs-group", ""),
            "stream": "/".join(
                [log_options.get("awslogs-stream-prefix", ""), container.get("name"), task.id]
            ),
            "create": log_options.get("awslogs-create-group", "false"),
        }
        return argv, env, logs

    def _secret(self, value_from: str) -> str:
        """A secret's value, as the ECS agent reads it with the task's execution role."""
        if ":ssm:" in value_from or not value_from.startswith("arn:"):
            from moto.ssm.models import ssm_backends

            name = (
                value_from.split(":parameter", 1)[-1]
                if value_from.startswith("arn:")
                else value_from
            )
            parameter = ssm_backends[ACCOUNT][self.region].get_parameter(name)
            if parameter is None:
                raise TaskCannotStart(f"ResourceInitializationError: no SSM parameter {name}")
            return parameter.value
        from moto.secretsmanager.models import secretsmanager_backends

        # arn:aws:secretsmanager:region:account:secret:name[:json-key:version-stage:version-id]
        parts = value_from.split(":")
        arn, json_key = ":".join(parts[:7]), (parts[7] if len(parts) > 7 else "")
        try:
            value = secretsmanager_backends[ACCOUNT][self.region].get_secret_value(arn, None, None)
        except Exception as exc:
            raise TaskCannotStart(f"ResourceInitializationError: secret {arn}: {exc!r}") from exc
        text = value["SecretString"]
        return json.loads(text)[json_key] if json_key else text

    def _log_sink(self, task: Any, logs: dict[str, str]) -> Any:
        if not logs["group"]:
            return lambda line: None
        from moto.logs.models import logs_backends

        backend = logs_backends[ACCOUNT][self.region]
        if logs["group"] not in backend.groups:
            if logs["create"] != "true":
                raise TaskCannotStart(
                    "ResourceInitializationError: failed to validate logger args: "
                    f"The specified log group does not exist: {logs['group']}"
                )
            backend.create_log_group(logs["group"], {})
        if logs["stream"] not in backend.groups[logs["group"]].streams:
            backend.create_log_stream(logs["group"], logs["stream"])

        def sink(line: str) -> None:
            event = {"timestamp": int(time.time() * 1000), "message": line}
            backend.put_log_events(logs["group"], logs["stream"], [event])

        return sink

    def _stop(self, task: Any, reason: str) -> None:
        with self._lock:
            task.stopped_reason = reason
            task.stop_code = "UserInitiated"
            container = self.containers.get(task.task_arn)
            if container is None:  # not started yet: _start ends it without starting it
                self._stop_requested.add(task.task_arn)
        if container is not None:
            container.stop()

    def _ended(self, task: Any, code: int) -> None:
        with self._lock:
            container = self.containers.pop(task.task_arn, None)
        stopped = container is not None and container.stopping
        if stopped:
            self._finish(task, code, "UserInitiated", task.stopped_reason or "Task stopped by user")
        else:
            self._finish(
                task, code, "EssentialContainerExited", "Essential container in task exited"
            )

    def _finish(self, task: Any, code: int | None, stop_code: str, reason: str) -> None:
        if code is not None:
            self.exits[task.task_arn] = code
        container = task.containers[0]
        container.exitCode = code
        container.exit_code = code
        container.last_status = "STOPPED"
        task.stop_code = stop_code
        task.stopped_reason = reason
        task.stopped_at = datetime.now(UTC)
        task.desired_status = "STOPPED"
        self._set_status(task, "STOPPED")
        host = self.hosts.pop(task.task_arn, None)
        if host is not None:
            self.network.remove_host(host)

    def _set_status(self, task: Any, status: str) -> None:
        task._status = status
        self._post_event(task)

    # ---- what the rest of AWS sees -------------------------------------------------------------

    def _post_event(self, task: Any) -> None:
        from moto.sqs.models import sqs_backends

        sqs = sqs_backends[ACCOUNT][self.region]
        if self.events_queue not in sqs.queues:
            return
        container = task.containers[0]
        detail = {
            "taskArn": task.task_arn,
            "clusterArn": task.cluster_arn,
            "taskDefinitionArn": task.task_definition_arn,
            "lastStatus": task._status,
            "desiredStatus": task.desired_status,
            "group": task.group,
            "startedBy": task.started_by,
            "stopCode": getattr(task, "stop_code", None),
            "stoppedReason": task.stopped_reason,
            "containers": [
                {"name": container.name, "exitCode": getattr(container, "exit_code", None)}
            ],
        }
        event = {
            "version": "0",
            "id": str(uuid.uuid4()),  # EventBridge's ids are UUIDs; prefect-aws parses them
            "detail-type": "ECS Task State Change",
            "source": "aws.ecs",
            "account": ACCOUNT,
            "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self.region,
            "resources": [task.task_arn],
            "detail": detail,
        }
        sqs.send_message(self.events_queue, json.dumps(event))

    def _publish_names(self, backend: Any) -> None:
        names: dict[str, str] = {}
        for service in backend.services.values():
            namespace = backend.namespaces.get(service.namespace_id)
            if namespace is None:
                continue
            for instance in service.instances:
                address = instance.attributes.get("AWS_INSTANCE_IPV4")
                if address:
                    names[f"{service.name}.{namespace.name}"] = address
        self.network.set_names(names)


def _fargate_resources(original: Any) -> Any:
    """moto's RunTask sums container ``memory``, which Fargate definitions may leave to the task.

    A container without ``memory`` or ``memoryReservation`` (prefect-aws's ECS worker registers
    such) made moto's RunTask fail with a TypeError; it counts as 0 here, as the task-level
    ``memory`` bounds it on Fargate.
    """

    def calculate(task_definition: Any) -> Any:
        containers = task_definition.container_definitions
        missing = [
            c
            for c in containers
            if not {"memory", "memoryReservation", "Memory", "MemoryReservation"} & c.keys()
        ]
        for container in missing:
            container["memoryReservation"] = 0
        try:
            return original(task_definition)
        finally:
            for container in missing:
                del container["memoryReservation"]

    return calculate


class TaskCannotStart(Exception):
    """Why ECS would stop a task before its container ran (its ``stoppedReason``)."""
