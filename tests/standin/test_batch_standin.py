"""The Batch stand-in itself: jobs and multi-node jobs run, log, exit and are terminated."""

from __future__ import annotations

import ipaddress
import sys
import time

import boto3
import pytest

from tasks.compute.batch import RunningJob, exit_status, read_logs
from tests.compute.moto_batch import QUEUE, make_job_queue
from tests.standin.batch import DEFAULT_LOG_GROUP, MAIN_EXITED, TIMEOUT_REASON
from tests.standin.containers import wait_for

REGION = "us-east-1"
PYTHON = sys.executable
# Each node says who it is; the main node waits for every other node to reach it over TCP.
NODE_PROGRAM = """
import os, socket
env = {k: v for k, v in os.environ.items() if k.startswith("AWS_BATCH_") or k == "ROLE"}
print("ENV", sorted(env.items()), flush=True)
count, index = int(env["AWS_BATCH_JOB_NUM_NODES"]), int(env["AWS_BATCH_JOB_NODE_INDEX"])
if env["ROLE"] == "main":
    server = socket.create_server(("", 27999))
    for _ in range(count - 1):
        conn, peer = server.accept()
        print("HEARD", conn.recv(64).decode(), "FROM", peer[0], flush=True)
        conn.close()
else:
    import time
    address = env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"]
    for _ in range(200):
        try:
            with socket.create_connection((address, 27999), timeout=1) as conn:
                conn.sendall(str(index).encode())
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit("main node unreachable")
"""


@pytest.fixture
def batch(batch_standin, standin_network):
    make_job_queue(QUEUE)
    return boto3.client("batch", region_name=REGION)


def _definition(batch, command=None, environment=(), name="probe"):
    properties = {
        "image": "sciflow:test",
        "resourceRequirements": [
            {"type": "VCPU", "value": "1"},
            {"type": "MEMORY", "value": "512"},
        ],
        "environment": list(environment),
    }
    if command:
        properties["command"] = command
    return batch.register_job_definition(
        jobDefinitionName=name, type="container", containerProperties=properties
    )["jobDefinitionArn"]


def _describe(batch, job_id):
    [job] = batch.describe_jobs(jobs=[job_id])["jobs"]
    return job


def _done(batch, job_id, timeout=60):
    return wait_for(
        lambda: (j := _describe(batch, job_id))["status"] in ("SUCCEEDED", "FAILED") and j,
        timeout,
        f"job {job_id} done",
    )


def _lines(stream):
    events = boto3.client("logs", region_name=REGION).get_log_events(
        logGroupName=DEFAULT_LOG_GROUP, logStreamName=stream
    )["events"]
    return [e["message"] for e in events]


def test_a_job_runs_its_command_with_its_environment_and_logs_as_batch_does(batch, standin_network):
    program = (
        "import os, socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.connect(('{standin_network.host_address}', 9)); print('ADDR', s.getsockname()[0]); "
        "e = os.environ; print('VARS', e['FROM_DEF'], e['FROM_RUN'], e['AWS_BATCH_JOB_ID'])"
    )
    definition = _definition(
        batch, [PYTHON, "-c", "raise SystemExit(9)"], [{"name": "FROM_DEF", "value": "d"}]
    )
    job_id = batch.submit_job(
        jobName="probe",
        jobQueue=QUEUE,
        jobDefinition=definition,
        containerOverrides={
            "command": [PYTHON, "-c", program],
            "environment": [{"name": "FROM_RUN", "value": "r"}],
        },
    )["jobId"]
    assert _describe(batch, job_id)["status"] in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING")

    done = _done(batch, job_id)

    assert done["status"] == "SUCCEEDED", (done.get("statusReason"), done)
    container = done["container"]
    assert container["exitCode"] == 0
    [attempt] = done["attempts"]
    [interface] = attempt["container"]["networkInterfaces"]
    address = interface["privateIpv4Address"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(standin_network.block)
    task_id = container["taskArn"].rsplit("/", 1)[1]
    assert container["logStreamName"] == f"probe/default/{task_id}"
    assert attempt["container"]["logStreamName"] == container["logStreamName"]
    lines = _lines(container["logStreamName"])
    assert f"ADDR {address}" in lines
    assert f"VARS d r {job_id}" in lines
    assert done["startedAt"] <= done["stoppedAt"]


def test_an_exit_status_fails_the_job_with_it(batch):
    definition = _definition(batch, [PYTHON, "-c", "raise SystemExit(3)"])
    job_id = batch.submit_job(jobName="fails", jobQueue=QUEUE, jobDefinition=definition)["jobId"]
    done = _done(batch, job_id)
    assert done["status"] == "FAILED"
    assert done["container"]["exitCode"] == 3
    assert done["statusReason"] == "Essential container in task exited"
    assert exit_status(RunningJob(batch, job_id)) == 3


def test_a_job_without_a_command_fails_to_start(batch):
    job_id = batch.submit_job(jobName="bare", jobQueue=QUEUE, jobDefinition=_definition(batch))[
        "jobId"
    ]
    done = _done(batch, job_id)
    assert done["status"] == "FAILED"
    assert done["statusReason"].startswith("CannotStartContainerError: no command")


def test_a_multinode_job_runs_each_node_in_its_namespace_with_batchs_variables(
    batch, batch_standin
):
    definition = batch.register_job_definition(
        jobDefinitionName="mnp",
        type="multinode",
        nodeProperties={
            "numNodes": 2,
            "mainNode": 0,
            "nodeRangeProperties": [
                {
                    "targetNodes": "0:",
                    "container": {
                        "image": "sciflow:test",
                        "command": [PYTHON, "-c", NODE_PROGRAM],
                        "resourceRequirements": [
                            {"type": "VCPU", "value": "1"},
                            {"type": "MEMORY", "value": "512"},
                        ],
                    },
                }
            ],
        },
    )["jobDefinitionArn"]
    job_id = batch.submit_job(
        jobName="mnp",
        jobQueue=QUEUE,
        jobDefinition=definition,
        nodeOverrides={
            "numNodes": 3,
            "nodePropertyOverrides": [
                {
                    "targetNodes": "0:0",
                    "containerOverrides": {"environment": [{"name": "ROLE", "value": "main"}]},
                },
                {
                    "targetNodes": "1:2",
                    "containerOverrides": {"environment": [{"name": "ROLE", "value": "child"}]},
                },
            ],
        },
    )["jobId"]

    done = _done(batch, job_id)

    assert done["status"] == "SUCCEEDED", (done.get("statusReason"), done)
    assert done["nodeProperties"]["numNodes"] == 3
    job = RunningJob(batch, job_id)
    nodes = job.nodes()
    assert [(n.index, n.status, n.exit_code) for n in nodes] == [
        (0, "SUCCEEDED", 0),
        (1, "SUCCEEDED", 0),
        (2, "SUCCEEDED", 0),
    ]
    described = batch.describe_jobs(jobs=[f"{job_id}#{i}" for i in range(3)])["jobs"]
    addresses = {
        d["nodeDetails"]["nodeIndex"]: d["container"]["networkInterfaces"][0]["privateIpv4Address"]
        for d in described
    }
    assert len(set(addresses.values())) == 3
    assert [d["nodeDetails"]["isMainNode"] for d in described] == [True, False, False]
    events, _ = read_logs(
        boto3.client("logs", region_name=REGION), DEFAULT_LOG_GROUP, list(job.log_streams())
    )
    lines = [e.message for e in events]
    heard = sorted(line for line in lines if line.startswith("HEARD"))
    assert heard == [f"HEARD {i} FROM {addresses[i]}" for i in (1, 2)]
    child_env = next(line for line in lines if "('ROLE', 'child')" in line and f"#{2}'" in line)
    assert f"('AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS', '{addresses[0]}')" in child_env
    assert "('AWS_BATCH_JOB_NUM_NODES', '3')" in child_env
    assert "('AWS_BATCH_JOB_MAIN_NODE_INDEX', '0')" in child_env
    main_env = next(line for line in lines if "('ROLE', 'main')" in line)
    assert "MAIN_NODE_PRIVATE_IPV4_ADDRESS" not in main_env
    assert f"('AWS_BATCH_JOB_ID', '{job_id}#0')" in main_env
    summaries = batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
    assert [s["jobId"] for s in summaries] == [job_id]  # node jobs are not listed
    assert batch_standin.hosts == {}


def test_terminate_job_stops_every_node_and_fails_the_job_with_the_reason(batch, batch_standin):
    sleeper = [PYTHON, "-c", "import time; print('UP', flush=True); time.sleep(600)"]
    definition = batch.register_job_definition(
        jobDefinitionName="sleepers",
        type="multinode",
        nodeProperties={
            "numNodes": 2,
            "mainNode": 0,
            "nodeRangeProperties": [
                {
                    "targetNodes": "0:1",
                    "container": {
                        "image": "sciflow:test",
                        "command": sleeper,
                        "resourceRequirements": [
                            {"type": "VCPU", "value": "1"},
                            {"type": "MEMORY", "value": "512"},
                        ],
                    },
                }
            ],
        },
    )["jobDefinitionArn"]
    job_id = batch.submit_job(jobName="sleep", jobQueue=QUEUE, jobDefinition=definition)["jobId"]
    job = RunningJob(batch, job_id)
    wait_for(lambda: len(batch_standin.containers) == 2 and job.status == "RUNNING", 60, "up")
    batch.cancel_job(jobId=job_id, reason="too late to cancel")  # a started job: ignored
    assert job.status == "RUNNING"

    batch.terminate_job(jobId=job_id, reason="enough")

    done = _done(batch, job_id)
    assert done["status"] == "FAILED"
    assert done["statusReason"] == "enough"
    wait_for(lambda: len(batch_standin.exits) == 2, 30, "both nodes ended")
    assert batch_standin.exits == {f"{job_id}#0": 143, f"{job_id}#1": 143}  # SIGTERM
    assert [n.status for n in job.nodes()] == ["FAILED", "FAILED"]
    assert {n.reason for n in job.nodes()} == {"enough"}
    assert batch_standin.containers == {}
    assert MAIN_EXITED not in done["statusReason"]


def test_a_job_that_outruns_its_attempt_timeout_is_stopped_as_batch_does(batch, batch_standin):
    definition = _definition(batch, name="slow")
    started = time.monotonic()
    job_id = batch.submit_job(
        jobName="slow",
        jobQueue=QUEUE,
        jobDefinition=definition,
        containerOverrides={"command": [PYTHON, "-c", "import time; time.sleep(600)"]},
        timeout={"attemptDurationSeconds": 2},
    )["jobId"]

    done = _done(batch, job_id)

    assert time.monotonic() - started < 60
    assert done["status"] == "FAILED"
    assert done["statusReason"] == TIMEOUT_REASON
    assert done["timeout"] == {"attemptDurationSeconds": 2}
    wait_for(lambda: job_id in batch_standin.exits, 30, "the container ended")
    assert batch_standin.exits[job_id] == 143  # SIGTERM, as TerminateJob sends
    assert batch_standin.containers == {}


def test_a_job_within_its_attempt_timeout_is_not_stopped(batch, batch_standin):
    definition = _definition(batch, name="quick")
    job_id = batch.submit_job(
        jobName="quick",
        jobQueue=QUEUE,
        jobDefinition=definition,
        containerOverrides={"command": [PYTHON, "-c", "print('done')"]},
        timeout={"attemptDurationSeconds": 60},
    )["jobId"]
    done = _done(batch, job_id)
    assert (done["status"], done["container"]["exitCode"]) == ("SUCCEEDED", 0)


def test_a_held_job_waits_runnable_until_released_or_terminated(batch, batch_standin):
    definition = _definition(batch, [PYTHON, "-c", "print('ran')"], name="held")
    with batch_standin.held_runnable():
        kept = batch.submit_job(jobName="kept", jobQueue=QUEUE, jobDefinition=definition)["jobId"]
        ended = batch.submit_job(jobName="ended", jobQueue=QUEUE, jobDefinition=definition)
        wait_for(lambda: _describe(batch, kept)["status"] == "RUNNABLE", 30, "kept RUNNABLE")
        batch.terminate_job(jobId=ended["jobId"], reason="cancelled while RUNNABLE")
        gone = _done(batch, ended["jobId"])
        assert (gone["status"], gone["statusReason"]) == ("FAILED", "cancelled while RUNNABLE")
        assert _describe(batch, kept)["status"] == "RUNNABLE"
        assert batch_standin.containers == {}

    assert _done(batch, kept)["status"] == "SUCCEEDED"
    assert ended["jobId"] not in batch_standin.exits  # it never had a container
