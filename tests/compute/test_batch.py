"""Batch helpers against moto's Batch on 127.0.0.1, and botocore Stubbers where moto falls short.

moto's Batch finishes every job at once, has no child node jobs and writes no logs: tests of
node jobs and log paging use a ``botocore.stub.Stubber`` whose responses are checked
against the AWS API model; tests of state changes set the job's state in the in-process
moto backend between polls.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import boto3
import pytest
from botocore.stub import Stubber

from tasks.aws.clients import client as aws_client
from tasks.compute.batch import (
    ESTIMATE_MARGIN,
    STARTUP_ALLOWANCE_S,
    ContainerSpec,
    EfsVolume,
    JobFollower,
    LogCursor,
    RunningJob,
    attempt_timeout_s,
    check_job_definition,
    check_job_queue,
    ensure_job_definition,
    exit_status,
    job_definition_name,
    job_definition_spec,
    job_name,
    node_ranges,
    read_logs,
    submit_job,
)
from tasks.errors import InputError, SciflowError, TransientError
from tasks.settings import get_settings
from tests.aws.fakes import inject_errors
from tests.compute.moto_batch import (
    ACCOUNT,
    QUEUE,
    REGION,
    operations,
    record_calls,
    set_job_status,
    use_batch_without_docker,
)

TAGS = {"sciflow:run-id": "run-1", "sciflow:unit": "lab", "sciflow:flow": "sim"}
CONTAINER = ContainerSpec(image="repo/sciflow:1", vcpus=2, memory_mib=4096)
JOB_ID = "4c9e6c1a-1111-2222-3333-444455556666"
TIMEOUT_S = 3600
QUEUE_ARN = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/{QUEUE}"
DEFINITION_ARN = f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/sciflow-0123456789abcdef:1"


@pytest.fixture
def client(aws):
    return aws_client("batch", region=REGION)


@pytest.fixture
def logs_client(aws):
    return aws_client("logs", region=REGION)


def stubbed(service: str) -> tuple[object, Stubber]:
    """A client that reaches nothing: every call must be queued on its Stubber."""
    c = boto3.client(
        service,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106
        endpoint_url="http://127.0.0.1:9",
    )
    return c, Stubber(c)


# --- moto itself -----------------------------------------------------------------------------


def test_moto_batch_finishes_jobs_without_starting_docker(aws, batch_queue, client):
    from moto.batch.models import batch_backends

    assert use_batch_without_docker(aws)["batch"] == {"use_docker": False}
    arn, _ = ensure_job_definition(client, job_definition_spec(CONTAINER))
    job = submit_job(
        client,
        name="x",
        queue=QUEUE,
        definition=arn,
        tags=TAGS,
        environment={},
        timeout_s=TIMEOUT_S,
    )
    assert job.status == "SUCCEEDED"
    backend_job = batch_backends[ACCOUNT][REGION]._jobs[job.job_id]
    # moto's Docker Batch runs each job in a thread that starts a container; this one never
    # had a thread, so no container was asked for.
    assert not backend_job._started.is_set()
    assert f"MOTO-BATCH-{job.job_id}" not in {t.name for t in threading.enumerate()}


# --- job definitions -------------------------------------------------------------------------


def test_job_definition_name_hashes_canonical_json_not_key_order():
    a = {"type": "container", "containerProperties": {"image": "i", "command": ["a"]}}
    b = {"containerProperties": {"command": ["a"], "image": "i"}, "type": "container"}
    assert job_definition_name(a) == job_definition_name(b)
    assert job_definition_name(a) != job_definition_name({**a, "type": "multinode"})
    assert len(job_definition_name(a)) == len("sciflow-") + 16


def test_equal_content_reuses_one_job_definition_across_runs(batch_queue, client):
    spec = job_definition_spec(CONTAINER, node_count=2)
    first, registered = ensure_job_definition(client, spec, TAGS)
    calls = record_calls(client)
    second, registered_again = ensure_job_definition(client, spec, {**TAGS, "sciflow:run-id": "2"})
    assert (registered, registered_again) == (True, False)
    assert second == first
    assert operations(calls) == ["DescribeJobDefinitions"]
    found = client.describe_job_definitions(jobDefinitionName=job_definition_name(spec))
    assert [d["revision"] for d in found["jobDefinitions"]] == [1]


def test_changed_content_registers_another_definition(batch_queue, client):
    first, _ = ensure_job_definition(client, job_definition_spec(CONTAINER))
    bigger = ContainerSpec(image=CONTAINER.image, vcpus=4, memory_mib=4096)
    second, registered = ensure_job_definition(client, job_definition_spec(bigger))
    assert registered
    assert second != first


# --- multi-node submission -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "main", "expected"),
    [
        (2, 0, [("0:0", True), ("1:1", False)]),
        (4, 0, [("0:0", True), ("1:3", False)]),
        (4, 2, [("2:2", True), ("0:1", False), ("3:3", False)]),
        (4, 3, [("3:3", True), ("0:2", False)]),
    ],
)
def test_node_ranges_put_the_main_node_alone(count, main, expected):
    assert node_ranges(count, main) == expected


@pytest.mark.parametrize(
    ("count", "main", "match"),
    [(1, 0, "node_count=1"), (3, 3, "main_node=3"), (3, -1, "main_node=-1")],
)
def test_node_ranges_reject_impossible_jobs(count, main, match):
    with pytest.raises(InputError, match=match):
        node_ranges(count, main)


def test_multinode_job_is_submitted_with_ranges_overrides_efs_and_tags(batch_queue, client):
    container = ContainerSpec(
        image="repo/sim:1",
        vcpus=8,
        memory_mib=16384,
        gpus=1,
        efs=EfsVolume("fs-0123456789abcdef0", "/mnt/efs"),
    )
    spec = job_definition_spec(container, node_count=3, main_node=0)
    calls = record_calls(client)
    definition, _ = ensure_job_definition(client, spec, TAGS)
    job = submit_job(
        client,
        name="sim run/1",
        queue=QUEUE,
        definition=definition,
        tags=TAGS,
        environment={"PREFECT__FLOW_RUN_ID": "run-1", "UNSET": None},
        timeout_s=TIMEOUT_S,
        command=["prefect", "flow-run", "execute"],
        node_count=3,
        node_command=["sciflow-mpi-node"],
    )

    registered = dict(calls)["RegisterJobDefinition"]
    assert registered["type"] == "multinode"
    nodes = registered["nodeProperties"]
    assert (nodes["numNodes"], nodes["mainNode"]) == (3, 0)
    assert [r["targetNodes"] for r in nodes["nodeRangeProperties"]] == ["0:0", "1:2"]
    props = nodes["nodeRangeProperties"][0]["container"]
    assert props["volumes"] == [
        {
            "name": "efs",
            "efsVolumeConfiguration": {
                "fileSystemId": "fs-0123456789abcdef0",
                "rootDirectory": "/",
                "transitEncryption": "ENABLED",
            },
        }
    ]
    assert props["mountPoints"] == [
        {"sourceVolume": "efs", "containerPath": "/mnt/efs", "readOnly": False}
    ]
    assert {r["type"]: r["value"] for r in props["resourceRequirements"]} == {
        "VCPU": "8",
        "MEMORY": "16384",
        "GPU": "1",
    }

    submitted = dict(calls)["SubmitJob"]
    assert submitted["jobName"] == "sim-run-1"
    assert submitted["tags"] == TAGS
    assert submitted["propagateTags"] is True
    overrides = submitted["nodeOverrides"]
    assert overrides["numNodes"] == 3
    main, others = overrides["nodePropertyOverrides"]
    env = [{"name": "PREFECT__FLOW_RUN_ID", "value": "run-1"}]
    assert main == {
        "targetNodes": "0:0",
        "containerOverrides": {"environment": env, "command": ["prefect", "flow-run", "execute"]},
    }
    assert others == {
        "targetNodes": "1:2",
        "containerOverrides": {"environment": env, "command": ["sciflow-mpi-node"]},
    }
    described = client.describe_jobs(jobs=[job.job_id])["jobs"][0]
    assert described["tags"] == TAGS
    assert described["nodeProperties"]["numNodes"] == 3


# --- attempt timeouts -------------------------------------------------------------------------


def test_a_job_without_an_estimate_gets_its_class_wall_time():
    assert attempt_timeout_s(21600) == 21600


def test_an_estimate_shortens_the_timeout_but_never_past_the_wall_time():
    assert attempt_timeout_s(21600, 100.0) == math.ceil(ESTIMATE_MARGIN * 100 + STARTUP_ALLOWANCE_S)
    assert attempt_timeout_s(21600, 1e6) == 21600
    assert attempt_timeout_s(3600, 0.0) == STARTUP_ALLOWANCE_S
    assert attempt_timeout_s(60, 0.0) == 60  # Batch's minimum, which is also this class's cap


@pytest.mark.parametrize(
    ("wall", "estimate", "message"),
    [
        (59, None, "wall_time_s=59: AWS Batch takes attempt timeouts of at least 60 s"),
        (3600, -1.0, r"estimate_s=-1.0; expected seconds >= 0"),
        (3600, float("nan"), r"estimate_s=nan; expected seconds >= 0"),
    ],
)
def test_bad_timeout_inputs_are_refused(wall, estimate, message):
    with pytest.raises(InputError, match=message):
        attempt_timeout_s(wall, estimate)


def test_the_submitted_job_carries_its_attempt_timeout(batch_queue, client):
    """moto keeps SubmitJob's timeout and DescribeJobs reports it, as Batch does."""
    definition, _ = ensure_job_definition(client, job_definition_spec(CONTAINER, node_count=2))
    job = submit_job(
        client,
        name="bounded",
        queue=QUEUE,
        definition=definition,
        tags=TAGS,
        environment={},
        timeout_s=5400,
        node_count=2,
    )
    described = client.describe_jobs(jobs=[job.job_id])["jobs"][0]
    assert described["timeout"] == {"attemptDurationSeconds": 5400}


def test_a_timeout_under_batchs_minimum_is_refused_before_submitting(batch_queue, client):
    definition, _ = ensure_job_definition(client, job_definition_spec(CONTAINER))
    calls = record_calls(client)
    with pytest.raises(InputError, match="timeout_s=30: AWS Batch takes attempt timeouts"):
        submit_job(
            client,
            name="short",
            queue=QUEUE,
            definition=definition,
            tags=TAGS,
            environment={},
            timeout_s=30,
        )
    assert operations(calls) == []


def test_single_container_job_uses_container_overrides(batch_queue, client):
    definition, _ = ensure_job_definition(client, job_definition_spec(CONTAINER))
    calls = record_calls(client)
    submit_job(
        client,
        name="one",
        queue=QUEUE,
        definition=definition,
        tags=TAGS,
        environment={"A": "1"},
        timeout_s=TIMEOUT_S,
    )
    submitted = dict(calls)["SubmitJob"]
    assert "nodeOverrides" not in submitted
    assert submitted["containerOverrides"] == {"environment": [{"name": "A", "value": "1"}]}


def test_unknown_queue_is_an_input_error_naming_it(batch_queue, client):
    with pytest.raises(InputError, match=r"job_queue='nope': no such AWS Batch job queue"):
        check_job_queue(client, "nope")
    assert check_job_queue(client, QUEUE).endswith(f":job-queue/{QUEUE}")


def test_job_names_are_cleaned_for_batch():
    assert job_name("crimson-fox") == "crimson-fox"
    assert job_name("a b/c.d") == "a-b-c-d"
    assert len(job_name("x" * 300)) == 128


# --- retries ---------------------------------------------------------------------------------


def describe_response(status: str, **extra) -> dict:
    return {
        "jobs": [
            {
                "jobName": "sim",
                "jobId": JOB_ID,
                "jobQueue": QUEUE_ARN,
                "status": status,
                "startedAt": 1_700_000_000_000,
                "jobDefinition": DEFINITION_ARN,
                **extra,
            }
        ]
    }


def test_throttling_and_5xx_are_retried_by_botocore_then_succeed(batch_queue, client, no_backoff):
    """Injected below botocore's retries: moto never throttles."""
    attempts = inject_errors(
        client, "DescribeJobQueues", [("TooManyRequestsException", 429), ("ServerException", 500)]
    )
    assert check_job_queue(client, QUEUE).endswith(f"job-queue/{QUEUE}")
    assert attempts == ["DescribeJobQueues"] * 3
    assert len(no_backoff) == 2


def test_client_errors_are_not_retried(batch_queue, client, no_backoff):
    """A 400 ClientException (bad request) fails at once, as AWS would answer it."""
    attempts = inject_errors(client, "DescribeJobs", [("ClientException", 400)])
    with pytest.raises(SciflowError, match="ClientException") as caught:
        RunningJob(client, JOB_ID).refresh()
    assert not isinstance(caught.value, TransientError)
    assert attempts == ["DescribeJobs"]
    assert no_backoff == []


def test_persistent_throttling_ends_as_a_transient_error(batch_queue, client, no_backoff):
    """Throttled on every attempt: botocore's attempts only, then one TransientError."""
    attempts = inject_errors(client, "DescribeJobs", [("ThrottlingException", 400)], forever=True)
    with pytest.raises(TransientError, match="ThrottlingException") as caught:
        RunningJob(client, JOB_ID).refresh()
    assert (caught.value.code, caught.value.operation) == ("ThrottlingException", "DescribeJobs")
    assert len(attempts) == get_settings().aws_max_attempts


# --- following a job -------------------------------------------------------------------------


def node_response(index: int, status: str, stream: str | None = None, **container) -> dict:
    detail = describe_response(status)["jobs"][0]
    detail |= {
        "jobId": f"{JOB_ID}#{index}",
        "nodeDetails": {"nodeIndex": index, "isMainNode": index == 0},
    }
    if stream:
        container["logStreamName"] = stream
    if container:
        detail["container"] = container
    return detail


def log_event(stamp: int, event_id: str, stream: str, message: str) -> dict:
    return {
        "logStreamName": stream,
        "timestamp": stamp,
        "message": message,
        "ingestionTime": stamp + 5,
        "eventId": event_id,
    }


def test_follower_tracks_node_jobs_from_running_to_failed_and_streams_their_logs(caplog):
    """Stubber: moto has no child node jobs (``<jobId>#<node>``) and writes no logs.

    Responses follow the DescribeJobs and FilterLogEvents output shapes of the AWS API model
    (the Stubber validates them).
    """
    batch_client, batch_stub = stubbed("batch")
    logs_client, logs_stub = stubbed("logs")
    multinode = {"nodeProperties": {"numNodes": 2, "mainNode": 0, "nodeRangeProperties": []}}
    node_ids = {"jobs": [f"{JOB_ID}#0", f"{JOB_ID}#1"]}
    group = "/aws/batch/job"

    batch_stub.add_response("describe_jobs", describe_response("RUNNING", **multinode))
    batch_stub.add_response(
        "describe_jobs",
        {"jobs": [node_response(0, "RUNNING", "s/0"), node_response(1, "STARTING")]},
        node_ids,
    )
    logs_stub.add_response(
        "filter_log_events",
        {"events": [log_event(1000, "e1", "s/0", "rank 0 up")]},
        {"logGroupName": group, "logStreamNames": ["s/0"], "startTime": 0},
    )
    batch_stub.add_response(
        "describe_jobs",
        describe_response("FAILED", statusReason="Essential container exited", **multinode),
    )
    failed_nodes = {
        "jobs": [
            node_response(0, "FAILED", "s/0", exitCode=3, reason="rank 1 died"),
            node_response(1, "FAILED", "s/1", exitCode=137),
        ]
    }
    batch_stub.add_response("describe_jobs", failed_nodes, node_ids)
    logs_stub.add_response(
        "filter_log_events",
        {
            "events": [
                log_event(1000, "e1", "s/0", "rank 0 up"),  # inclusive startTime: seen already
                log_event(1500, "e2", "s/1", "rank 1: MemoryError"),
                log_event(1600, "e3", "s/0", "abort"),
            ]
        },
        {"logGroupName": group, "logStreamNames": ["s/0", "s/1"], "startTime": 1000},
    )
    batch_stub.add_response("describe_jobs", failed_nodes, node_ids)  # exit code of main node

    log = logging.getLogger("tests.batch.follow")
    caplog.set_level(logging.INFO, logger=log.name)
    job = RunningJob(batch_client, JOB_ID)
    follower = JobFollower(job, log, logs_client, group)
    with batch_stub, logs_stub:
        assert follower.poll() is False
        assert follower.poll() is True
        assert exit_status(job) == 3
    batch_stub.assert_no_pending_responses()
    logs_stub.assert_no_pending_responses()

    assert follower.states == ["RUNNING", "FAILED"]
    assert follower.node_states == {0: ["RUNNING", "FAILED"], 1: ["STARTING", "FAILED"]}
    lines = [r.getMessage() for r in caplog.records]
    assert f"Batch job {JOB_ID} is FAILED: Essential container exited" in lines
    assert f"Batch node job {JOB_ID}#0 is FAILED: rank 1 died" in lines
    assert [line for line in lines if line.startswith("[")] == [
        "[node 0] rank 0 up",
        "[node 1] rank 1: MemoryError",
        "[node 0] abort",
    ]


def test_follower_reports_running_then_failed_with_new_log_lines_once(
    batch_queue, client, logs_client, caplog
):
    """moto: the job's state is set in the in-process backend between polls (moto finishes
    jobs at once) and its log lines are written to moto's CloudWatch Logs (moto's Batch
    writes none); DescribeJobs, FilterLogEvents and their paging go over HTTP to moto."""
    definition, _ = ensure_job_definition(client, job_definition_spec(CONTAINER))
    job = submit_job(
        client,
        name="one",
        queue=QUEUE,
        definition=definition,
        tags=TAGS,
        environment={},
        timeout_s=TIMEOUT_S,
    )
    stream = job.refresh()["container"]["logStreamName"]
    group = "/aws/batch/job"
    logs_client.create_log_group(logGroupName=group)
    logs_client.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)

    def put(*messages: str, at: int) -> None:
        logs_client.put_log_events(
            logGroupName=group,
            logStreamName=stream,
            logEvents=[{"timestamp": at, "message": m} for m in messages],
        )

    log = logging.getLogger("tests.batch.moto")
    caplog.set_level(logging.INFO, logger=log.name)
    follower = JobFollower(job, log, logs_client, group)
    set_job_status(job.job_id, "RUNNABLE")
    assert follower.poll() is False
    set_job_status(job.job_id, "RUNNING")
    put("step 1", "step 2", at=now)
    assert follower.poll() is False
    put("Traceback: boom", at=now + 10)
    set_job_status(job.job_id, "FAILED", reason="Essential container in task exited")
    assert follower.poll() is True

    assert follower.states == ["RUNNABLE", "RUNNING", "FAILED"]
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if line.startswith("[job]")] == [
        "[job] step 1",
        "[job] step 2",
        "[job] Traceback: boom",
    ]
    assert f"Batch job {job.job_id} is FAILED: Essential container in task exited" in lines
    assert exit_status(job) == 1


def test_read_logs_follows_pages_and_resumes_from_its_cursor():
    """Stubber: two FilterLogEvents pages joined by ``nextToken``, as CloudWatch pages them."""
    logs_client, stub = stubbed("logs")
    args = {"logGroupName": "g", "logStreamNames": ["a", "b"], "startTime": 0}
    stub.add_response(
        "filter_log_events",
        {"events": [log_event(10, "1", "a", "one")], "nextToken": "page-2"},
        args,
    )
    stub.add_response(
        "filter_log_events",
        {"events": [log_event(20, "2", "b", "two"), log_event(20, "3", "a", "three")]},
        {**args, "nextToken": "page-2"},
    )
    stub.add_response(
        "filter_log_events",
        {"events": [log_event(20, "2", "b", "two"), log_event(20, "3", "a", "three")]},
        {**args, "startTime": 20},
    )
    with stub:
        events, cursor = read_logs(logs_client, "g", ["a", "b"])
        again, same = read_logs(logs_client, "g", ["a", "b"], cursor)
    assert [e.message for e in events] == ["one", "two", "three"]
    assert cursor == LogCursor(20, frozenset({"2", "3"}))
    assert (again, same) == ([], cursor)


def test_read_logs_of_a_job_not_started_yet_is_empty(aws, logs_client):
    events, cursor = read_logs(logs_client, "/aws/batch/job", ["not/there/yet"])
    assert (events, cursor) == ([], LogCursor())


def test_kill_calls_terminate_job_with_the_reason(batch_queue, client):
    """moto records TerminateJob's reason as the job's statusReason."""
    definition, _ = ensure_job_definition(client, job_definition_spec(CONTAINER))
    job = submit_job(
        client,
        name="k",
        queue=QUEUE,
        definition=definition,
        tags=TAGS,
        environment={},
        timeout_s=TIMEOUT_S,
    )
    job.kill("cancelled from the UI")
    assert job.refresh()["statusReason"] == "cancelled from the UI"


def test_a_registered_definition_is_found_by_name_revision_or_arn(batch_queue, client):
    arn = client.register_job_definition(
        jobDefinitionName="lab-sim",
        type="container",
        containerProperties=CONTAINER.container_properties(),
    )["jobDefinitionArn"]
    assert {check_job_definition(client, d) for d in ("lab-sim", "lab-sim:1", arn)} == {arn}
    for missing in ("lab-other", "lab-sim:2"):
        with pytest.raises(InputError, match=f"job_definition='{missing}'"):
            check_job_definition(client, missing)
