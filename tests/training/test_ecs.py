"""The parameter-server launch on ECS Fargate, against moto's server on 127.0.0.1.

The network, the ``lifecycle`` fixture (tasks polled through every ECS state) and the
RunTask recorder are in tests/training/moto_ecs.py, shared with the flow's tests.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from blocks.compute_unit import DEFAULT_LIMITS, ComputeUnit, UnitLimits
from tasks.aws.tags import from_aws, run_tags
from tasks.compute import ecs as compute_ecs
from tasks.errors import InputError, SciflowError, TransientError
from tasks.training import ecs as training_ecs
from tasks.training.ecs import (
    ParameterServerLaunch,
    ParameterServerPlan,
    WallClockExceeded,
    local_commands,
    plan_from_unit,
    service_name_for,
    task_definitions,
)
from tests.aws.fakes import inject_errors
from tests.training import moto_ecs
from tests.training.moto_ecs import (
    ACCOUNT,
    REGION,
    Recorder,
    cloud_map,
    make_unit,
    set_exit_code,
    set_transition,
)

RUN_ID = "8F0C1D2E-3A4B-4C5D-8E9F-0A1B2C3D4E5F"
TAGS = run_tags(RUN_ID, "lab", "train")
CONFIG = "s3://lab-sciflow/runs/train/8f0c/config.json"
POLL_S = 0.01
REPO = Path(__file__).resolve().parents[2]
# The shared fixtures (as imported names they would read as unused, then redefined).
lifecycle, network = moto_ecs.lifecycle, moto_ecs.network


def make_plan(network: dict[str, Any], worker_count: int = 2, **kwargs: Any) -> ParameterServerPlan:
    return plan_from_unit(
        make_unit(network), RUN_ID, TAGS, CONFIG, worker_count, environment={"SEED": "7"}, **kwargs
    )


def test_the_plan_uses_the_unit_s_cloud_map_namespace(network: dict[str, Any]) -> None:
    """The namespace Terraform made (the flow's role may not create one) is the one used."""
    unit = make_unit(network).model_copy(update={"cloud_map_namespace": "lab.internal"})
    plan = plan_from_unit(unit, RUN_ID, TAGS, CONFIG, 1)
    assert plan.namespace == "lab.internal"
    assert plan.server_host.endswith(".lab.internal")
    assert make_plan(network).namespace == "sciflow.local"  # a unit that names none


def launch(plan: ParameterServerPlan, **kwargs: Any) -> tuple[ParameterServerLaunch, Recorder]:
    runner = ParameterServerLaunch(plan, None, poll_s=POLL_S, **kwargs)
    return runner, Recorder(runner.ecs)


def test_launch_on_moto(network: dict[str, Any], lifecycle: int) -> None:
    plan = make_plan(network, worker_count=12)
    runner, recorder = launch(plan)

    runner.start()

    ecs_client = boto3.client("ecs", region_name=REGION)
    discovery = cloud_map()
    # Task definitions, as moto stored them.
    for role, family in (("server", "sciflow-ps-server"), ("worker", "sciflow-ps-worker")):
        stored = ecs_client.describe_task_definition(taskDefinition=family, include=["TAGS"])
        definition = stored["taskDefinition"]
        assert definition["requiresCompatibilities"] == ["FARGATE"]
        assert definition["networkMode"] == "awsvpc"
        assert (definition["cpu"], definition["memory"]) == ("1024", "4096")
        [container] = definition["containerDefinitions"]
        environment = {e["name"]: e["value"] for e in container["environment"]}
        assert environment == {"PYTHONUNBUFFERED": "1", "SEED": "7"}
        assert not any("AWS_" in name for name in environment)
        assert container["logConfiguration"]["options"]["awslogs-group"] == "/sciflow/train"
        assert from_aws(stored["tags"]) == TAGS
        expected = ["python", "-m", "tasks.training.parameter_server", role]
        expected += ["--wall-time-s", "21600", "--config", CONFIG]  # the large class's
        expected += (
            ["--port", "29500", "--workers", "12"]
            if role == "server"
            else ["--server", f"{service_name_for(RUN_ID)}.sciflow.local:29500"]
        )
        assert container["command"] == expected
    server_def = ecs_client.describe_task_definition(taskDefinition="sciflow-ps-server")
    assert (
        server_def["taskDefinition"]["containerDefinitions"][0]["portMappings"][0]["containerPort"]
        == 29500
    )

    # One server, then 12 workers in calls of at most 10, all private with the run's tags.
    assert [(b["taskDefinition"].split("/")[-1], b["count"]) for b in recorder.run_tasks] == [
        ("sciflow-ps-server:1", 1),
        ("sciflow-ps-worker:1", 10),
        ("sciflow-ps-worker:1", 2),
    ]
    for body in recorder.run_tasks:
        assert body["launchType"] == "FARGATE"
        assert body["networkConfiguration"] == {
            "awsvpcConfiguration": {
                "subnets": network["subnets"],
                "securityGroups": [network["group"]],
                "assignPublicIp": "DISABLED",
            }
        }
        assert body["enableExecuteCommand"] is False
        assert body["startedBy"] == service_name_for(RUN_ID)
    listed = ecs_client.list_tasks(cluster="sciflow", startedBy=service_name_for(RUN_ID))
    assert sorted(listed["taskArns"]) == sorted(runner.tasks)
    assert len(runner.worker_tasks) == 12
    for arn in runner.tasks:
        tags = from_aws(ecs_client.list_tags_for_resource(resourceArn=arn)["tags"])
        assert tags["sciflow:run-id"] == TAGS["sciflow:run-id"]
        assert tags["sciflow:unit"] == "lab"

    # The launcher polled every task through moto's states up to RUNNING, never assumed it.
    assert recorder.seen(runner.server_task) == ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING"]
    assert all(
        recorder.seen(w) == ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING"]
        for w in runner.worker_tasks
    )
    # Server, then workers: 3 states each through the waiter, and one more DescribeTasks for
    # the server's address (boto3's waiter does not hand back its last answer).
    assert len(recorder.states) == 2 * (3 * lifecycle) + 1

    # The server's ENI address is registered in Cloud Map and discoverable by workers.
    [service] = discovery.list_services()["Services"]
    assert service["Name"] == service_name_for(RUN_ID)
    [instance] = discovery.list_instances(ServiceId=service["Id"])["Instances"]
    assert instance["Id"] == runner.server_task.rsplit("/", 1)[1]
    assert instance["Attributes"] == {
        "AWS_INSTANCE_IPV4": runner.server_ip,
        "AWS_INSTANCE_PORT": "29500",
    }
    [server] = ecs_client.describe_tasks(cluster="sciflow", tasks=[runner.server_task])["tasks"]
    eni = {d["name"]: d["value"] for d in server["attachments"][0]["details"]}
    assert eni["privateIPv4Address"] == runner.server_ip
    assert eni["subnetId"] == network["subnets"][0]
    found = discovery.discover_instances(
        NamespaceName="sciflow.local", ServiceName=service_name_for(RUN_ID)
    )["Instances"]
    assert [i["Attributes"]["AWS_INSTANCE_IPV4"] for i in found] == [runner.server_ip]
    [namespace] = discovery.list_namespaces()["Namespaces"]
    assert (namespace["Name"], namespace["Type"]) == ("sciflow.local", "DNS_PRIVATE")
    runner.stop()


def test_wait_reports_exit_codes(network: dict[str, Any], lifecycle: int) -> None:
    from moto.ecs.models import ecs_backends

    runner, recorder = launch(make_plan(network, worker_count=3))
    runner.start()
    tasks = ecs_backends[ACCOUNT][REGION].tasks["sciflow"]
    failing = runner.worker_tasks[1]
    tasks[failing].containers[0].exitCode = 3
    polls_before = len(recorder.states)

    outcome = runner.wait()

    assert outcome.succeeded
    assert outcome.server.task_arn == runner.server_task
    assert [w.task_arn for w in outcome.failed_workers] == [failing]
    assert outcome.exit_codes[failing.rsplit("/", 1)[1]] == 3
    # RUNNING -> DEACTIVATING -> STOPPING -> DEPROVISIONING -> STOPPED, 2 polls a state.
    assert len(recorder.states) - polls_before == 4 * lifecycle
    assert recorder.seen(runner.server_task)[-1] == "STOPPED"
    runner.stop()  # all STOPPED already: nothing to stop, the Cloud Map service goes
    assert not cloud_map().list_services()["Services"]


def test_wait_hands_on_each_tasks_cloudwatch_lines_once(
    network: dict[str, Any], lifecycle: int
) -> None:
    runner, _ = launch(make_plan(network, worker_count=2))
    runner.start()
    logs = boto3.client("logs", region_name=REGION)
    logs.create_log_group(logGroupName="/sciflow/train")
    service = service_name_for(RUN_ID)
    labelled = {
        "server": (runner.server_task, "server"),
        "worker-1": (runner.worker_tasks[0], "worker"),
        "worker-2": (runner.worker_tasks[1], "worker"),
    }
    for i, (label, (arn, container)) in enumerate(labelled.items()):
        stream = f"{service}/{container}/{arn.rsplit('/', 1)[1]}"
        logs.create_log_stream(logGroupName="/sciflow/train", logStreamName=stream)
        stamp = int(time.time() * 1000) + i  # CloudWatch refuses events 14 days old
        lines = [{"timestamp": stamp, "message": f"{label} says {n}"} for n in (1, 2)]
        logs.put_log_events(logGroupName="/sciflow/train", logStreamName=stream, logEvents=lines)
    seen: list[tuple[str, str]] = []

    runner.wait(on_line=lambda label, line: seen.append((label, line)))

    expected = [(label, f"{label} says {n}") for label in labelled for n in (1, 2)]
    assert sorted(seen) == sorted(expected)  # each line once, by its task's label
    assert [line for label, line in seen if label == "server"] == ["server says 1", "server says 2"]
    runner.stop()


def test_wait_reads_no_logs_without_awslogs(network: dict[str, Any], lifecycle: int) -> None:
    runner, _ = launch(plan_from_unit(make_unit(network, log_group=None), RUN_ID, TAGS, CONFIG, 1))
    runner.start()
    assert runner.plan.log_stream("server", runner.server_task) is None
    seen: list[tuple[str, str]] = []
    assert runner.wait(on_line=lambda *line: seen.append(line)).server.task_arn
    assert seen == []
    runner.stop()


def test_a_lost_worker_stops_the_run_instead_of_leaving_the_server_waiting(
    network: dict[str, Any], lifecycle: int
) -> None:
    """A reclaimed Fargate Spot task: stopped by ECS with exit code 137 while the rest run."""
    runner, _ = launch(make_plan(network, worker_count=2))
    runner.start()
    lost = runner.worker_tasks[0]
    set_exit_code(lost, 137)
    ecs_client = boto3.client("ecs", region_name=REGION)
    ecs_client.stop_task(cluster="sciflow", task=lost, reason="Spot capacity reclaimed")

    outcome = runner.wait(timeout_s=30)

    assert [w.task_arn for w in outcome.failed_workers] == [lost]
    described = ecs_client.describe_tasks(cluster="sciflow", tasks=runner.tasks)["tasks"]
    reasons = {t["taskArn"]: t["stoppedReason"] for t in described}
    assert reasons[lost] == "Spot capacity reclaimed"
    stopped_by_us = f"sciflow: task {lost.rsplit('/', 1)[1]} failed"
    assert reasons[runner.server_task] == stopped_by_us
    assert reasons[runner.worker_tasks[1]] == stopped_by_us
    assert not cloud_map().list_services()["Services"]


def test_wait_reports_a_failed_server(network: dict[str, Any], lifecycle: int) -> None:
    from moto.ecs.models import ecs_backends

    runner, _ = launch(make_plan(network, worker_count=1))
    runner.start()
    server = ecs_backends[ACCOUNT][REGION].tasks["sciflow"][runner.server_task]
    server.containers[0].exitCode = 1
    outcome = runner.wait(timeout_s=30)
    assert not outcome.succeeded
    assert outcome.server.exit_code == 1
    runner.stop()


def test_stop_stops_everything_and_is_idempotent(network: dict[str, Any], lifecycle: int) -> None:
    runner, _ = launch(make_plan(network, worker_count=2))
    runner.start()
    discovery = cloud_map()
    [service] = discovery.list_services()["Services"]

    runner.stop("flow run cancelled")
    runner.stop("flow run cancelled again")

    described = boto3.client("ecs", region_name=REGION).describe_tasks(
        cluster="sciflow", tasks=runner.tasks
    )["tasks"]
    assert len(described) == 3
    assert {t["lastStatus"] for t in described} == {"STOPPED"}
    assert {t["stoppedReason"] for t in described} == {"flow run cancelled"}
    assert not discovery.list_services()["Services"]
    with pytest.raises(discovery.exceptions.ServiceNotFound):
        discovery.list_instances(ServiceId=service["Id"])
    # The namespace is shared by runs: it stays, and the next run reuses it.
    [namespace] = discovery.list_namespaces()["Namespaces"]
    other = ParameterServerLaunch(
        plan_from_unit(make_unit(network), "second-run", TAGS, CONFIG, 1), poll_s=POLL_S
    )
    with other:
        other.start()
        assert other.namespace_id == namespace["Id"]


def test_an_exception_in_the_block_stops_everything(
    network: dict[str, Any], lifecycle: int
) -> None:
    runner, _ = launch(make_plan(network, worker_count=2))

    def flow() -> None:
        with runner:
            runner.start()
            raise RuntimeError("flow failed")

    with pytest.raises(RuntimeError, match="flow failed"):
        flow()
    described = boto3.client("ecs", region_name=REGION).describe_tasks(
        cluster="sciflow", tasks=runner.tasks
    )["tasks"]
    assert {t["lastStatus"] for t in described} == {"STOPPED"}
    assert {t["stoppedReason"] for t in described} == {"sciflow: RuntimeError"}
    assert not cloud_map().list_services()["Services"]


def test_a_server_that_stops_before_running_fails_the_start(
    network: dict[str, Any], lifecycle: int
) -> None:
    runner, _ = launch(make_plan(network, worker_count=2))
    other = boto3.client("ecs", region_name=REGION)

    def image_missing(parsed: dict[str, Any], **_: Any) -> None:
        for task in parsed["tasks"]:
            other.stop_task(
                cluster="sciflow", task=task["taskArn"], reason="CannotPullContainerError: no"
            )

    runner.ecs.meta.events.register("after-call.ecs.RunTask", image_missing)
    with pytest.raises(SciflowError, match="CannotPullContainerError") as caught:
        runner.start()
    assert runner.server_task
    assert runner.server_task.rsplit("/", 1)[1] in str(caught.value)
    assert not runner.worker_tasks
    assert not cloud_map().list_services()["Services"]


def test_a_server_that_never_runs_times_out(
    aws: str, network: dict[str, Any], lifecycle: int
) -> None:
    set_transition(aws, times=10_000)  # stuck in PROVISIONING
    runner, _ = launch(make_plan(network, worker_count=1), start_timeout_s=0.2)
    with pytest.raises(TransientError, match="PROVISIONING") as caught:
        runner.start()
    assert runner.server_task
    assert runner.server_task.rsplit("/", 1)[1] in str(caught.value)
    [stopped] = boto3.client("ecs", region_name=REGION).describe_tasks(
        cluster="sciflow", tasks=[runner.server_task]
    )["tasks"]
    assert stopped["desiredStatus"] == "STOPPED"
    assert not cloud_map().list_services()["Services"]


def test_throttling_is_retried(network: dict[str, Any], lifecycle: int, no_backoff) -> None:
    """Injected below botocore's retries: its retry is the only one."""
    runner, recorder = launch(make_plan(network, worker_count=1))
    throttled = inject_errors(runner.ecs, "DescribeTasks", [("ThrottlingException", 400)])
    with runner:
        runner.start()
        assert throttled[:2] == ["DescribeTasks", "DescribeTasks"]
        assert len(no_backoff) == 1
        assert recorder.seen(runner.server_task)[-1] == "RUNNING"


def test_a_missing_cluster_fails_without_leftovers(network: dict[str, Any], lifecycle: int) -> None:
    plan = make_plan(network, cluster="no-such-cluster")
    runner, _ = launch(plan)
    with pytest.raises(SciflowError, match="ClusterNotFoundException"):
        runner.start()
    assert not runner.tasks
    assert not cloud_map().list_services()["Services"]


def test_the_vpc_comes_from_the_first_subnet(network: dict[str, Any], lifecycle: int) -> None:
    runner, _ = launch(make_plan(network, worker_count=1))
    assert runner.plan.vpc is None
    with runner:
        runner.start()
    [namespace] = cloud_map().list_namespaces()["Namespaces"]
    zone = boto3.client("route53").get_hosted_zone(
        Id=namespace["Properties"]["DnsProperties"]["HostedZoneId"]
    )
    assert zone["HostedZone"]["Config"]["PrivateZone"] is True


def test_missing_ip_is_a_clear_error() -> None:
    with pytest.raises(SciflowError, match="privateIPv4Address"):
        compute_ecs.private_ip({"taskArn": "arn:aws:ecs:us-east-1:1:task/c/abc", "attachments": []})


# Bad input: each names the field to fix.


def test_zero_workers_is_refused(network: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="worker_count=0"):
        make_plan(network, worker_count=0)


@pytest.mark.parametrize(
    ("sizes", "field"),
    [
        ({"server_cpu": 1000}, "server_cpu=1000"),
        ({"worker_cpu": 256, "worker_memory": 4096}, "worker_memory=4096"),
        ({"server_cpu": 4096, "server_memory": 4096}, "server_memory=4096"),
    ],
)
def test_invalid_fargate_sizes_are_refused(
    network: dict[str, Any], sizes: dict[str, int], field: str
) -> None:
    with pytest.raises(InputError, match=field):
        make_plan(network, **sizes)


def test_a_unit_without_fargate_is_refused() -> None:
    unit = ComputeUnit(name="batch-only", platform="aws", region=REGION, storage_root="s3://b/runs")
    with pytest.raises(InputError, match="'batch-only' has no `fargate`"):
        plan_from_unit(unit, RUN_ID, TAGS, CONFIG, 2)


def test_public_subnets_are_refused(network: dict[str, Any]) -> None:
    with pytest.raises(InputError, match=r"public_subnets=True: .* internet"):
        plan_from_unit(make_unit(network, public_subnets=True), RUN_ID, TAGS, CONFIG, 2)


def test_credentials_in_the_environment_are_refused(network: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="AWS_SECRET_ACCESS_KEY"):
        plan_from_unit(
            make_unit(network), RUN_ID, TAGS, CONFIG, 2, environment={"AWS_SECRET_ACCESS_KEY": "x"}
        )


def test_logs_need_an_execution_role(network: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="execution_role_arn"):
        plan_from_unit(make_unit(network, execution_role_arn=None), RUN_ID, TAGS, CONFIG, 2)


def test_run_tags_are_required(network: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="sciflow:run-id"):
        plan_from_unit(make_unit(network), RUN_ID, {"sciflow:unit": "lab"}, CONFIG, 2)


def test_service_name_is_a_dns_label() -> None:
    name = service_name_for("Flow_Run/" + "x" * 100)
    assert name.startswith("ps-flow-run-x")
    assert len(name) == 63
    assert service_name_for(RUN_ID) == "ps-" + RUN_ID.lower()


# The very commands the tasks run, on this machine.


def test_local_commands_are_the_container_commands(network: dict[str, Any]) -> None:
    plan = make_plan(network, worker_count=12, port=29611)
    local = local_commands(plan)
    containers = {
        role: d["containerDefinitions"][0]["command"] for role, d in task_definitions(plan).items()
    }
    for role, argv in local.items():
        assert argv[:3] == [sys.executable, "-m", "tasks.training.parameter_server"]
        assert argv[3] == role
        assert argv[1:] == [a.replace(plan.server_host, "127.0.0.1") for a in containers[role][1:]]
    assert local["server"][-4:] == ["--port", "29611", "--workers", "12"]
    assert local["worker"][-2:] == ["--server", "127.0.0.1:29611"]
    assert local_commands(plan, python="/opt/py", host="10.0.0.5")["worker"][0] == "/opt/py"
    assert local_commands(plan, host="10.0.0.5")["worker"][-1] == "10.0.0.5:29611"


@pytest.mark.skipif(
    not (REPO / "tasks" / "training" / "parameter_server.py").is_file(),
    reason="tasks/training/parameter_server.py is not written yet",
)
def test_local_commands_run(network: dict[str, Any]) -> None:
    """Each role's program starts and knows every option its container passes."""
    for role, argv in local_commands(make_plan(network)).items():
        done = subprocess.run(
            [*argv[:4], "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (role, done.stderr)
        for option in (a for a in argv[4:] if a.startswith("--")):
            assert option in done.stdout, (role, option)


# The wall clock.


def test_the_processes_get_the_units_wall_clock(network: dict[str, Any]) -> None:
    limits = {"multinode": {**DEFAULT_LIMITS["multinode"].model_dump(), "wall_time_s": 1800}}
    unit = make_unit(network).model_copy(update={"limits": UnitLimits(**limits)})
    plan = plan_from_unit(unit, RUN_ID, TAGS, CONFIG, 2, size="multinode")
    assert plan.wall_time_s == 1800
    for definition in task_definitions(plan).values():
        command = definition["containerDefinitions"][0]["command"]
        assert command[4:6] == ["--wall-time-s", "1800"]
    assert make_plan(network).wall_time_s == DEFAULT_LIMITS["large"].wall_time_s


def test_tasks_still_running_at_the_wall_clock_are_stopped(
    aws: str, network: dict[str, Any], lifecycle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once RUNNING, moto's tasks are held there until stopped: a server that did not exit at
    its limit, as the launcher sees it."""
    monkeypatch.setattr(training_ecs, "WALL_CLOCK_GRACE_S", 0.0)
    runner, _ = launch(replace(make_plan(network, worker_count=2), wall_time_s=0.5))
    with runner:
        runner.start()
        set_transition(aws, times=10_000)
        started = time.monotonic()
        with pytest.raises(WallClockExceeded, match=r"ran past the wall-clock limit of 0\.5 s"):
            runner.wait()
        assert time.monotonic() - started < 30
    described = boto3.client("ecs", region_name=REGION).describe_tasks(
        cluster="sciflow", tasks=runner.tasks
    )["tasks"]
    assert len(described) == 3
    assert {t["lastStatus"] for t in described} == {"STOPPED"}
    assert {t["stoppedReason"] for t in described} == {"sciflow: wall-clock limit of 0.5 s reached"}
    assert not cloud_map().list_services()["Services"]


def test_a_shorter_timeout_of_wait_stays_a_timeout(
    aws: str, network: dict[str, Any], lifecycle: int
) -> None:
    runner, _ = launch(make_plan(network, worker_count=1))
    with runner:
        runner.start()
        set_transition(aws, times=10_000)
        with pytest.raises(TransientError, match=r"still running after 0\.2 s"):
            runner.wait(timeout_s=0.2)


def test_a_wall_clock_that_is_not_positive_is_refused(network: dict[str, Any]) -> None:
    with pytest.raises(InputError, match=r"wall_time_s=0: expected seconds > 0"):
        replace(make_plan(network), wall_time_s=0)


TOKEN_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:sciflow/run-token/r-AbCdEf"  # noqa: S105 - an ARN


def test_every_container_gets_the_run_token_as_a_secret_never_in_clear(
    network: dict[str, Any],
) -> None:
    """Guards against a token in a task definition's environment, where DescribeTaskDefinition
    and CloudTrail show it: both roles name the secret's ARN in `secrets`, nothing else."""
    plan = plan_from_unit(make_unit(network), RUN_ID, TAGS, CONFIG, 2, token_secret_arn=TOKEN_ARN)
    for role, definition in task_definitions(plan).items():
        [container] = definition["containerDefinitions"]
        assert container["secrets"] == [{"name": "SCIFLOW_RUN_TOKEN", "valueFrom": TOKEN_ARN}]
        assert "SCIFLOW_RUN_TOKEN" not in {e["name"] for e in container["environment"]}, role


def test_a_token_secret_needs_an_execution_role(network: dict[str, Any]) -> None:
    unit = make_unit(network, execution_role_arn=None, log_group=None)
    with pytest.raises(InputError, match="ECS reads a container's `secrets` with the execution"):
        plan_from_unit(unit, RUN_ID, TAGS, CONFIG, 2, token_secret_arn=TOKEN_ARN)
