"""The ECS tasks' commands, run on this machine against moto's S3: the containers' data path.

moto starts no container, so tests/training/test_ecs.py proves what is launched, not that it
trains. Here the very argv of the server and worker task definitions (``local_commands``:
``python`` and the Cloud Map name swapped for this interpreter and 127.0.0.1) run as real
processes that read config.json and the training set from S3 and write checkpoints, model,
metrics and curves back to S3, as the tasks would with their task role.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from tasks.aws.tags import run_tags
from tasks.training.config import TrainConfig
from tasks.training.data import write_synthetic_set
from tasks.training.ecs import ParameterServerPlan, local_commands, service_name_for
from tasks.training.launch import free_port, run_processes
from tests.conftest import FAKE_AWS_ENV

REGION = "us-east-1"
BUCKET = "ps-local"
RUN_ID = "0b7e2f3a-1c4d-4e5f-8a9b-0c1d2e3f4a5b"
WORKERS = 2


def _keys(prefix: str) -> set[str]:
    s3 = boto3.client("s3", region_name=REGION)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


def _read_json(key: str) -> dict[str, Any]:
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=key)["Body"]
    return json.loads(body.read())


def test_the_task_commands_train_from_s3_to_s3(aws: str) -> None:
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    dataset = f"s3://{BUCKET}/set"
    write_synthetic_set(dataset, train=16, validation=4, size=16, seed=3)
    cfg = TrainConfig(
        dataset=dataset,
        model="linear",
        strategy="parameter_server",
        procs_per_node=WORKERS,
        batch_size=8,
        epochs=3,
        max_steps=6,
        lr=1e-2,
        checkpoint_every=3,
        log_every=2,
        loader_workers=0,
        device="cpu",
        output=f"s3://{BUCKET}/runs/{RUN_ID}/training",
    )
    config_key = f"runs/{RUN_ID}/training/config.json"
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET, Key=config_key, Body=cfg.model_dump_json().encode()
    )
    plan = ParameterServerPlan(
        cluster="sciflow",
        image="sciflow:test",
        subnets=("subnet-1",),
        security_groups=("sg-1",),
        config_uri=f"s3://{BUCKET}/{config_key}",
        service_name=service_name_for(RUN_ID),
        tags=run_tags(RUN_ID, "lab", "train"),
        region=REGION,
        worker_count=cfg.processes,
        port=free_port(),
    )
    roles = local_commands(plan, host="127.0.0.1")
    assert plan.server_host not in " ".join(roles["worker"])
    commands = {
        "server": roles["server"],
        **{f"worker-{i}": roles["worker"] for i in range(1, WORKERS + 1)},
    }
    seen: list[tuple[str, dict[str, Any]]] = []

    # What the tasks get: no credentials of ours beyond moto's fakes, and moto's endpoint.
    run_processes(
        commands,
        on_event=lambda name, event: seen.append((name, event)),
        env={**FAKE_AWS_ENV, "AWS_ENDPOINT_URL": aws},
        timeout_s=120,
    )

    events = [event["event"] for _, event in seen]
    assert events.count("done") == 1
    (start,) = [e for _, e in seen if e["event"] == "start"]
    assert start["total_steps"] == 6
    steps = [e["step"] for _, e in seen if e["event"] == "step"]
    assert steps[-1] == 6
    prefix = f"runs/{RUN_ID}/training/"
    written = _keys(prefix)
    for name in ("config.json", "model/model.pt", "metrics.json", "loss.png"):
        assert name in written, (name, sorted(written))
    checkpoints = sorted(k for k in written if k.startswith("checkpoints/"))
    assert any("step-000000006" in k for k in checkpoints), checkpoints
    metrics = _read_json(prefix + "metrics.json")
    assert metrics["strategy"] == "parameter_server"
    assert metrics["world_size"] == WORKERS
    assert metrics["steps"] == 6
    assert len(metrics["samples_per_s_per_process"]) == WORKERS
    assert metrics["val_loss"] == pytest.approx(metrics["history"]["val_loss"][-1])
