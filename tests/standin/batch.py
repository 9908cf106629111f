"""moto's Batch, made to run its jobs: each node's container is a process in a namespace.

moto without Docker finishes a job inside SubmitJob and never reads ``nodeOverrides``; with
Docker it needs a daemon. While installed, the stand-in answers SubmitJob itself (in this
process, which serves moto through ``ThreadedMotoServer``):

- the job is a moto ``Job`` in moto's backend (DescribeJobs, ListJobs, tags work as before),
  SUBMITTED at once; a thread moves it PENDING -> RUNNABLE -> STARTING -> RUNNING (it
  stays RUNNABLE while ``held_runnable()`` is entered, as with no free capacity);
- a multi-node parallel job gets its node jobs ``<jobId>#<n>`` (DescribeJobs finds them,
  ListJobs on the queue does not, as on AWS), each with the container of the node range
  holding ``n`` (job definition, then ``nodeOverrides``);
- each node (or the one container) gets an address from the compute environment's subnet
  when that subnet is inside the stand-in's block, else from ``DEFAULT_SUBNET`` of the block,
  a namespace holding it, and its command run with the image's environment under the
  definition's, the overrides', the resolved ``secrets`` and the ``AWS_BATCH_*`` variables
  Batch sets (``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS`` on the other nodes);
- output goes to CloudWatch Logs as Batch's awslogs driver writes it: group
  ``/aws/batch/job`` (or the definition's ``awslogs-group``), stream
  ``<jobDefinitionName or awslogs-stream-prefix>/default/<ECS task id>``;
- a container's exit status ends its node job (SUCCEEDED on 0, else FAILED, with
  ``exitCode`` and ``statusReason``); the main node's end ends the job and stops the others;
- TerminateJob stops every process (SIGTERM, then SIGKILL) and the job ends FAILED with the
  caller's reason; CancelJob does so for a job that has not started and ignores one that has;
- a job's ``timeout`` (``attemptDurationSeconds`` of SubmitJob, else of the job definition)
  runs from the start of its containers; a job still running then is stopped as by
  TerminateJob and ends FAILED with Batch's reason ``TIMEOUT_REASON``. Unlike Batch, the
  stand-in takes timeouts under 60 s, so a test need not wait a minute.

Not modelled: ``dependsOn``, array jobs and retry strategies (SubmitJob refuses the first two;
a failed job is not retried), resource limits, EFS volumes.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.standin.containers import Container
from tests.standin.ecs import EcsStandIn, TaskCannotStart
from tests.standin.network import Host, Network

ACCOUNT = "123456789012"
DEFAULT_LOG_GROUP = "/aws/batch/job"
# The /24 of the block (by index) nodes get addresses from when the compute environment's
# subnets lie outside the block (moto's usual 10.x VPCs).
DEFAULT_SUBNET = 14
STATES_TO_RUNNING = ("PENDING", "RUNNABLE", "STARTING")
EXITED_REASON = "Essential container in task exited"
# Why the other nodes of a multi-node job stop: Batch ends the job when its main node exits.
MAIN_EXITED = "the main node exited"
# Batch's statusReason of a job stopped at its attempt timeout.
TIMEOUT_REASON = "Job attempt duration exceeded timeout"
SUBMIT_PARAMETERS = (
    "jobName",
    "jobQueue",
    "jobDefinition",
    "containerOverrides",
    "nodeOverrides",
    "parameters",
    "timeout",
    "tags",
    "dependsOn",
    "arrayProperties",
)


def _in_range(target: str, index: int, count: int) -> bool:
    """Whether node ``index`` is in a ``targetNodes`` range (``"2"``, ``"0:0"``, ``"1:"``)."""
    start, sep, end = target.partition(":")
    first = int(start) if start else 0
    last = first if not sep else (int(end) if end else count - 1)
    return first <= index <= last


def _docker_status(code: int) -> int:
    """A process's return code as Docker reports a container's: 128 + signal when killed."""
    return 128 - code if code < 0 else code


def _find_subnet(ec2: Any, subnet_id: str) -> Any:
    """moto's subnet ``subnet_id``, or None (a compute environment may name a deleted one)."""
    for subnets in ec2.subnets.values():
        if subnet_id in subnets:
            return subnets[subnet_id]
    return None


def _environment(entries: list[dict[str, str]] | None) -> dict[str, str]:
    return {e["name"]: e["value"] for e in entries or []}


class BatchStandIn:
    """Runs what moto's Batch is asked to run, while installed (``with stand_in.installed():``)."""

    def __init__(
        self, network: Network, image_env: dict[str, str], logs_dir: Path, region: str
    ) -> None:
        self.network = network
        self.image_env = image_env
        self.logs_dir = logs_dir
        self.region = region
        self.jobs: dict[str, Any] = {}  # job id -> the stand-in's moto Job (parents, singles)
        self.containers: dict[str, Container] = {}  # node job id -> its running container
        self.hosts: dict[str, Host] = {}  # node job id -> its namespace
        self.exits: dict[str, int] = {}  # node job id -> Docker-style exit status, once ended
        self._lock = threading.RLock()
        self._runners: list[threading.Thread] = []
        self._timeouts: list[threading.Timer] = []
        self._admitting = threading.Event()  # cleared: jobs wait in RUNNABLE
        self._admitting.set()

    # ---- moto backends -------------------------------------------------------------------------

    @property
    def batch(self) -> Any:
        from moto.batch.models import batch_backends

        return batch_backends[ACCOUNT][self.region]

    def node_jobs(self, job_id: str) -> list[Any]:
        """The node jobs of a multi-node job, or the job itself for a single container."""
        job = self.jobs[job_id]
        return job.standin_nodes or [job]

    @contextmanager
    def installed(self) -> Iterator[BatchStandIn]:
        """Patch moto's Batch in this process; stop every container after."""
        import moto.batch.models as batch_models
        from moto.batch.responses import BatchResponse

        backend_class = batch_models.BatchBackend
        patched = {
            (BatchResponse, "submitjob"): self._wrap_submit(),
            (backend_class, "terminate_job"): self._wrap_terminate(backend_class.terminate_job),
            (backend_class, "cancel_job"): self._wrap_cancel(backend_class.cancel_job),
            (batch_models.JobDefinition, "describe"): _definition_with_nodes(
                batch_models.JobDefinition.describe
            ),
        }
        originals = {key: getattr(*key) for key in patched}
        for (owner, name), value in patched.items():
            setattr(owner, name, value)
        try:
            yield self
        finally:
            for (owner, name), value in originals.items():
                setattr(owner, name, value)
            self.close()

    @contextmanager
    def held_runnable(self) -> Iterator[BatchStandIn]:
        """Jobs stay RUNNABLE while this is entered (no free capacity), then go on."""
        self._admitting.clear()
        try:
            yield self
        finally:
            self._admitting.set()

    def close(self) -> None:
        """Stop every container still running and delete the nodes' namespaces."""
        with self._lock:
            for job in self.jobs.values():
                job.standin_stopping = job.standin_stopping or "stand-in closed"
        for timer in self._timeouts:
            timer.cancel()
        for thread in list(self._runners):
            thread.join(timeout=60)
        with self._lock:
            running = list(self.containers.values())
        for container in running:
            container.stop(grace=2)
        for host in list(self.hosts.values()):
            self.network.remove_host(host)
        self.hosts.clear()

    # ---- patches --------------------------------------------------------------------------------

    def _wrap_submit(self) -> Any:
        stand_in = self

        # A plain function: moto dispatches only to functions of the response class.
        def submitjob(response: Any) -> str:
            params = {name: response._get_param(name) for name in SUBMIT_PARAMETERS}
            job = stand_in.submit(params)
            return json.dumps({"jobId": job.job_id, "jobName": job.job_name, "jobArn": job.arn})

        return submitjob

    def _wrap_terminate(self, original: Any) -> Any:
        stand_in = self

        def terminate_job(backend: Any, job_id: str, reason: str) -> None:
            parent = job_id.partition("#")[0]
            if parent not in stand_in.jobs or not reason:
                return original(backend, job_id, reason)
            stand_in.stop(parent, reason, started_too=True)

        return terminate_job

    def _wrap_cancel(self, original: Any) -> Any:
        stand_in = self

        def cancel_job(backend: Any, job_id: str, reason: str) -> None:
            parent = job_id.partition("#")[0]
            if parent not in stand_in.jobs or not reason:
                return original(backend, job_id, reason)
            stand_in.stop(parent, reason, started_too=False)

        return cancel_job

    # ---- submission ------------------------------------------------------------------------------

    def submit(self, params: dict[str, Any]) -> Any:
        """SubmitJob: the job in moto's backend, SUBMITTED, and a thread that runs it."""
        from moto.batch.exceptions import ClientException
        from moto.batch.models import JOB_NAME_REGEX

        backend = self.batch
        name = params["jobName"] or ""
        if JOB_NAME_REGEX.match(name) is None:
            raise ClientException("Job name should match valid pattern")
        definition = backend.get_job_definition(params["jobDefinition"])
        if definition is None:
            raise ClientException(f"Job definition {params['jobDefinition']} does not exist")
        queue = backend.get_job_queue(params["jobQueue"])
        if queue is None:
            raise ClientException(f"Job queue {params['jobQueue']} does not exist")
        if params["dependsOn"] or params["arrayProperties"]:
            raise ClientException("the Batch stand-in runs neither dependsOn nor array jobs")
        if definition.type == "multinode" and params["containerOverrides"]:
            raise ClientException("a multi-node job takes nodeOverrides, not containerOverrides")
        job = self._job(backend, definition, queue, params, params["containerOverrides"])
        job.standin_nodes = []
        if definition.type == "multinode":
            job.standin_nodes = self._node_jobs(backend, job, params)
        elif params["nodeOverrides"]:
            raise ClientException("nodeOverrides are for multi-node jobs only")
        with self._lock:
            self.jobs[job.job_id] = job
        runner = threading.Thread(
            target=self._run, args=(job,), name=f"batch {job.job_id}", daemon=True
        )
        self._runners.append(runner)
        runner.start()
        return job

    def _job(
        self,
        backend: Any,
        definition: Any,
        queue: Any,
        params: dict[str, Any],
        container_overrides: dict[str, Any] | None,
        job_id: str | None = None,
    ) -> Any:
        job = _job_class()(
            params["jobName"],
            definition,
            queue,
            backend,
            log_backend=backend.logs_backend,
            container_overrides=container_overrides,
            eks_properties_override=None,
            depends_on=None,
            parameters=params["parameters"],
            all_jobs=backend._jobs,
            timeout=params["timeout"],
            array_properties={},
            provided_job_id=job_id,
            tags=params["tags"],
        )
        job._transitions = []  # only the stand-in moves it
        job.status = "SUBMITTED"
        job.standin_region = self.region
        backend._jobs[job.job_id] = job
        return job

    def _node_jobs(self, backend: Any, job: Any, params: dict[str, Any]) -> list[Any]:
        definition = job.job_definition
        properties = definition.node_properties
        overrides = params["nodeOverrides"] or {}
        count = int(overrides.get("numNodes") or properties["numNodes"])
        main = int(properties.get("mainNode", 0))
        job.standin_shape = {"numNodes": count, "mainNode": main}
        nodes = []
        for index in range(count):
            ranges = [
                r for r in properties["nodeRangeProperties"]
                if _in_range(r["targetNodes"], index, count)
            ]  # fmt: skip
            if not ranges:
                from moto.batch.exceptions import ClientException

                raise ClientException(f"node {index} of {count} is in no node range")
            node_overrides = [
                o.get("containerOverrides") or {}
                for o in overrides.get("nodePropertyOverrides") or []
                if _in_range(o["targetNodes"], index, count)
            ]
            node = self._job(
                backend,
                definition,
                job.job_queue,
                {**params, "tags": params["tags"]},
                node_overrides[0] if node_overrides else {},
                job_id=f"{job.job_id}#{index}",
            )
            job.job_queue.jobs.remove(node)  # ListJobs on a queue shows the parent only
            node.standin_container = ranges[0]["container"]
            node.standin_node = {"nodeIndex": index, "isMainNode": index == main}
            node.standin_shape = job.standin_shape
            nodes.append(node)
        return nodes

    # ---- a job's life ---------------------------------------------------------------------------

    def _run(self, job: Any) -> None:
        nodes = job.standin_nodes or [job]
        for status in STATES_TO_RUNNING:
            with self._lock:
                if job.standin_stopping:
                    return
                for one in {id(n): n for n in [job, *nodes]}.values():
                    one.status = status
            time.sleep(0.05)
            while status == "RUNNABLE" and not self._admitting.wait(0.05):
                if job.standin_stopping:  # terminated or cancelled while it waited
                    return
        main = next((n for n in nodes if n.standin_node.get("isMainNode", True)), nodes[0])
        try:
            specs = {n.job_id: self._container_spec(n) for n in nodes}
            subnet = self._subnet(job)
            addresses = {n.job_id: self.network.allocate(subnet) for n in nodes}
        except Exception as exc:
            reason = str(exc) if isinstance(exc, TaskCannotStart) else f"stand-in: {exc!r}"
            for node in nodes:
                self._node_ended(job, node, None, reason)
            return
        for node in [main, *[n for n in nodes if n is not main]]:  # the main node first
            argv, env, logs = specs[node.job_id]
            address = addresses[node.job_id]
            env.update(self._batch_variables(job, node, addresses[main.job_id]))
            try:
                host = self.network.add_host(
                    address, f"ip-{address.replace('.', '-')}.ec2.internal"
                )
                sink = self._log_sink(logs)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, TaskCannotStart) else f"stand-in: {exc!r}"
                self._node_ended(job, node, None, reason)
                continue
            with self._lock:
                if job.standin_stopping:  # terminated while this node was being made
                    self.network.remove_host(host)
                    self._node_ended(job, node, None, job.standin_stopping)
                    continue
                self.hosts[node.job_id] = host
                node.standin_address = address
                node.standin_task = uuid.uuid4().hex
                node.log_stream_name = f"{logs['prefix']}/default/{node.standin_task}"
                node.standin_log_group = logs["group"]
                log_path = self.logs_dir / f"batch-{node.job_id.replace('#', '-')}.log"
                self.containers[node.job_id] = Container(
                    host,
                    argv,
                    {**self.image_env, **env},
                    log_path,
                    sink(node.log_stream_name),
                    lambda code, node=node: self._node_ended(job, node, code, None),
                )
                node.job_started_at = datetime.now()
                node.status = "RUNNING"
                if node is main or not job.standin_nodes:
                    job.job_started_at = node.job_started_at
                    job.status = "RUNNING"
        if seconds := job._get_attempt_duration():
            timer = threading.Timer(seconds, self.stop, (job.job_id, TIMEOUT_REASON, True))
            timer.daemon = True
            with self._lock:
                self._timeouts.append(timer)
            timer.start()

    def _container_spec(self, node: Any) -> tuple[list[str], dict[str, str], dict[str, str]]:
        """argv, environment (less Batch's variables) and log settings of one node's container."""
        container = getattr(node, "standin_container", None)
        if container is None:
            container = node.job_definition.container_properties or {}
        overrides = node.container_overrides or {}
        command = overrides.get("command") or container.get("command") or []
        argv = node._add_parameters_to_command(command) if command else []
        if not argv:
            raise TaskCannotStart(
                "CannotStartContainerError: no command in the job definition or the overrides "
                "(the stand-in's image has no default command)"
            )
        env = _environment(container.get("environment"))
        env.update(_environment(overrides.get("environment")))
        secrets = EcsStandIn(self.network, {}, self.logs_dir, self.region)
        for secret in container.get("secrets") or []:
            env[secret["name"]] = secrets._secret(secret["valueFrom"])  # as ECS's agent reads it
        options = (container.get("logConfiguration") or {}).get("options") or {}
        logs = {
            "group": options.get("awslogs-group", DEFAULT_LOG_GROUP),
            "prefix": options.get("awslogs-stream-prefix", node.job_definition.name),
            "create": options.get("awslogs-create-group", "false"),
        }
        return argv, env, logs

    def _batch_variables(self, job: Any, node: Any, main_address: str) -> dict[str, str]:
        queue = job.job_queue
        variables = {
            "AWS_BATCH_JOB_ID": node.job_id,
            "AWS_BATCH_JOB_ATTEMPT": "1",
            "AWS_BATCH_JQ_NAME": queue.name,
        }
        environments = queue.env_order_json or []
        if environments:
            first = sorted(environments, key=lambda e: e.get("order", 0))[0]
            variables["AWS_BATCH_CE_NAME"] = first["computeEnvironment"].rsplit("/", 1)[-1]
        if job.standin_nodes:
            variables.update(
                {
                    "AWS_BATCH_JOB_NODE_INDEX": str(node.standin_node["nodeIndex"]),
                    "AWS_BATCH_JOB_NUM_NODES": str(job.standin_shape["numNodes"]),
                    "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(job.standin_shape["mainNode"]),
                }
            )
            if not node.standin_node["isMainNode"]:
                variables["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = main_address
        return variables

    def _subnet(self, job: Any) -> str:
        """The compute environment's first subnet when it is in the block, else the default."""
        from moto.ec2.models import ec2_backends

        ec2 = ec2_backends[ACCOUNT][self.region]
        block = self.network.block
        assert block is not None
        for order in job.job_queue.env_order_json or []:
            environment = self.batch.get_compute_environment(order["computeEnvironment"])
            resources = (environment.compute_resources or {}) if environment else {}
            for subnet_id in resources.get("subnets") or []:
                subnet = _find_subnet(ec2, subnet_id)
                if subnet is not None and ipaddress.ip_network(subnet.cidr_block).subnet_of(block):
                    return subnet.cidr_block
        return str(list(block.subnets(new_prefix=24))[DEFAULT_SUBNET])

    def _log_sink(self, logs: dict[str, str]) -> Any:
        from moto.logs.models import logs_backends

        backend = logs_backends[ACCOUNT][self.region]
        group = logs["group"]
        if group not in backend.groups:
            if group != DEFAULT_LOG_GROUP and logs["create"] != "true":
                raise TaskCannotStart(
                    "CannotStartContainerError: failed to initialize logging driver: "
                    f"The specified log group does not exist: {group}"
                )
            with self._lock:  # the nodes of a job start one by one, but jobs do not
                if group not in backend.groups:
                    backend.create_log_group(group, {})

        def for_stream(stream: str) -> Any:
            backend.create_log_stream(group, stream)

            def sink(line: str) -> None:
                event = {"timestamp": int(time.time() * 1000), "message": line}
                backend.put_log_events(group, stream, [event])

            return sink

        return for_stream

    def stop(self, job_id: str, reason: str, started_too: bool) -> None:
        """TerminateJob (``started_too``) or CancelJob: stop the job's processes, with a reason."""
        with self._lock:
            job = self.jobs[job_id]
            if job.job_stopped or job.standin_stopping:
                return
            if not started_too and job.status not in ("SUBMITTED", "PENDING", "RUNNABLE"):
                return  # CancelJob leaves a started job alone, as Batch does
            job.standin_stopping = reason
            nodes = job.standin_nodes or [job]
            running = [self.containers[n.job_id] for n in nodes if n.job_id in self.containers]
            unstarted = [n for n in nodes if n.job_id not in self.containers and not n.job_stopped]
        for node in unstarted:
            self._node_ended(job, node, None, reason)
        for container in running:
            threading.Thread(target=container.stop, name="stop", daemon=True).start()

    def _node_ended(self, job: Any, node: Any, code: int | None, reason: str | None) -> None:
        """A node's container ended (``code``) or never started (``reason``)."""
        others: list[Container] = []
        with self._lock:
            if node.job_stopped:
                return
            container = self.containers.pop(node.job_id, None)
            status = None if code is None else _docker_status(code)
            if status is not None:
                self.exits[node.job_id] = status
            stopped = job.standin_stopping if container is None or container.stopping else None
            if stopped == MAIN_EXITED:  # stopped with the job: the job's end is its end
                success, node_reason = job.status == "SUCCEEDED", MAIN_EXITED
            elif stopped:  # TerminateJob, CancelJob
                success, node_reason = False, stopped
            else:
                success, node_reason = status == 0, reason or EXITED_REASON
            node.exit_code = status
            node.standin_reason = node_reason
            node.job_stopped_reason = None if success else node_reason
            self._stopped(node, success)
            host = self.hosts.pop(node.job_id, None)
            is_main = not job.standin_nodes or node.standin_node["isMainNode"]
            # The main node's end, or a node that never started, ends a multi-node job.
            if job.standin_nodes and not job.job_stopped and (is_main or code is None):
                job.exit_code = status
                job.job_stopped_reason = node.job_stopped_reason
                self._stopped(job, success)
                job.standin_stopping = job.standin_stopping or MAIN_EXITED
                others = [
                    self.containers[n.job_id]
                    for n in job.standin_nodes
                    if n.job_id in self.containers
                ]
        if host is not None:
            self.network.remove_host(host)
        for other in others:  # the job is over: its other nodes go with it
            threading.Thread(target=other.stop, name="stop", daemon=True).start()

    @staticmethod
    def _stopped(job: Any, success: bool) -> None:
        job.job_stopped_at = datetime.now()
        job.job_stopped = True
        job.status = "SUCCEEDED" if success else "FAILED"


def _definition_with_nodes(describe: Any) -> Any:
    """DescribeJobDefinitions with a multi-node definition's ``nodeProperties``, as AWS
    answers (moto leaves them out, so its node containers' ``secrets`` looked absent)."""

    def with_nodes(self: Any) -> dict[str, Any]:
        result = describe(self)
        if self.node_properties is not None:
            result["nodeProperties"] = self.node_properties
        return result

    return with_nodes


def _job_class() -> type:
    """moto's ``Job`` as the stand-in describes it: with what Batch reports and moto leaves out."""
    global _JOB_CLASS
    if _JOB_CLASS is not None:
        return _JOB_CLASS
    from moto.batch.models import Job, datetime2int_milliseconds

    class StandInJob(Job):
        standin_nodes: tuple[Any, ...] | list[Any] = ()
        standin_node: dict[str, Any] = {}  # noqa: RUF012  (per instance for node jobs)
        standin_shape: dict[str, int] = {}  # noqa: RUF012
        standin_stopping: str | None = None
        standin_address: str | None = None
        standin_task: str | None = None
        standin_reason: str | None = None
        standin_log_group: str = DEFAULT_LOG_GROUP
        standin_container: dict[str, Any] | None = None

        def describe(self) -> dict[str, Any]:
            result = super().describe()
            if self.standin_nodes:  # a multi-node parent: node jobs hold the containers
                result.pop("container", None)
                result["nodeProperties"] = {
                    **self.job_definition.node_properties,
                    **self.standin_shape,
                }
                result["attempts"] = []
                return result
            container = self._container_details()
            result["container"] = container
            if self.standin_node:
                result["nodeDetails"] = dict(self.standin_node)
                result["nodeProperties"] = {
                    "numNodes": self.standin_shape["numNodes"],
                    "mainNode": self.standin_shape["mainNode"],
                    "isMainNode": self.standin_node["isMainNode"],
                }
            result["attempts"] = []
            if self.standin_task is not None:
                attempt: dict[str, Any] = {
                    "container": {
                        k: container[k]
                        for k in ("taskArn", "exitCode", "reason", "logStreamName")
                        if k in container
                    }
                    | {"networkInterfaces": container["networkInterfaces"]},
                    "startedAt": datetime2int_milliseconds(self.job_started_at),
                }
                if self.job_stopped:
                    attempt["stoppedAt"] = datetime2int_milliseconds(self.job_stopped_at)
                    attempt["statusReason"] = self.standin_reason or ""
                result["attempts"] = [attempt]
            return result

        def _container_details(self) -> dict[str, Any]:
            # moto's own appends to the overrides' environment on every DescribeJobs
            properties = self.standin_container or self.job_definition.container_properties or {}
            overrides = self.container_overrides or {}
            environment = _environment(properties.get("environment"))
            environment.update(_environment(overrides.get("environment")))
            container: dict[str, Any] = {
                "image": properties.get("image"),
                "command": overrides.get("command") or properties.get("command") or [],
                "environment": [{"name": k, "value": v} for k, v in environment.items()],
                "networkInterfaces": [],
            }
            if self.standin_task is not None:
                container["taskArn"] = (
                    f"arn:aws:ecs:{self.standin_region}:{ACCOUNT}:task/"
                    f"AWSBatch-standin/{self.standin_task}"
                )
                container["logStreamName"] = self.log_stream_name
                container["networkInterfaces"] = [
                    {"attachmentId": self.standin_task, "privateIpv4Address": self.standin_address}
                ]
            if self.job_stopped:
                if self.exit_code is not None:
                    container["exitCode"] = self.exit_code
                if self.standin_reason:
                    container["reason"] = self.standin_reason
            return container

    _JOB_CLASS = StandInJob
    return StandInJob


_JOB_CLASS: type | None = None
