"""The ECS stand-in itself: tasks run, log, exit, stop, read secrets and find each other."""

from __future__ import annotations

import json
import sys

import boto3
import pytest

from tests.standin.containers import wait_for

REGION = "us-east-1"
PYTHON = sys.executable


@pytest.fixture
def cluster(ecs_standin, standin_network):
    made = standin_network.make_vpc(cluster="standin")
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName="/standin")
    ecs = boto3.client("ecs", region_name=REGION)
    return {
        "ecs": ecs,
        "arn": made["cluster"],
        "subnet": made["subnets"][0],
        "group": made["group"],
    }


def _run(cluster, command, secrets=(), environment=()):
    [task] = _run_many(cluster, command, 1, secrets, environment)
    return task


def _run_many(cluster, command, count, secrets=(), environment=()):
    ecs = cluster["ecs"]
    definition = ecs.register_task_definition(
        family="probe",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "probe",
                "image": "sciflow:test",
                "memory": 512,
                "command": command,
                "environment": list(environment),
                "secrets": list(secrets),
                "logConfiguration": {
                    "logDriver": "awslogs",
                    "options": {
                        "awslogs-group": "/standin",
                        "awslogs-region": REGION,
                        "awslogs-stream-prefix": "p",
                    },
                },
            }
        ],
    )["taskDefinition"]["taskDefinitionArn"]
    return ecs.run_task(
        cluster=cluster["arn"],
        taskDefinition=definition,
        count=count,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": [cluster["subnet"]],
                "securityGroups": [cluster["group"]],
            }
        },
    )["tasks"]


def _describe(cluster, arn):
    [task] = cluster["ecs"].describe_tasks(cluster=cluster["arn"], tasks=[arn])["tasks"]
    return task


def _stopped(cluster, arn, timeout=60):
    return wait_for(
        lambda: (t := _describe(cluster, arn))["lastStatus"] == "STOPPED" and t, timeout, arn
    )


def test_a_task_runs_its_command_in_its_own_address_and_logs_to_cloudwatch(
    cluster, standin_network
):
    # An address on the bridge: the session's block is not always 198.18.0.0/20.
    program = (
        "import socket, os; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.connect(('{standin_network.host_address}', 9)); print('ADDR', s.getsockname()[0]); "
        "print('HOST', socket.gethostname()); print('GREETING', os.environ['GREETING'])"
    )
    task = _run(cluster, [PYTHON, "-c", program], environment=[{"name": "GREETING", "value": "hi"}])
    assert task["lastStatus"] == "PROVISIONING"
    done = _stopped(cluster, task["taskArn"])
    assert done["containers"][0]["exitCode"] == 0
    assert done["stopCode"] == "EssentialContainerExited"
    [eni] = [
        d["value"] for d in task["attachments"][0]["details"] if d["name"] == "privateIPv4Address"
    ]
    stream = f"p/probe/{task['taskArn'].split('/')[-1]}"
    events = boto3.client("logs", region_name=REGION).get_log_events(
        logGroupName="/standin", logStreamName=stream
    )["events"]
    lines = [e["message"] for e in events]
    assert f"ADDR {eni}" in lines
    assert f"HOST ip-{eni.replace('.', '-')}.ec2.internal" in lines
    assert "GREETING hi" in lines


def test_tasks_of_one_run_task_call_start_together(cluster):
    """Their namespaces are made at once, on the stand-in's threads: no name may clash."""
    tasks = _run_many(cluster, [PYTHON, "-c", "pass"], 3)
    done = [_stopped(cluster, task["taskArn"]) for task in tasks]
    assert [t["containers"][0]["exitCode"] for t in done] == [0, 0, 0], [
        t["stoppedReason"] for t in done
    ]


def test_an_exit_status_becomes_the_tasks(cluster):
    task = _run(cluster, [PYTHON, "-c", "raise SystemExit(3)"])
    assert _stopped(cluster, task["taskArn"])["containers"][0]["exitCode"] == 3


def test_stop_task_stops_the_process_with_the_reason(cluster, ecs_standin):
    task = _run(cluster, [PYTHON, "-c", "import time; print('UP', flush=True); time.sleep(600)"])
    arn = task["taskArn"]
    wait_for(lambda: _describe(cluster, arn)["lastStatus"] == "RUNNING", 60, "running")
    cluster["ecs"].stop_task(cluster=cluster["arn"], task=arn, reason="enough")
    done = _stopped(cluster, arn)
    assert done["stoppedReason"] == "enough"
    assert ecs_standin.exits[arn] == -15


def test_a_task_stopped_while_provisioning_never_starts(cluster, ecs_standin):
    with ecs_standin.held_provisioning():
        task = _run(cluster, [PYTHON, "-c", "print('STARTED', flush=True)"])
        arn = task["taskArn"]
        assert _describe(cluster, arn)["lastStatus"] == "PROVISIONING"
        cluster["ecs"].stop_task(cluster=cluster["arn"], task=arn, reason="cancelled early")
        done = _stopped(cluster, arn)
    # Capacity comes back: the stopped task does not start.
    wait_for(lambda: not any(t.is_alive() for t in ecs_standin._starters), 30, "stand-in idle")
    assert (done["stopCode"], done["stoppedReason"]) == ("UserInitiated", "cancelled early")
    assert _describe(cluster, arn)["lastStatus"] == "STOPPED"
    assert arn not in ecs_standin.exits  # its process never ran
    assert arn not in ecs_standin.containers


def test_secrets_come_from_secrets_manager_and_ssm(cluster):
    secret = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="api", SecretString=json.dumps({"url": "http://x/api"})
    )["ARN"]
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name="/p/key", Value="k1", Type="SecureString"
    )
    program = "import os; print('S', os.environ['URL'], os.environ['KEY'])"
    task = _run(
        cluster,
        [PYTHON, "-c", program],
        secrets=[
            {"name": "URL", "valueFrom": f"{secret}:url::"},
            {"name": "KEY", "valueFrom": f"arn:aws:ssm:{REGION}:123456789012:parameter/p/key"},
        ],
    )
    assert _stopped(cluster, task["taskArn"])["containers"][0]["exitCode"] == 0


def test_cloud_map_names_resolve_inside_tasks(cluster, standin_network):
    sd = boto3.client("servicediscovery", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    [vpc] = ec2.describe_vpcs(Filters=[{"Name": "cidr", "Values": [standin_network.block]}])["Vpcs"]
    sd.create_private_dns_namespace(Name="lab.local", Vpc=vpc["VpcId"])
    [namespace] = sd.list_namespaces()["Namespaces"]
    service = sd.create_service(Name="ps", NamespaceId=namespace["Id"])["Service"]["Id"]
    address = standin_network.subnet(1).replace(".0/24", ".200")
    sd.register_instance(
        ServiceId=service, InstanceId="i-1", Attributes={"AWS_INSTANCE_IPV4": address}
    )
    program = "import socket; print('RESOLVED', socket.gethostbyname('ps.lab.local'))"
    task = _run(cluster, [PYTHON, "-c", program])
    assert _stopped(cluster, task["taskArn"])["containers"][0]["exitCode"] == 0
    stream = f"p/probe/{task['taskArn'].split('/')[-1]}"
    events = boto3.client("logs", region_name=REGION).get_log_events(
        logGroupName="/standin", logStreamName=stream
    )["events"]
    assert f"RESOLVED {address}" in [e["message"] for e in events]


def test_state_changes_reach_the_events_queue(cluster, ecs_standin):
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.create_queue(QueueName=ecs_standin.events_queue)["QueueUrl"]
    task = _run(cluster, [PYTHON, "-c", "pass"])
    _stopped(cluster, task["taskArn"])
    states = []
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            body = json.loads(message["Body"])
            assert body["detail-type"] == "ECS Task State Change"
            states.append(body["detail"]["lastStatus"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    assert states == ["PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "STOPPED"]
