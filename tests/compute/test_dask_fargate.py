"""Dask on Fargate for real: sciflow's cluster runs as processes on the ECS stand-in.

The scheduler and worker tasks dask-cloudprovider starts through moto are processes in network
namespaces holding the addresses moto reports (tests/standin). The workers get the Prefect API
URL only from Secrets Manager, and reach it and moto through relays on the stand-in's bridge;
they see the flow host's disk only because the stand-in shares it, so the test checks that
they read the input by URI into a scratch directory of their own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import nibabel as nib
import numpy as np
import pytest

from blocks.compute_unit import ComputeUnit
from tasks.mr.io import write_mrd
from tasks.mr.phantom import make_phantom, phantom_acquisition
from tasks.storage.objects import staged_name
from tests.standin.fargate import (
    REGION,
    bridge_api_url,
    enable_long_task_arns,
    prefect_api_secret,
    standin_unit,
)

BUCKET = "lab-sciflow"
UNIT = "standin"
OPTIONS = {"method": "ac", "recon": "b1"}


@pytest.fixture
def fargate_unit(ecs_standin, standin_network) -> Iterator[ComputeUnit]:
    """The ``standin`` unit, saved as a block, with its bucket in moto.

    The flow host (this process) talks to Prefect by the bridge address too while it runs,
    as a flow run on ECS and its Dask workers share one API URL: Prefect's Dask runner ships
    the flow's settings, API URL and key included, with every task it submits, and a worker
    runs the task under those rather than its own environment's.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    made = standin_network.make_vpc(cluster="sciflow")
    enable_long_task_arns()
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    url = bridge_api_url(standin_network)
    unit = standin_unit(UNIT, made, prefect_api_secret(url), f"s3://{BUCKET}/runs")
    unit.readable_prefixes = [f"s3://{BUCKET}/inputs"]
    unit.save(UNIT, overwrite=True)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield unit


@pytest.fixture
def mrd_input(tmp_path) -> Path:
    phantom = make_phantom(48, 48, 4, amplitude=40.0, correlation=0.3, seed=5)
    signal, noise = phantom_acquisition(phantom, slices=8, noise_samples=48 * 400, seed=6)
    return write_mrd(
        tmp_path / "phantom.h5", signal, noise, fov_mm=(256.0, 256.0, 5.0), dwell_s=5e-6
    )


def _snr(uri: str, tmp_path: Path) -> np.ndarray:
    if uri.startswith("s3://"):
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        local = tmp_path / "fetched" / Path(key).name
        local.parent.mkdir(exist_ok=True)
        boto3.client("s3", region_name=REGION).download_file(bucket, key, str(local))
        uri = str(local)
    return nib.load(uri).get_fdata()


def _task_runs(run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )


def test_mr_reconstruction_on_fargate_matches_the_local_run_and_leaves_nothing(
    fargate_unit, mrd_input, tmp_path
):
    from flows.mr_reconstruction import mr_reconstruction
    from tasks.compute.launches import LaunchRecord

    s3 = boto3.client("s3", region_name=REGION)
    s3.upload_file(str(mrd_input), BUCKET, "inputs/phantom.h5")
    signal = f"s3://{BUCKET}/inputs/phantom.h5"

    on_fargate = mr_reconstruction(signal=signal, options=OPTIONS, unit=UNIT)
    local = mr_reconstruction(
        signal=str(mrd_input), options=OPTIONS, output=str(tmp_path / "local")
    )

    np.testing.assert_array_equal(_snr(on_fargate.snr, tmp_path), _snr(local.snr, tmp_path))
    assert on_fargate.median_snr == local.median_snr
    run_id = on_fargate.output.rstrip("/").rsplit("/", 1)[-1]

    # The workers ran the slice batches and reported them to Prefect through the secret's URL.
    batches = [t for t in _task_runs(run_id) if t.name.startswith("snr_for_slices")]
    assert len(batches) == 2
    assert all(t.state.is_completed() for t in batches)
    # They read the input by its URI into their own scratch, not the flow host's.
    worker_scratch = Path(tempfile.gettempdir()) / "sciflow-scratch" / run_id
    try:
        assert [p.name for p in (worker_scratch / "slices").iterdir()] == [staged_name(signal)]
    finally:
        shutil.rmtree(worker_scratch, ignore_errors=True)

    # Everything the cluster started or registered is gone; the unit's own things stay.
    ecs = boto3.client("ecs", region_name=REGION)
    cluster = fargate_unit.fargate.cluster_arn
    assert ecs.list_tasks(cluster=cluster, desiredStatus="RUNNING")["taskArns"] == []
    stopped = ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"]
    assert len(stopped) == 3  # scheduler and two workers
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == []
    assert ecs.list_clusters()["clusterArns"] == [cluster]
    groups = boto3.client("ec2", region_name=REGION).describe_security_groups()["SecurityGroups"]
    assert {g["GroupName"] for g in groups} <= {"default", "standin"}
    assert LaunchRecord.of_run(fargate_unit, run_id).launches() == []


def test_the_scheduler_speaks_tls_only_with_the_clusters_certificates(fargate_unit):
    """Guards against a plaintext scheduler: anything the security group admits could submit
    pickled functions that run as the task role. The scheduler is tls://, a client without the
    cluster's certificates (other ones, or plain TCP) is refused while the flow host's works,
    and the certificates and the Prefect API reach the tasks as ECS `secrets`, never in clear
    `environment` or RunTask overrides; the cluster's TLS secret is gone after it."""
    from distributed import Client
    from distributed.security import Security

    from tasks.compute.dask import dask_task_runner, recorded_ecs_cluster

    ecs = boto3.client("ecs", region_name=REGION)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    runner = dask_task_runner(fargate_unit, "small", {"sciflow:run-id": "tls-check"})
    with recorded_ecs_cluster(**runner.cluster_kwargs) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        with Client(cluster, timeout=30) as client:  # the flow host: the cluster's certificates
            client.wait_for_workers(2, timeout=60)
            assert client.submit(sum, [1, 2]).result(timeout=30) == 3
            assert all(w.startswith("tls://") for w in client.scheduler_info()["workers"])
        with pytest.raises(OSError, match="certificate"):
            Client(address, security=Security.temporary(), timeout=10)
        with pytest.raises(OSError, match=r"(?i)closed|reset|timed out"):  # no TLS handshake
            Client(address.replace("tls://", "tcp://"), timeout=10)

        [tls_secret] = [
            s
            for s in secrets.list_secrets()["SecretList"]
            if s["Name"].startswith("sciflow-dask-tls-")
        ]
        pem = secrets.get_secret_value(SecretId=tls_secret["ARN"])["SecretString"]
        arns = ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]
        definitions = [
            ecs.describe_task_definition(taskDefinition=a)["taskDefinition"] for a in arns
        ]
        tasks = ecs.describe_tasks(
            cluster=cluster.cluster_arn,
            tasks=[cluster.scheduler.task_arn, *(w.task_arn for w in cluster.workers.values())],
        )["tasks"]
    by_container = {
        d["containerDefinitions"][0]["name"]: d["containerDefinitions"][0] for d in definitions
    }
    worker, scheduler = by_container["dask-worker"], by_container["dask-scheduler"]
    assert {s["name"] for s in worker["secrets"]} >= {
        "PREFECT_API_URL",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY",
    }
    assert "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY" in {
        s["name"] for s in scheduler["secrets"]
    }
    in_clear = json.dumps([definitions, [t["overrides"] for t in tasks]])
    assert "PRIVATE KEY" not in in_clear
    assert "CERTIFICATE" not in in_clear
    assert "PRIVATE KEY" in pem  # what the secret held, and only it
    assert "PREFECT_API_URL" not in json.dumps(
        [c.get("environment") for c in by_container.values()]
    )
    assert [s["Name"] for s in secrets.list_secrets()["SecretList"]] == ["sciflow/prefect-api-url"]
