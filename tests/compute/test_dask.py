import pytest
from prefect_dask import DaskTaskRunner

from blocks.compute_unit import ComputeUnit, FargateDask, local_unit
from tasks.compute.dask import FARGATE_CLUSTER, LOCAL_CLUSTER, cluster_spec, dask_task_runner
from tasks.errors import InputError

TAGS = {"sciflow:run-id": "r1", "sciflow:unit": "lab", "sciflow:flow": "f"}


def aws_unit(public_subnets: bool) -> ComputeUnit:
    return ComputeUnit(
        name="lab",
        platform="aws",
        region="eu-west-1",
        storage_root="s3://bucket/runs",
        fargate=FargateDask(
            image="repo/sciflow:1",
            subnets=["subnet-a"],
            security_groups=["sg-1"],
            public_subnets=public_subnets,
            cluster_arn="arn:aws:ecs:eu-west-1:123456789012:cluster/sciflow",
            task_role_arn="arn:aws:iam::123456789012:role/task",
            execution_role_arn="arn:aws:iam::123456789012:role/exec",
            log_group="/sciflow/dask",
        ),
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
        "n_workers": 4,
        "worker_nthreads": 1,
        "worker_cpu": 4096,
        "worker_mem": 16384,
        "scheduler_cpu": 1024,
        "scheduler_mem": 4096,
        "scheduler_timeout": "15 minutes",
        "fargate_spot": False,
        "tags": TAGS,
        "skip_cleanup": True,
    }


def test_public_subnets_let_the_client_use_public_addresses():
    _, kwargs = cluster_spec(aws_unit(public_subnets=True), "small", TAGS)
    assert kwargs["fargate_use_private_ip"] is False


def test_gpu_size_asks_fargate_workers_for_gpus():
    _, kwargs = cluster_spec(aws_unit(public_subnets=False), "gpu", TAGS)
    assert kwargs["worker_gpu"] == 1


def test_fargate_kwargs_are_accepted_by_fargate_cluster():
    import inspect

    from dask_cloudprovider.aws import ECSCluster

    _, kwargs = cluster_spec(aws_unit(public_subnets=False), "gpu", TAGS)
    accepted = set(inspect.signature(ECSCluster.__init__).parameters)
    assert set(kwargs) <= accepted


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


class _FakeFargateCluster:
    """Stands in for FargateCluster's lifecycle only: moto runs no Dask (see the cloud-paths
    issue's stand-in); what is checked here is what the run's record holds when."""

    closed = False

    def __init__(self, **kwargs: object) -> None:
        self.cluster_arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/dask-1"
        self.scheduler = _Task(f"{self.cluster_arn}/sched")
        self.workers = {0: _Task(f"{self.cluster_arn}/w0"), 1: _Task(f"{self.cluster_arn}/w1")}

    def __enter__(self) -> "_FakeFargateCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        type(self).closed = True


def test_a_fargate_clusters_tasks_are_in_the_run_record_while_it_runs(tmp_path, monkeypatch):
    import dask_cloudprovider.aws

    from tasks.compute.dask import recorded_fargate_cluster
    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    monkeypatch.setattr(dask_cloudprovider.aws, "FargateCluster", _FakeFargateCluster)
    record = LaunchRecord(ObjectStore(), str(tmp_path))
    account = aws_unit(public_subnets=False).aws_account()
    with recorded_fargate_cluster(record, account, n_workers=2) as cluster:
        held = record.launches()
        assert sorted(launch.id for launch in held) == sorted(
            [cluster.scheduler.task_arn, *(w.task_arn for w in cluster.workers.values())]
        )
        assert {(launch.kind, launch.cluster, launch.account) for launch in held} == {
            ("ecs-task", cluster.cluster_arn, account)
        }
    assert _FakeFargateCluster.closed
    assert record.launches() == []


def test_a_fargate_cluster_left_by_a_failing_run_stays_recorded_for_the_stop_hook(
    tmp_path, monkeypatch
):
    import dask_cloudprovider.aws

    from tasks.compute.dask import recorded_fargate_cluster
    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    monkeypatch.setattr(dask_cloudprovider.aws, "FargateCluster", _FakeFargateCluster)
    record = LaunchRecord(ObjectStore(), str(tmp_path))
    with (
        pytest.raises(RuntimeError, match="boom"),
        recorded_fargate_cluster(record, aws_unit(public_subnets=False).aws_account()),
    ):
        raise RuntimeError("boom")
    assert len(record.launches()) == 3


def test_aws_runner_records_its_cluster_when_given_the_runs_record(tmp_path):
    from tasks.compute.dask import recorded_fargate_cluster
    from tasks.compute.launches import LaunchRecord
    from tasks.storage.objects import ObjectStore

    record = LaunchRecord(ObjectStore(), str(tmp_path))
    runner = dask_task_runner(aws_unit(public_subnets=False), "small", TAGS, record)
    assert runner.cluster_class is recorded_fargate_cluster
    assert runner.cluster_kwargs["record"] is record
    assert runner.cluster_kwargs["tags"] == TAGS
    local = dask_task_runner(local_unit(), "small", TAGS, record)
    assert local.cluster_class == LOCAL_CLUSTER
