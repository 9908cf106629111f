"""Removing a run's cloud resources by its tag, on moto's server; a Stubber where moto falls short.

Run A, run B, a look-alike (A's id in capitals, which no run can have) and untagged resources
of every kind share one account: ECS tasks, services, clusters and task definitions, Batch
jobs, Cloud Map services, EFS access points, security groups and Dask log streams. Batch jobs
stay PENDING while they wait on a job that never comes (moto's Batch with Docker reaches its
dependency wait before it needs a Docker daemon), so there are live jobs to terminate.
"""

from __future__ import annotations

from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber

from blocks.compute_unit import ComputeUnit, local_unit
from tasks.aws.tags import RUN_ID_TAG, UNIT_TAG
from tasks.cleanup import resources
from tasks.cleanup.resources import (
    CHECK_NAME,
    CleanupDenied,
    Clients,
    Resource,
    cloud_resources_check,
    remove_resources,
    remove_run_resources,
    tagged_run_ids,
)
from tasks.cleanup.scope import resolve_scope
from tasks.cleanup.validate import run_checks
from tasks.compute import dask
from tasks.errors import InputError
from tests.aws.fakes import inject_errors
from tests.compute.moto_batch import make_job_queue
from tests.training.moto_ecs import make_network

REGION = "us-east-1"
RUN_A = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"
RUN_B = "7d1f0a55-2c9e-4b8a-a3f1-5e6d7c8b9a01"
LOOKALIKE = RUN_A.upper()  # not a flow-run id: never A's
LOG_GROUP = dask.DEFAULT_LOG_GROUP
QUEUE = "cleanup-test"
KINDS_MADE = {
    "ecs-task",
    "ecs-service",
    "ecs-cluster",
    "task-definition",
    "batch-job",
    "cloudmap-service",
    "efs-access-point",
    "security-group",
    "log-stream",
    "secret",
}


def _aws(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


@pytest.fixture
def account(aws: str) -> dict[str, Any]:
    """A network, a job queue on moto's Batch with Docker, a Cloud Map namespace, a file system."""
    with httpx.Client(trust_env=False, timeout=30) as http:
        before = http.get(f"{aws}/moto-api/config").json().get("batch", {})
        http.post(f"{aws}/moto-api/config", json={"batch": {"use_docker": True}})
    network = make_network()
    make_job_queue(QUEUE)
    network["job_definition"] = _aws("batch").register_job_definition(
        jobDefinitionName="sciflow-job",
        type="container",
        containerProperties={"image": "sciflow", "vcpus": 1, "memory": 512, "command": ["x"]},
    )["jobDefinitionArn"]
    discovery = _aws("servicediscovery")
    discovery.create_private_dns_namespace(Name="sciflow.local", Vpc=network["vpc"])
    network["namespace"] = discovery.list_namespaces()["Namespaces"][0]["Id"]
    network["file_system"] = _aws("efs").create_file_system(CreationToken="scratch")["FileSystemId"]
    _aws("logs").create_log_group(logGroupName=LOG_GROUP)
    yield network
    with httpx.Client(trust_env=False, timeout=30) as http:
        http.post(f"{aws}/moto-api/config", json={"batch": before})


def _litter(net: dict[str, Any], run: str | None, name: str) -> dict[str, str]:
    """One of every kind, tagged with ``run`` (untagged if ``None``); returns their ids."""
    tags = {RUN_ID_TAG: run, UNIT_TAG: "lab"} if run else {UNIT_TAG: "lab"}
    ecs_tags = [{"key": k, "value": v} for k, v in tags.items()]
    aws_tags = [{"Key": k, "Value": v} for k, v in tags.items()]
    ecs, ec2 = _aws("ecs"), _aws("ec2")
    made: dict[str, str] = {}
    made["ecs-cluster"] = ecs.create_cluster(clusterName=f"dask-{name}", tags=ecs_tags)["cluster"][
        "clusterArn"
    ]
    made["task-definition"] = ecs.register_task_definition(
        family=f"sciflow-dask-scheduler-{name}",
        containerDefinitions=[{"name": "dask-scheduler", "image": "sciflow", "memory": 512}],
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
        tags=ecs_tags,
    )["taskDefinition"]["taskDefinitionArn"]
    task = ecs.run_task(
        cluster=net["cluster"],
        taskDefinition=made["task-definition"],
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {"subnets": net["subnets"], "securityGroups": [net["group"]]}
        },
        tags=ecs_tags,
    )["tasks"][0]["taskArn"]
    made["ecs-task"] = task
    made["ecs-service"] = ecs.create_service(
        cluster=net["cluster"],
        serviceName=f"svc-{name}",
        taskDefinition=made["task-definition"],
        desiredCount=0,
        tags=ecs_tags,
    )["service"]["serviceArn"]
    made["log-stream"] = f"dask/dask-scheduler/{task.rsplit('/', 1)[-1]}"
    _aws("logs").create_log_stream(logGroupName=LOG_GROUP, logStreamName=made["log-stream"])
    made["batch-job"] = _aws("batch").submit_job(
        jobName=f"job-{name}",
        jobQueue=QUEUE,
        jobDefinition=net["job_definition"],
        dependsOn=[{"jobId": "never-submitted"}],  # keeps it PENDING until terminated
        tags=tags,
    )["jobId"]
    discovery = _aws("servicediscovery")
    service = discovery.create_service(
        Name=f"ps-{name}",
        NamespaceId=net["namespace"],
        DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 10}]},
        Tags=aws_tags,
    )["Service"]["Id"]
    discovery.register_instance(
        ServiceId=service, InstanceId="server", Attributes={"AWS_INSTANCE_IPV4": "10.1.1.5"}
    )
    made["cloudmap-service"] = service
    made["efs-access-point"] = _aws("efs").create_access_point(
        FileSystemId=net["file_system"], Tags=aws_tags
    )["AccessPointId"]
    made["security-group"] = ec2.create_security_group(
        GroupName=f"dask-{name}",
        Description="dask",
        VpcId=net["vpc"],
        TagSpecifications=[{"ResourceType": "security-group", "Tags": aws_tags}],
    )["GroupId"]
    made["secret"] = _aws("secretsmanager").create_secret(
        Name=f"sciflow-dask-tls-{name}", SecretString="{}", Tags=aws_tags
    )["ARN"]
    assert set(made) == KINDS_MADE
    return made


def _present(made: dict[str, str]) -> set[str]:
    """Which of ``made`` are still there and live (a task not stopping, a job not ended)."""
    ecs, net_cluster = _aws("ecs"), made["cluster"]
    alive = set()
    task = ecs.describe_tasks(cluster=net_cluster, tasks=[made["ecs-task"]])["tasks"][0]
    if task["desiredStatus"] == "RUNNING":
        alive.add("ecs-task")
    service = ecs.describe_services(cluster=net_cluster, services=[made["ecs-service"]])
    if any(s["status"] == "ACTIVE" for s in service["services"]):
        alive.add("ecs-service")
    clusters = ecs.describe_clusters(clusters=[made["ecs-cluster"]])["clusters"]
    if any(c["status"] == "ACTIVE" for c in clusters):
        alive.add("ecs-cluster")
    definitions = ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]
    if made["task-definition"] in definitions:
        alive.add("task-definition")
    job = _aws("batch").describe_jobs(jobs=[made["batch-job"]])["jobs"][0]
    if job["status"] not in ("SUCCEEDED", "FAILED"):
        alive.add("batch-job")
    services = [s["Id"] for s in _aws("servicediscovery").list_services()["Services"]]
    if made["cloudmap-service"] in services:
        alive.add("cloudmap-service")
    points = [p["AccessPointId"] for p in _aws("efs").describe_access_points()["AccessPoints"]]
    if made["efs-access-point"] in points:
        alive.add("efs-access-point")
    groups = [g["GroupId"] for g in _aws("ec2").describe_security_groups()["SecurityGroups"]]
    if made["security-group"] in groups:
        alive.add("security-group")
    streams = _aws("logs").describe_log_streams(logGroupName=LOG_GROUP)["logStreams"]
    if made["log-stream"] in [s["logStreamName"] for s in streams]:
        alive.add("log-stream")
    secrets = _aws("secretsmanager").list_secrets()["SecretList"]
    if made["secret"] in [s["ARN"] for s in secrets]:
        alive.add("secret")
    return alive


@pytest.fixture
def runs(account: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A's, B's, the look-alike's and untagged resources, each with the test cluster's ARN."""
    made = {
        "a": _litter(account, RUN_A, "a"),
        "b": _litter(account, RUN_B, "b"),
        "lookalike": _litter(account, LOOKALIKE, "lookalike"),
        "untagged": _litter(account, None, "untagged"),
    }
    for ids in made.values():
        ids["cluster"] = account["cluster"]
        assert _present(ids) == KINDS_MADE
    return made


def test_cleanup_of_a_run_removes_all_of_its_resources_and_nothing_else(runs):
    removal = remove_run_resources(RUN_A, Clients(), log_groups=[LOG_GROUP])

    assert removal.ok, removal.check().detail
    assert {r.kind for r in removal.removed} == KINDS_MADE
    assert {r.id for r in removal.removed} == {v for k, v in runs["a"].items() if k != "cluster"}
    assert _present(runs["a"]) == set()
    for other in ("b", "lookalike", "untagged"):
        assert _present(runs[other]) == KINDS_MADE, other
    check = removal.check()
    assert (check.name, check.ok, check.removed) == (CHECK_NAME, True, len(KINDS_MADE))
    assert runs["a"]["security-group"] in check.detail
    assert "batch-job x1" in check.detail


def test_a_dry_run_lists_what_would_go_and_removes_nothing(runs):
    check = cloud_resources_check(
        None, RUN_A, log_groups=[LOG_GROUP], dry_run=True, clients=Clients()
    )

    assert not check.ok  # something would go: a dry run does not pass as clean
    assert check.detail.startswith(f"would remove {len(KINDS_MADE)}: ")
    for kind, rid in runs["a"].items():
        if kind != "cluster":
            assert rid in check.detail, kind
    assert runs["b"]["security-group"] not in check.detail
    for ids in runs.values():
        assert _present(ids) == KINDS_MADE


def test_tagged_run_ids_names_each_run_that_still_holds_resources(runs):
    held = tagged_run_ids(clients=Clients(), log_groups=[LOG_GROUP])

    assert set(held) == {RUN_A, RUN_B, LOOKALIKE}  # the untagged belong to no run
    assert {r.id for r in held[RUN_B]} == {v for k, v in runs["b"].items() if k != "cluster"}
    remove_run_resources(RUN_A, Clients(), log_groups=[LOG_GROUP])
    assert set(tagged_run_ids(clients=Clients(), log_groups=[LOG_GROUP])) == {RUN_B, LOOKALIKE}


def test_a_run_id_that_could_match_other_runs_or_untagged_resources_is_refused(runs):
    for run_id in ["", "*", "sciflow", LOOKALIKE, f"{RUN_A}*"]:
        with pytest.raises(InputError, match="only by an exact sciflow:run-id tag"):
            remove_run_resources(run_id, Clients(), log_groups=[LOG_GROUP])
    for ids in runs.values():
        assert _present(ids) == KINDS_MADE


def test_an_empty_or_unknown_scope_is_refused():
    assert resolve_scope(["all"]) == {"local", "intermediates", "cloud"}
    assert resolve_scope(["cloud"]) == {"cloud"}
    with pytest.raises(InputError, match="scope is empty"):
        resolve_scope([])
    with pytest.raises(InputError, match=r"scope names \['everything'\]"):
        resolve_scope(["cloud", "everything"])


def test_a_throttled_delete_is_retried_by_botocore_and_succeeds(runs, no_backoff):
    """Injected below botocore's retries (moto never throttles): one retry layer."""
    clients = Clients()
    attempts = inject_errors(clients("ecs"), "StopTask", [("ThrottlingException", 400)])

    removal = remove_run_resources(RUN_A, clients, log_groups=[LOG_GROUP])

    assert removal.ok, removal.check().detail
    assert attempts == ["StopTask", "StopTask"]
    assert len(no_backoff) == 1
    assert _present(runs["a"]) == set()


def test_a_delete_that_fails_for_good_is_reported_and_the_others_still_go(runs, no_backoff):
    clients = Clients()
    inject_errors(clients("logs"), "DeleteLogStream", [("ThrottlingException", 400)], forever=True)

    check = remove_run_resources(RUN_A, clients, log_groups=[LOG_GROUP]).check()

    assert not check.ok
    assert f"failed: log-stream {runs['a']['log-stream']}" in check.detail
    assert "ThrottlingException" in check.detail
    assert check.removed == len(KINDS_MADE) - 1
    assert _present(runs["a"]) == {"log-stream"}
    assert _present(runs["b"]) == KINDS_MADE


def test_a_unit_that_may_not_delete_gets_the_permission_named_and_nothing_goes(runs):
    """AccessDeniedException injected on the first delete (moto's server does not enforce IAM)."""
    clients = Clients()
    inject_errors(clients("ecs"), "StopTask", [("AccessDeniedException", 400)], forever=True)

    with pytest.raises(CleanupDenied, match=r"grant ecs:StopTask .*nothing was removed"):
        remove_run_resources(RUN_A, clients, log_groups=[LOG_GROUP])

    for ids in runs.values():
        assert _present(ids) == KINDS_MADE


def test_a_denied_check_fails_the_record_with_the_permission(runs, monkeypatch):
    clients = Clients()
    inject_errors(clients("ecs"), "StopTask", [("AccessDeniedException", 400)], forever=True)
    monkeypatch.setattr(resources, "Clients", lambda account=None: clients)
    unit = ComputeUnit(name="lab", platform="aws", region=REGION, storage_root="s3://lab/runs")

    (check,) = run_checks(unit, RUN_A, scope={"cloud"})

    assert (check.name, check.ok) == (CHECK_NAME, False)
    assert "grant ecs:StopTask" in check.detail


def test_the_batch_job_cleanup_runs_in_is_spared(runs):
    own = runs["a"]["batch-job"]

    removal = remove_run_resources(RUN_A, Clients(), log_groups=[LOG_GROUP], spare={own})

    assert removal.ok
    assert _present(runs["a"]) == {"batch-job"}
    assert resources.own_batch_job({"AWS_BATCH_JOB_ID": f"{own}#2"}) == own
    assert resources.own_batch_job({}) is None


def test_a_local_unit_has_no_cloud_account_to_clean():
    (check,) = run_checks(local_unit(), RUN_A, scope={"cloud"})
    assert (check.name, check.ok) == (CHECK_NAME, True)
    assert "no cloud account" in check.detail


def test_every_family_sciflow_registers_is_one_cleanup_looks_in():
    from tasks.training.ecs import SERVER_FAMILY, WORKER_FAMILY

    assert SERVER_FAMILY.startswith(resources.FAMILY_PREFIX)
    assert WORKER_FAMILY.startswith(resources.FAMILY_PREFIX)
    assert dask.TASK_FAMILY_PREFIX.startswith(resources.FAMILY_PREFIX)


def test_the_dask_log_names_are_the_ones_the_dask_factory_uses():
    assert (resources.DASK_LOG_GROUP, resources.DASK_LOG_PREFIX) == (
        dask.DEFAULT_LOG_GROUP,
        dask.LOG_STREAM_PREFIX,
    )


# --- ordering: a Stubber, since moto deletes a security group its tasks still use ----------


def _stubbed(service: str) -> tuple[Any, Stubber]:
    """A client that reaches nothing: every call must be queued on its Stubber, in order."""
    made = boto3.client(
        service,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106
        endpoint_url="http://127.0.0.1:9",
    )
    return made, Stubber(made)


TASK = Resource("ecs-task", "arn:aws:ecs:us-east-1:123456789012:task/dask/0123", "dask")
GROUP = Resource("security-group", "sg-0123456789abcdef0")


def test_a_security_group_in_use_is_deleted_after_its_tasks_stop():
    """Stubber: moto deletes a group whose network interfaces a task still holds; AWS refuses
    with DependencyViolation until the stopped task has released them. The stubs also pin the
    order: StopTask before the first DeleteSecurityGroup."""
    ecs, ecs_stub = _stubbed("ecs")
    ec2, ec2_stub = _stubbed("ec2")
    calls: list[str] = []
    for stubbed in (ecs, ec2):
        stubbed.meta.events.register(
            "before-parameter-build", lambda model, **_: calls.append(model.name)
        )
    ecs_stub.add_response(
        "stop_task",
        {"task": {"taskArn": TASK.id}},
        {"cluster": "dask", "task": TASK.id, "reason": "cleanup"},
    )
    ec2_stub.add_client_error(
        "delete_security_group",
        "DependencyViolation",
        "resource sg-0123 has a dependent object",
        400,
    )
    ec2_stub.add_response("delete_security_group", {}, {"GroupId": GROUP.id})
    waits: list[float] = []

    with ecs_stub, ec2_stub:
        removed, failed = remove_resources(
            [GROUP, TASK], Clients(ecs=ecs, ec2=ec2), "cleanup", sleep=waits.append
        )

    assert calls == ["StopTask", "DeleteSecurityGroup", "DeleteSecurityGroup"]
    assert (removed, failed) == ([TASK, GROUP], [])
    assert waits == [resources.IN_USE_POLL_S]
    ecs_stub.assert_no_pending_responses()
    ec2_stub.assert_no_pending_responses()


def test_a_security_group_still_in_use_after_the_wait_is_reported():
    """Stubber, as above: DependencyViolation on every try within the wait."""
    ec2, ec2_stub = _stubbed("ec2")
    for _ in range(3):
        ec2_stub.add_client_error("delete_security_group", "DependencyViolation", "in use", 400)
    clock = iter(range(100))
    waits: list[float] = []

    with ec2_stub:
        removed, failed = remove_resources(
            [GROUP],
            Clients(ec2=ec2),
            in_use_wait_s=2.5,
            sleep=waits.append,
            clock=lambda: float(next(clock)),
        )

    assert removed == []
    assert [(r, "DependencyViolation" in why) for r, why in failed] == [(GROUP, True)]
    assert len(waits) == 2


def test_every_secret_a_run_makes_is_named_where_cleanup_looks():
    assert dask.TLS_SECRET_PREFIX.startswith(resources.SECRET_PREFIX)
