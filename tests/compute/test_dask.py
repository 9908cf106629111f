import pytest
from prefect_dask import DaskTaskRunner

from blocks.compute_unit import DEFAULT_LIMITS, ComputeUnit, FargateDask, UnitLimits, local_unit
from tasks.compute.dask import (
    ECS_CLUSTER,
    FARGATE_CLUSTER,
    LOCAL_CLUSTER,
    cluster_spec,
    dask_task_runner,
    task_definitions,
)
from tasks.errors import InputError

TAGS = {"sciflow:run-id": "r1", "sciflow:unit": "lab", "sciflow:flow": "f"}
API_URL_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prefect-api-url-AbCdEf"  # noqa: S105
API_KEY_SECRET = "arn:aws:ssm:eu-west-1:123456789012:parameter/sciflow/prefect-api-key"  # noqa: S105


def aws_unit(public_subnets: bool, **fargate: object) -> ComputeUnit:
    settings = {
        "image": "repo/sciflow:1",
        "subnets": ["subnet-a"],
        "security_groups": ["sg-1"],
        "public_subnets": public_subnets,
        "cluster_arn": "arn:aws:ecs:eu-west-1:123456789012:cluster/sciflow",
        "task_role_arn": "arn:aws:iam::123456789012:role/task",
        "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
        "log_group": "/sciflow/dask",
        "prefect_api_url_secret": API_URL_SECRET,
    }
    return ComputeUnit(
        name="lab",
        platform="aws",
        region="eu-west-1",
        storage_root="s3://bucket/runs",
        fargate=FargateDask(**(settings | fargate)),
    )


def test_local_cluster_listens_on_loopback_with_the_units_worker_count():
    unit = local_unit()
    cls, kwargs = cluster_spec(unit, "small", TAGS)
    assert cls == LOCAL_CLUSTER
    assert kwargs["host"] == "127.0.0.1"
    assert kwargs["dashboard_address"].startswith("127.0.0.1:")
    assert kwargs["worker_dashboard_address"].startswith("127.0.0.1:")
    assert kwargs["n_workers"] == unit.dask_workers["small"].n_workers


def test_local_workers_are_threads_that_listen_only_on_loopback():
    # Threads: a script needs no __main__ guard (tests/test_readme_examples.py runs one).
    import os

    import psutil
    from distributed import LocalCluster

    _, kwargs = cluster_spec(local_unit(), "small", TAGS)
    before = set(psutil.Process(os.getpid()).children())  # the test's Prefect server
    with LocalCluster(**kwargs) as cluster:
        assert all(worker.__class__.__name__ == "Worker" for worker in cluster.workers.values())
        listening = [
            conn.laddr.ip
            for conn in psutil.Process(os.getpid()).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        ]
        started = set(psutil.Process(os.getpid()).children()) - before
    # scheduler, its dashboard, and each worker's comm and HTTP server
    assert len(listening) >= 2 + 2 * kwargs["n_workers"]
    assert set(listening) == {"127.0.0.1"}
    assert started == set()


def test_dask_info_lines_stay_out_of_runs_unless_debugging(monkeypatch):
    import logging

    from tasks.compute.dask import quiet_dask_logs
    from tasks.settings import get_settings

    quiet_dask_logs()
    assert logging.getLogger("distributed").getEffectiveLevel() == logging.WARNING
    monkeypatch.setenv("SCIFLOW_LOG_LEVEL", "DEBUG")
    get_settings.cache_clear()
    quiet_dask_logs()
    assert logging.getLogger("distributed").getEffectiveLevel() == logging.DEBUG
    logging.getLogger("distributed").setLevel(logging.WARNING)


def test_fargate_cluster_gets_exactly_the_units_settings():
    unit = aws_unit(public_subnets=False)
    cls, kwargs = cluster_spec(unit, "large", TAGS)
    assert cls == FARGATE_CLUSTER
    assert kwargs == {
        "image": "repo/sciflow:1",
        "region_name": "eu-west-1",
        "subnets": ["subnet-a"],
        "security_groups": ["sg-1"],
        "fargate_use_private_ip": True,
        "cluster_arn": "arn:aws:ecs:eu-west-1:123456789012:cluster/sciflow",
        "task_role_arn": "arn:aws:iam::123456789012:role/task",
        "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
        "cloudwatch_logs_group": "/sciflow/dask",
        "cloudwatch_logs_stream_prefix": "dask",
        "n_workers": 4,
        "worker_nthreads": 1,
        "worker_cpu": 4096,
        "worker_mem": 16384,
        "scheduler_cpu": 1024,
        "scheduler_mem": 4096,
        "scheduler_timeout": "15 minutes",
        "scheduler_extra_args": ["--protocol", "tls"],
        "worker_extra_args": ["--lifetime", "21600s"],  # the large class's wall time
        "fargate_spot": False,
        "tags": TAGS,
        "skip_cleanup": True,
    }


def test_workers_live_no_longer_than_their_classs_wall_time():
    limits = {"small": {**DEFAULT_LIMITS["small"].model_dump(), "wall_time_s": 900}}
    unit = aws_unit(public_subnets=False).model_copy(update={"limits": UnitLimits(**limits)})
    _, small = cluster_spec(unit, "small", TAGS)
    assert small["worker_extra_args"] == ["--lifetime", "900s"]
    _, large = cluster_spec(unit, "large", TAGS)
    assert large["worker_extra_args"] == ["--lifetime", f"{DEFAULT_LIMITS['large'].wall_time_s}s"]


def test_work_left_without_workers_fails_so_the_scheduler_can_fall_idle():
    """Dask reads the variable as distributed.scheduler.no-workers-timeout."""
    unit = aws_unit(public_subnets=False)
    cls, kwargs = cluster_spec(unit, "small", TAGS)
    bodies = task_definitions(unit, cls, kwargs)
    (scheduler,) = bodies["scheduler"]["containerDefinitions"]
    assert {
        "name": "DASK_DISTRIBUTED__SCHEDULER__NO_WORKERS_TIMEOUT",
        "value": "15 minutes",
    } in scheduler["environment"]
    (worker,) = bodies["worker"]["containerDefinitions"]
    assert "NO_WORKERS" not in str(worker["environment"])


def test_public_subnets_let_the_client_use_public_addresses():
    _, kwargs = cluster_spec(aws_unit(public_subnets=True), "small", TAGS)
    assert kwargs["fargate_use_private_ip"] is False


def test_gpu_size_without_ec2_gpu_capacity_is_refused_never_sent_to_fargate():
    with pytest.raises(InputError, match="Fargate has no GPUs and the unit names no EC2 GPU"):
        cluster_spec(aws_unit(public_subnets=False), "gpu", TAGS)


def test_gpu_size_with_a_gpu_capacity_provider_is_an_ecs_cluster_with_workers_on_ec2():
    unit = aws_unit(public_subnets=False, gpu_capacity_provider="sciflow-gpu")
    cls, kwargs = cluster_spec(unit, "gpu", TAGS)
    assert cls == ECS_CLUSTER
    assert kwargs["fargate_scheduler"] is True
    assert kwargs["fargate_workers"] is False
    assert kwargs["worker_gpu"] == 1
    assert kwargs["worker_task_kwargs"] == {
        "capacityProviderStrategy": [{"capacityProvider": "sciflow-gpu"}]
    }
    assert "fargate_spot" not in kwargs
    assert kwargs["cluster_arn"] == "arn:aws:ecs:eu-west-1:123456789012:cluster/sciflow"


def test_cpu_sizes_stay_on_fargate_when_the_unit_has_gpu_capacity():
    unit = aws_unit(public_subnets=False, gpu_capacity_provider="sciflow-gpu")
    cls, kwargs = cluster_spec(unit, "large", TAGS)
    assert cls == FARGATE_CLUSTER
    assert "worker_gpu" not in kwargs


def test_a_gpu_capacity_provider_needs_the_cluster_it_belongs_to():
    with pytest.raises(ValueError, match="gpu_capacity_provider needs cluster_arn"):
        FargateDask(
            image="i", subnets=["s"], security_groups=["g"], gpu_capacity_provider="sciflow-gpu"
        )


@pytest.mark.parametrize("size", ["small", "gpu"])
def test_cluster_kwargs_are_accepted_by_ecs_cluster(size):
    import inspect

    from dask_cloudprovider.aws import ECSCluster

    unit = aws_unit(public_subnets=False, gpu_capacity_provider="sciflow-gpu")
    _, kwargs = cluster_spec(unit, size, TAGS)
    accepted = set(inspect.signature(ECSCluster.__init__).parameters)
    assert set(kwargs) <= accepted


def test_the_gpu_request_by_its_body():
    """What ECS would be asked for the gpu class: EC2 GPU workers, a Fargate scheduler."""
    unit = aws_unit(
        public_subnets=False,
        gpu_capacity_provider="sciflow-gpu",
        prefect_api_key_secret=API_KEY_SECRET,
    )
    cls, kwargs = cluster_spec(unit, "gpu", TAGS)
    bodies = task_definitions(unit, cls, kwargs)
    worker, scheduler = bodies["worker"], bodies["scheduler"]
    assert worker["requiresCompatibilities"] == ["EC2"]
    assert scheduler["requiresCompatibilities"] == ["FARGATE"]
    [container] = worker["containerDefinitions"]
    assert container["name"] == "dask-worker"
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert (container["cpu"], container["memory"]) == (4096, 16384)
    assert container["secrets"] == [
        {"name": "PREFECT_API_URL", "valueFrom": API_URL_SECRET},
        {"name": "PREFECT_API_KEY", "valueFrom": API_KEY_SECRET},
    ]
    assert "resourceRequirements" not in scheduler["containerDefinitions"][0]


def test_workers_get_the_prefect_api_as_secrets_never_as_plain_environment():
    unit = aws_unit(public_subnets=False, prefect_api_key_secret=API_KEY_SECRET)
    cls, kwargs = cluster_spec(unit, "small", TAGS)
    bodies = task_definitions(unit, cls, kwargs)
    [worker] = bodies["worker"]["containerDefinitions"]
    assert {s["name"] for s in worker["secrets"]} == {"PREFECT_API_URL", "PREFECT_API_KEY"}
    assert "PREFECT" not in str(worker["environment"])
    [scheduler] = bodies["scheduler"]["containerDefinitions"]
    assert "secrets" not in scheduler  # the scheduler never calls Prefect
    for body in bodies.values():
        assert body["requiresCompatibilities"] == ["FARGATE"]
        assert body["executionRoleArn"] == "arn:aws:iam::123456789012:role/exec"
        assert {"key": "sciflow:run-id", "value": "r1"} in body["tags"]
        options = body["containerDefinitions"][0]["logConfiguration"]["options"]
        assert options["awslogs-group"] == "/sciflow/dask"
        assert options["awslogs-stream-prefix"] == kwargs["cloudwatch_logs_stream_prefix"]
    assert bodies["worker"]["family"].startswith("sciflow-dask-worker-")


@pytest.mark.parametrize(
    "missing", ["execution_role_arn", "task_role_arn", "prefect_api_url_secret"]
)
def test_an_aws_unit_without_roles_or_the_api_secret_is_refused_by_name(missing):
    unit = aws_unit(public_subnets=False, **{missing: None})
    with pytest.raises(InputError, match=rf"`fargate` lacks \['{missing}'\]"):
        cluster_spec(unit, "small", TAGS)


def test_aws_unit_without_fargate_settings_says_what_is_missing():
    unit = aws_unit(public_subnets=False).model_copy(update={"fargate": None})
    with pytest.raises(InputError, match="no `fargate` settings; expected image, subnets"):
        cluster_spec(unit, "small", TAGS)


def test_runner_wraps_the_cluster_spec():
    runner = dask_task_runner(aws_unit(public_subnets=False), "small", TAGS)
    assert isinstance(runner, DaskTaskRunner)
    assert runner.cluster_kwargs["tags"] == TAGS


class _Task:
    def __init__(self, arn: str) -> None:
        self.task_arn = arn


class _FakeCluster:
    """Stands in for the Dask cluster's lifecycle only (tests/compute/test_dask_fargate.py
    runs real ones on the stand-in): what the record holds, and what exists in moto, when."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs
        self.closed = False
        self.cluster_arn = str(kwargs["cluster_arn"])
        self.scheduler = _Task(f"{self.cluster_arn}/sched")
        self.workers = {0: _Task(f"{self.cluster_arn}/w0"), 1: _Task(f"{self.cluster_arn}/w1")}

    def __enter__(self) -> "_FakeCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True


@pytest.fixture
def fake_cluster(aws, monkeypatch):
    import tasks.compute.dask as dask_module

    monkeypatch.setattr(dask_module, "_tolerant_cluster_class", lambda path: _FakeCluster)


def _recorded(record, unit=None, **overrides):
    from tasks.compute.dask import recorded_ecs_cluster

    unit = unit or aws_unit(public_subnets=False)
    cls, kwargs = cluster_spec(unit, "small", TAGS)
    return recorded_ecs_cluster(
        cls, task_definitions(unit, cls, kwargs), unit.aws_account(), record, **kwargs | overrides
    )


def _active_definitions():
    import boto3

    ecs = boto3.client("ecs", region_name="eu-west-1")
    return ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]


def test_a_clusters_tasks_are_in_the_run_record_while_it_runs(tmp_path, fake_cluster):
    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    record = LaunchRecord(ObjectStore(), str(tmp_path))
    account = aws_unit(public_subnets=False).aws_account()
    with _recorded(record) as cluster:
        held = record.launches()
        assert sorted(launch.id for launch in held) == sorted(
            [cluster.scheduler.task_arn, *(w.task_arn for w in cluster.workers.values())]
        )
        assert {(launch.kind, launch.cluster, launch.account) for launch in held} == {
            ("ecs-task", cluster.cluster_arn, account)
        }
    assert cluster.closed
    assert record.launches() == []


def test_the_cluster_runs_on_sciflows_own_task_definitions_gone_after(tmp_path, fake_cluster):
    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    record = LaunchRecord(ObjectStore(), str(tmp_path))
    with _recorded(record) as cluster:
        active = _active_definitions()
        assert sorted(active) == sorted(
            [
                cluster.kwargs["scheduler_task_definition_arn"],
                cluster.kwargs["worker_task_definition_arn"],
            ]
        )
        assert all("sciflow-dask-" in arn for arn in active)
    assert _active_definitions() == []


def test_an_ecs_cluster_made_for_a_unit_without_one_is_deleted_after(tmp_path, fake_cluster):
    import boto3

    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    ecs = boto3.client("ecs", region_name="eu-west-1")
    record = LaunchRecord(ObjectStore(), str(tmp_path))
    with _recorded(record, cluster_arn=None) as cluster:
        [made] = ecs.describe_clusters(clusters=[cluster.cluster_arn], include=["TAGS"])["clusters"]
        assert made["status"] == "ACTIVE"
        assert {"key": "sciflow:run-id", "value": "r1"} in made["tags"]
    [gone] = ecs.describe_clusters(clusters=[cluster.cluster_arn])["clusters"]
    assert gone["status"] == "INACTIVE"


def test_a_cluster_left_by_a_failing_run_stays_recorded_for_the_stop_hook(tmp_path, fake_cluster):
    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    record = LaunchRecord(ObjectStore(), str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"), _recorded(record):
        raise RuntimeError("boom")
    assert len(record.launches()) == 3
    assert _active_definitions() == []


def test_aws_runner_records_its_cluster_when_given_the_runs_record(tmp_path):
    from tasks.compute.dask import recorded_ecs_cluster
    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    record = LaunchRecord(ObjectStore(), str(tmp_path))
    runner = dask_task_runner(aws_unit(public_subnets=False), "small", TAGS, record)
    assert runner.cluster_class is recorded_ecs_cluster
    assert runner.cluster_kwargs["record"] is record
    assert runner.cluster_kwargs["tags"] == TAGS
    assert runner.cluster_kwargs["cluster_class"] == FARGATE_CLUSTER
    assert set(runner.cluster_kwargs["definitions"]) == {"scheduler", "worker"}
    local = dask_task_runner(local_unit(), "small", TAGS, record)
    assert local.cluster_class == LOCAL_CLUSTER


def test_the_cluster_gets_the_units_account_and_tls_never_the_ambient_session(
    tmp_path, fake_cluster
):
    """Guards against dask-cloudprovider's clients falling back to aiobotocore's default
    session (ambient credentials, another account in Mode 2) and against a plaintext cluster:
    the cluster is handed clients in the unit's account (its role, in another moto account),
    region and endpoint, and per-cluster TLS required both ways; the TLS secret lives only as
    long as the cluster."""
    import boto3
    from pydantic import SecretStr

    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    role = "arn:aws:iam::111111111111:role/sciflow-runner"
    unit = aws_unit(public_subnets=False).model_copy(
        update={"role_arn": role, "external_id": SecretStr("lab-external-id")}
    )
    record = LaunchRecord(ObjectStore(), str(tmp_path))
    with _recorded(record, unit) as cluster:
        settings = cluster.kwargs["aws_clients"].settings("sts")
        secrets = boto3.client("secretsmanager", **settings)
        [tls] = secrets.list_secrets()["SecretList"]
    assert settings["region_name"] == "eu-west-1"
    assert settings["endpoint_url"] == boto3.client("sts").meta.endpoint_url  # moto's
    identity = boto3.client("sts", **settings).get_caller_identity()
    assert identity["Account"] == "111111111111"
    assert "aws_access_key_id" not in cluster.kwargs  # nothing for the default session
    assert cluster.kwargs["security"].require_encryption
    assert cluster.kwargs["scheduler_extra_args"] == ["--protocol", "tls"]
    assert tls["Name"].startswith("sciflow-dask-tls-")
    assert secrets.list_secrets()["SecretList"] == []
