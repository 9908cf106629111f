"""The distributed_training flow on an AWS unit: DDP as a Batch job, the parameter server on ECS.

moto runs no container: each test puts in S3 the metrics.json the processes would have
written, and checks what the flow asked AWS for (the Batch submission, the ECS tasks and the
Cloud Map service) and what it made of the metrics. moto's Batch finishes the job at once;
moto's ECS tasks move through every state as the flow polls them (``lifecycle``). The
processes themselves run against moto's S3 in tests/training/test_ecs_local.py.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from blocks.compute_unit import DEFAULT_LIMITS, ComputeUnit
from flows import distributed_training as module
from flows.distributed_training import distributed_training
from tasks.aws.tags import RUN_ID_TAG, UNIT_TAG, from_aws
from tasks.compute import batch_run
from tasks.compute.batch import ContainerSpec, ensure_job_definition, job_definition_spec
from tasks.compute.launches import LaunchRecord
from tasks.errors import InputError, SciflowError
from tasks.storage.objects import ObjectStore
from tasks.training.config import TrainConfig
from tasks.training.data import write_synthetic_set
from tasks.training.ecs import ParameterServerLaunch, plan_from_unit, service_name_for
from tests.compute.moto_batch import QUEUE, make_job_queue, record_calls
from tests.compute.moto_batch import use_batch_without_docker as batch_without_docker
from tests.training import moto_ecs
from tests.training.moto_ecs import (
    REGION,
    Recorder,
    cloud_map,
    fargate_settings,
    make_unit,
    set_exit_code,
)

BUCKET = "sciflow-train"
DATASET = f"s3://{BUCKET}/set"
OUTPUT = f"s3://{BUCKET}/train"
# What rank 0 (or the server) would have written at the end.
METRICS = {
    "strategy": "ddp",
    "steps": 12,
    "resumed_from": 0,
    "final_loss": 0.125,
    "val_loss": 0.25,
    "samples_per_s": 96.0,
    "samples_per_s_per_process": [24.0, 24.0, 24.0, 24.0],
    "data_wait_fraction": 0.05,
}
# The smallest valid PNG: one grey pixel.
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010800000000"
    "3a7e9b550000000a49444154789c63680000008200816ff15a2d0000000049454e44ae426082"
)
# The shared fixtures (as imported names they would read as unused, then redefined).
lifecycle, network = moto_ecs.lifecycle, moto_ecs.network


def _s3() -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def bucket(aws: str) -> str:
    """A bucket with a 32-sample training set of 16x16 images at DATASET."""
    _s3().create_bucket(Bucket=BUCKET)
    write_synthetic_set(DATASET, train=32, validation=8, size=16, seed=1)
    return BUCKET


def _write_metrics(**changes: Any) -> None:
    """Rank 0's last writes: the metrics and the loss curves the run summary shows."""
    body = json.dumps(METRICS | changes).encode()
    _s3().put_object(Bucket=BUCKET, Key="train/metrics.json", Body=body)
    _s3().put_object(Bucket=BUCKET, Key="train/loss.png", Body=PNG_1X1)


def _read(uri: str) -> bytes:
    key = uri.removeprefix(f"s3://{BUCKET}/")
    return _s3().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _batch_unit(name: str, definitions: dict[str, str]) -> None:
    ComputeUnit(
        name=name,
        platform="aws",
        region=REGION,
        storage_root=f"s3://{BUCKET}/runs",
        readable_prefixes=[DATASET],
        writable_prefixes=[OUTPUT],
        batch_job_queue=QUEUE,
        batch_job_definitions=definitions,
    ).save(name, overwrite=True)


def _ecs_unit(name: str, network: dict[str, Any], **fargate: Any) -> None:
    ComputeUnit(
        name=name,
        platform="aws",
        region=REGION,
        storage_root=f"s3://{BUCKET}/runs",
        readable_prefixes=[DATASET],
        writable_prefixes=[OUTPUT],
        fargate=fargate_settings(network, **fargate),
    ).save(name, overwrite=True)


def _finished_job_id(batch: Any) -> str:
    (summary,) = batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
    return summary["jobId"]


def _train(unit: str, **params: Any) -> Any:
    settings: dict[str, Any] = {"model": "linear", "procs_per_node": 2, "batch_size": 8}
    return distributed_training(
        DATASET, settings=settings | {"max_steps": 12} | params, output=OUTPUT, unit=unit
    )


# DDP: one Batch job.


def test_ddp_on_two_nodes_is_one_multinode_batch_job(
    aws: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_without_docker(aws)
    make_job_queue(QUEUE)
    batch = boto3.client("batch", region_name=REGION)
    spec = job_definition_spec(ContainerSpec(image="repo/sciflow:train"), node_count=2)
    definition, _ = ensure_job_definition(batch, spec)
    _batch_unit("train-batch", {"training": definition})
    _write_metrics()
    calls: list[tuple[str, dict[str, Any]]] = []
    real_submit = batch_run.submit_job

    def recording_submit(client: Any, **kwargs: Any) -> Any:
        recorded = record_calls(client)
        job = real_submit(client, **kwargs)
        calls.extend(recorded)
        return job

    monkeypatch.setattr(batch_run, "submit_job", recording_submit)
    monkeypatch.setattr(module, "BATCH_POLL_S", 0.1)

    result = _train("train-batch", nodes=2)

    (submitted,) = [params for name, params in calls if name == "SubmitJob"]
    assert submitted["jobDefinition"] == definition
    assert submitted["jobQueue"].endswith(f"job-queue/{QUEUE}")
    assert submitted["tags"][UNIT_TAG] == "train-batch"
    run_id = submitted["tags"][RUN_ID_TAG]
    assert submitted["jobName"] == f"sciflow-training-{run_id[:8]}"
    # Two nodes: the multinode class's wall time bounds each attempt.
    assert submitted["timeout"] == {
        "attemptDurationSeconds": DEFAULT_LIMITS["multinode"].wall_time_s
    }
    # A reclaimed Spot node restarts the job (which resumes); any other failure ends it.
    assert submitted["retryStrategy"] == {
        "attempts": 4,
        "evaluateOnExit": [
            {"onStatusReason": "Host EC2*", "action": "RETRY"},
            {"onReason": "*", "action": "EXIT"},
        ],
    }
    overrides = submitted["nodeOverrides"]
    assert overrides["numNodes"] == 2
    config_uri = f"{OUTPUT}/config.json"
    expected = [
        "python", "-m", "tasks.training.launch", "node",
        "--config", config_uri,
        "--procs-per-node", "2",
        "--max-restarts", "1",
    ]  # fmt: skip
    ranges = overrides["nodePropertyOverrides"]
    assert [r["targetNodes"] for r in ranges] == ["0:0", "1:1"]
    assert all(r["containerOverrides"]["command"] == expected for r in ranges)
    cfg = TrainConfig.model_validate_json(_read(config_uri))
    assert (cfg.nodes, cfg.procs_per_node, cfg.processes) == (2, 2, 4)
    assert (cfg.strategy, cfg.dataset, cfg.output) == ("ddp", DATASET, OUTPUT)
    assert cfg.max_steps == 12
    (job,) = batch.describe_jobs(jobs=[_finished_job_id(batch)])["jobs"]
    assert job["tags"][RUN_ID_TAG] == run_id

    assert result.steps == 12
    assert result.resumed_from == 0
    assert (result.final_loss, result.val_loss) == (0.125, 0.25)
    assert result.samples_per_s == 96.0
    assert result.data_wait_fraction == 0.05
    assert result.metrics == f"{OUTPUT}/metrics.json"
    assert result.model == f"{OUTPUT}/model/model.pt"
    assert result.curves == f"{OUTPUT}/loss.png"


def test_a_unit_without_a_training_job_definition_is_refused(aws: str, bucket: str) -> None:
    batch_without_docker(aws)
    make_job_queue(QUEUE)
    _batch_unit("train-no-def", {"simulation": "sim:1"})
    with pytest.raises(InputError, match=r"batch_job_definitions\['training'\]"):
        _train("train-no-def", nodes=2)
    assert not boto3.client("batch", region_name=REGION).list_jobs(jobQueue=QUEUE)["jobSummaryList"]


# The parameter server: ECS Fargate tasks and a Cloud Map service.


class _Recorded:
    """The launches the flow made, each with its RunTask bodies and Cloud Map calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, server_exit: int | None = None) -> None:
        self.launches: list[ParameterServerLaunch] = []
        self.recorders: list[Recorder] = []
        self.discovery: list[tuple[str, dict[str, Any]]] = []  # of the last launch
        self.definitions: dict[str, dict[str, Any]] = {}  # RegisterTaskDefinition, by family
        recorded = self

        def register(params: dict[str, Any], **_: Any) -> None:
            recorded.definitions[params["family"]] = params

        class Launch(ParameterServerLaunch):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                recorded.launches.append(self)
                recorded.recorders.append(Recorder(self.ecs))
                recorded.discovery = record_calls(self.discovery)
                self.ecs.meta.events.register(
                    "provide-client-params.ecs.RegisterTaskDefinition", register
                )

            def wait(self, timeout_s: float | None = None, on_line: Any = None) -> Any:
                if server_exit is not None and self.server_task:
                    set_exit_code(self.server_task, server_exit)
                return super().wait(timeout_s, on_line)

        monkeypatch.setattr(module, "ParameterServerLaunch", Launch)
        monkeypatch.setattr(module, "ECS_POLL_S", 0.02)


def test_the_parameter_server_runs_as_fargate_tasks_and_cleans_up(
    bucket: str, network: dict[str, Any], lifecycle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ecs_unit("train-ecs", network)
    _write_metrics(strategy="parameter_server", samples_per_s_per_process=[48.0, 48.0])
    recorded = _Recorded(monkeypatch)

    result = _train("train-ecs", strategy="parameter_server")

    (launch,) = recorded.launches
    (recorder,) = recorded.recorders
    assert len(launch.worker_tasks) == 2
    assert [(b["taskDefinition"].split("/")[-1], b["count"]) for b in recorder.run_tasks] == [
        ("sciflow-ps-server:1", 1),
        ("sciflow-ps-worker:1", 2),
    ]
    for body in recorder.run_tasks:
        assert body["launchType"] == "FARGATE"
        assert body["networkConfiguration"]["awsvpcConfiguration"] == {
            "subnets": network["subnets"],
            "securityGroups": [network["group"]],
            "assignPublicIp": "DISABLED",
        }
    ecs = boto3.client("ecs", region_name=REGION)
    run_id = from_aws(ecs.list_tags_for_resource(resourceArn=launch.server_task)["tags"])[
        RUN_ID_TAG
    ]
    for arn in launch.tasks:
        tags = from_aws(ecs.list_tags_for_resource(resourceArn=arn)["tags"])
        assert (tags[RUN_ID_TAG], tags[UNIT_TAG]) == (run_id, "train-ecs")
    # Every task was polled from PROVISIONING to STOPPED, never assumed.
    for arn in launch.tasks:
        seen = recorder.seen(arn)
        assert (seen[0], seen[-1]) == ("PROVISIONING", "STOPPED"), seen
        assert "RUNNING" in seen
    # The server's address went into the run's Cloud Map service; the service is gone now.
    service = service_name_for(run_id)
    (registered,) = [p for name, p in recorded.discovery if name == "RegisterInstance"]
    assert registered["Attributes"] == {
        "AWS_INSTANCE_IPV4": launch.server_ip,
        "AWS_INSTANCE_PORT": "29500",
    }
    assert [n for n, _ in recorded.discovery if n == "DeleteService"] == ["DeleteService"]
    assert not cloud_map().list_services()["Services"]
    # The run's end removed its task definitions (by its tag); what was registered:
    assert not ecs.list_task_definitions(familyPrefix="sciflow-ps")["taskDefinitionArns"]
    (container,) = recorded.definitions["sciflow-ps-worker"]["containerDefinitions"]
    assert container["command"][-2:] == ["--server", f"{service}.sciflow.local:29500"]
    # The run token reached both roles as a per-run secret, never in clear, and is gone now.
    for family in ("sciflow-ps-server", "sciflow-ps-worker"):
        (definition,) = recorded.definitions[family]["containerDefinitions"]
        (secret,) = definition["secrets"]
        assert secret["name"] == "SCIFLOW_RUN_TOKEN"
        assert f":secret:sciflow/run-token/{run_id}" in secret["valueFrom"]
        assert "SCIFLOW_RUN_TOKEN" not in {e["name"] for e in definition["environment"]}
    secrets = boto3.client("secretsmanager", region_name=REGION).list_secrets()["SecretList"]
    assert not [s for s in secrets if s["Name"].startswith("sciflow/run-token/")]
    # Each process exits by itself at the large class's wall time (Fargate has no GPUs).
    assert container["command"][4:6] == ["--wall-time-s", "21600"]
    assert DEFAULT_LIMITS["large"].wall_time_s == 21600
    assert container["command"][6:8] == ["--config", f"{OUTPUT}/config.json"]
    cfg = TrainConfig.model_validate_json(_read(f"{OUTPUT}/config.json"))
    assert (cfg.strategy, cfg.processes) == ("parameter_server", 2)
    assert not _recorded_launches(bucket)

    assert result.steps == 12
    assert (result.final_loss, result.val_loss) == (0.125, 0.25)
    assert result.samples_per_s == 96.0


def test_a_failed_server_fails_the_flow_naming_its_task(
    bucket: str, network: dict[str, Any], lifecycle: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _ecs_unit("train-ecs", network)
    _write_metrics()
    recorded = _Recorded(monkeypatch, server_exit=1)

    with pytest.raises(SciflowError, match=r"parameter server task \S+ exited 1") as caught:
        _train("train-ecs", strategy="parameter_server")

    (launch,) = recorded.launches
    assert launch.server_task in str(caught.value)
    assert not cloud_map().list_services()["Services"]
    assert not _recorded_launches(bucket)


def test_the_cancellation_hook_stops_the_tasks(
    bucket: str, network: dict[str, Any], lifecycle: int
) -> None:
    run_id = "11111111-2222-3333-4444-555555555555"
    plan = plan_from_unit(
        make_unit(network),
        run_id,
        {RUN_ID_TAG: run_id, UNIT_TAG: "lab"},
        f"{OUTPUT}/config.json",
        worker_count=2,
    )
    root = f"s3://{bucket}/runs/{run_id}"
    launch = ParameterServerLaunch(
        plan, None, poll_s=0.01, record=LaunchRecord(ObjectStore(), root)
    )
    launch.start()
    assert cloud_map().list_services()["Services"]

    # A fresh record, as the hook's process (or secure cleanup) would read it.
    record = LaunchRecord(ObjectStore(), root)
    assert {entry.kind for entry in record.launches()} == {"ecs-task", "cloudmap-service"}
    record.stop_all(f"Prefect flow run {run_id} was cancelling")

    described = boto3.client("ecs", region_name=REGION).describe_tasks(
        cluster="sciflow", tasks=launch.tasks
    )["tasks"]
    assert len(described) == 3
    assert {t["lastStatus"] for t in described} == {"STOPPED"}
    assert {t["stoppedReason"] for t in described} == {f"Prefect flow run {run_id} was cancelling"}
    assert not cloud_map().list_services()["Services"]
    assert record.launches() == []
    assert record.stop_all("again") == []  # nothing left: a no-op


def test_public_subnets_are_refused_for_the_parameter_server(
    bucket: str, network: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _ecs_unit("train-public", network, public_subnets=True)
    recorded = _Recorded(monkeypatch)
    with pytest.raises(InputError, match="public_subnets=True"):
        _train("train-public", strategy="parameter_server")
    assert not recorded.launches
    cluster = boto3.client("ecs", region_name=REGION).list_tasks(cluster="sciflow")
    assert not cluster["taskArns"]


@pytest.mark.parametrize("field", ["dataset", "output"])
def test_a_path_on_the_flow_host_is_refused_for_the_parameter_server(
    bucket: str, network: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any, field: str
) -> None:
    """Fargate tasks cannot see this machine's disk: refused before any task starts."""
    _ecs_unit("train-ecs", network)
    recorded = _Recorded(monkeypatch)
    local_set = str(tmp_path / "set")
    write_synthetic_set(local_set, train=32, validation=8, size=16, seed=1)
    paths = {"dataset": local_set, "output": str(tmp_path / "out")}
    dataset, output = (
        (paths["dataset"], OUTPUT) if field == "dataset" else (DATASET, paths["output"])
    )
    with pytest.raises(InputError, match=rf"{field}='/.*'.*'train-ecs'.*s3://"):
        distributed_training(
            dataset,
            settings={"model": "linear", "strategy": "parameter_server", "batch_size": 8},
            output=output,
            unit="train-ecs",
        )
    assert not recorded.launches
    assert not boto3.client("ecs", region_name=REGION).list_tasks(cluster="sciflow")["taskArns"]


def _recorded_launches(bucket: str) -> list[str]:
    """Launch record entries left anywhere in the bucket."""
    listed = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listed.get("Contents", []) if "/launches/" in o["Key"]]
