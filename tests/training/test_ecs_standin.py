"""The parameter server on ECS for real: the flow's tasks run in the stand-in, found by Cloud Map.

``distributed_training(strategy="parameter_server")`` on an AWS unit whose Fargate settings
point at a VPC in the stand-in's block: moto's ECS runs the server and worker tasks as
processes in network namespaces holding the addresses moto reports; the workers reach the
server by its Cloud Map name (``ps-<run>.sciflow.local``, which only the tasks' hosts files
resolve); every process reads config.json and the training set from moto's S3 and the server
writes model, metrics and curves back; their event lines come back through CloudWatch Logs.
The same flow on the local unit, on the same data, is the reference.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.testing.utilities import prefect_test_harness

from blocks.compute_unit import ComputeUnit
from flows import distributed_training as module
from flows.distributed_training import distributed_training
from tasks.aws.tags import RUN_ID_TAG, from_aws
from tasks.errors import InputError
from tasks.training.data import write_synthetic_set
from tasks.training.ecs import service_name_for
from tests.training.moto_ecs import REGION, cloud_map, fargate_settings

BUCKET = "ps-standin"
DATASET = f"s3://{BUCKET}/set"
UNIT = "ps-standin"
LOG_GROUP = "/sciflow/train"
# Small and convex (a per-pixel affine map), as the local convergence test: 32 samples,
# 2 workers, 8 epochs of 8 updates of 4 samples each.
SETTINGS: dict[str, Any] = {
    "model": "linear",
    "strategy": "parameter_server",
    "procs_per_node": 2,
    "batch_size": 8,
    "epochs": 8,
    "lr": 5e-2,
    "checkpoint_every": 100,
    "loader_workers": 0,
    "device": "cpu",
}
# tests/training/test_parameter_server.py: the asynchronous server's final validation loss
# varies with its update order; two runs agree within this (relative).
LOSS_TOLERANCE = 0.10


@pytest.fixture(scope="module", autouse=True)
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API: these tests run flows (tests/training's conftest has none)."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def unit(ecs_standin: Any, standin_network: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """An AWS unit on a VPC in the stand-in's block, its log group, and the training set."""
    network = standin_network.make_vpc()
    boto3.client("logs", region_name=REGION).create_log_group(logGroupName=LOG_GROUP)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    write_synthetic_set(DATASET, train=32, validation=8, size=16, seed=5)
    ComputeUnit(
        name=UNIT,
        platform="aws",
        region=REGION,
        storage_root=f"s3://{BUCKET}/runs",
        readable_prefixes=[DATASET],
        fargate=fargate_settings(network, log_group=LOG_GROUP),
    ).save(UNIT, overwrite=True)
    monkeypatch.setattr(module, "ECS_POLL_S", 0.2)
    return UNIT


def _artifacts(flow_run_id: Any) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def _keys(prefix: str) -> set[str]:
    pages = boto3.client("s3", region_name=REGION).get_paginator("list_objects_v2")
    return {
        o["Key"].removeprefix(prefix)
        for page in pages.paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    }


def test_the_parameter_server_trains_on_ecs_as_it_does_locally(unit: str, ecs_standin: Any) -> None:
    state = distributed_training(DATASET, settings=SETTINGS, unit=unit, return_state=True)
    assert state.is_completed(), state.message
    on_ecs, run_id = state.result(), state.state_details.flow_run_id
    local = distributed_training(DATASET, settings=SETTINGS, unit="local")

    # Same schedule, same loss as the local processes, within the local tests' tolerance.
    assert on_ecs.steps == local.steps == 64
    assert on_ecs.val_loss == pytest.approx(local.val_loss, rel=LOSS_TOLERANCE)
    assert on_ecs.final_loss == pytest.approx(local.final_loss, rel=LOSS_TOLERANCE)

    # One server and two workers ran as tasks of this run and exited 0.
    ecs = boto3.client("ecs", region_name=REGION)
    arns = ecs.list_tasks(cluster="sciflow", desiredStatus="STOPPED")["taskArns"]
    tasks = ecs.describe_tasks(cluster="sciflow", tasks=arns, include=["TAGS"])["tasks"]
    families = sorted(t["taskDefinitionArn"].split("/")[-1].split(":")[0] for t in tasks)
    assert families == ["sciflow-ps-server", "sciflow-ps-worker", "sciflow-ps-worker"]
    assert {from_aws(t["tags"])[RUN_ID_TAG] for t in tasks} == {str(run_id)}
    assert [ecs_standin.exits[arn] for arn in arns] == [0, 0, 0]
    assert not ecs_standin.containers
    # The workers were given the server's Cloud Map name, nothing else, to connect to.
    host = f"{service_name_for(str(run_id))}.sciflow.local"
    for task in tasks:
        if "sciflow-ps-worker" in task["taskDefinitionArn"]:
            command = ecs_standin.commands[task["taskArn"]]
            assert command[command.index("--server") + 1] == f"{host}:29500"
    # ... and its task definitions are gone with the run (cleanup by tag).
    for arn in {task["taskDefinitionArn"] for task in tasks}:
        assert _task_definition_status(ecs, arn) in ("gone", "DELETE_IN_PROGRESS"), arn
    # ... and the service is gone with the run.
    assert not cloud_map().list_services()["Services"]
    # The tasks proved the run token to each other (they refuse to start without it): it
    # reached them as a Secrets Manager secret, which is gone with the run.
    secrets = boto3.client("secretsmanager", region_name=REGION).list_secrets()["SecretList"]
    assert not [s for s in secrets if s["Name"].startswith("sciflow/run-token/")]

    # Outputs in S3, where the server task wrote them.
    prefix = f"runs/{unit}/{run_id}/training/"
    written = _keys(prefix)
    for name in ("config.json", "model/model.pt", "metrics.json", "loss.png"):
        assert name in written, (name, sorted(written))
    assert on_ecs.metrics == f"s3://{BUCKET}/{prefix}metrics.json"
    assert not any("/launches/" in key for key in _keys(f"runs/{unit}/{run_id}/"))

    # The tasks' events came back through CloudWatch: progress to the end.
    progress = [a for a in _artifacts(run_id) if a.type == "progress"]
    assert [a.data for a in progress] == [100.0]


def _task_definition_status(ecs: Any, arn: str) -> str:
    """A revision's status; "gone" once moto has deleted it (AWS keeps DELETE_IN_PROGRESS)."""
    try:
        return ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]["status"]
    except ecs.exceptions.ClientException:
        return "gone"


def test_a_workers_error_in_its_task_is_the_flows_error(unit: str, ecs_standin: Any) -> None:
    """A sample the flow host does not check (only the first is) fails a worker on ECS."""
    wrong = io.BytesIO()
    np.save(wrong, np.zeros((1, 8, 8), dtype=np.float32))
    key = "set/samples/00005_input.npy"
    boto3.client("s3", region_name=REGION).put_object(Bucket=BUCKET, Key=key, Body=wrong.getvalue())

    with pytest.raises(InputError, match=rf"{key} holds an image of shape \(1, 8, 8\)"):
        distributed_training(DATASET, settings=SETTINGS, unit=unit)

    assert ecs_standin.exits
    assert not ecs_standin.containers
    assert not cloud_map().list_services()["Services"]
