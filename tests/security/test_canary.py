"""Canaries: fake secrets planted where a run holds real ones must never come out again.

Distinctive strings stand in for the Prefect API key (the worker's setting), the unit's AWS
secret key and session token (its ``AwsCredentials`` block, and the ambient environment), a
Secrets Manager secret's value, and the bearer token and presigned URL of an MR Optimum job
read from S3. Three AWS-path runs then go against moto: ``mr_reconstruction`` of that job on
a unit whose storage is S3, ``multinode_simulation`` as a Batch multi-node job on an AWS
unit with the credentials block, and a flow run through the ``aws-batch`` worker holding the
API key, its secret ARN set. Afterwards no canary may appear in:

- a request body moto received (its recorder: ``/moto-api/recorder/start-recording``, then
  ``download-recording``), nor in a request header, except the session token, which SigV4
  sends as ``X-Amz-Security-Token`` by design;
- a log line (the Prefect server's logs of each run, and every record this process logged);
- an artifact, a flow or task run as the server stores it (parameters, state messages);
- a file under the storage root, local or in moto's S3.

``test_the_scan_finds_a_planted_leak`` proves the scan can fail: a flow that logs a canary and
writes it to S3 is caught in both places.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import boto3
import httpx
import numpy as np
import pytest
from prefect import flow, get_run_logger
from prefect.settings import PREFECT_API_KEY, temporary_settings

from blocks.compute_unit import ComputeUnit
from tests.compute.moto_batch import QUEUE, REGION, describe_node_properties, make_job_queue
from tests.compute.moto_batch import use_batch_without_docker as batch_without_docker

CANARIES = {
    "PREFECT_API_KEY": "pnu_CanaryPrefectKey7f3a9c0000000000000000",
    "AWS_SECRET_ACCESS_KEY": "CanaryAwsSecretKey4e8b1d",
    "AWS_SESSION_TOKEN": "CanaryAwsSessionToken9a2c7f",
    "Secrets Manager value": "CanarySecretsManagerValue3d6e0b",
    "job bearer token": "CanaryJobBearer5c1f8a",
    "job presigned URL": "CanaryPresignedSig2b9e4d",
}
# SigV4 sends the session token in a header to the service that issued it: that is its use.
IN_HEADERS_BY_DESIGN = frozenset({"AWS_SESSION_TOKEN"})
BUCKET = "canary-lab"
JOB_URI = f"s3://{BUCKET}/jobs/job.json"  # the job file carrying the job's canaries


@dataclass(frozen=True, slots=True)
class Leak:
    """A canary found: which one and where (never a secret, only a planted fake)."""

    canary: str
    where: str


def find_canaries(
    texts: Iterator[tuple[str, str]], skip: frozenset[str] = frozenset()
) -> list[Leak]:
    """Each canary (but those in ``skip``) found in ``(where, text)`` pairs."""
    return [
        Leak(name, where)
        for where, text in texts
        for name, value in CANARIES.items()
        if name not in skip and value in text
    ]


# --- where to look ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MotoRecorder:
    """moto's request recorder, driven over its HTTP API (``/moto-api/recorder/...``)."""

    endpoint: str

    def _post(self, action: str) -> httpx.Response:
        with httpx.Client(trust_env=False, timeout=30) as client:
            return client.post(f"{self.endpoint}/moto-api/recorder/{action}").raise_for_status()

    def start(self) -> None:
        """Record every request from now on."""
        self._post("start-recording")

    def entries(self) -> list[dict[str, Any]]:
        """Stop, and the requests recorded: method, url, headers, body (maybe base64)."""
        self._post("stop-recording")
        with httpx.Client(trust_env=False, timeout=30) as client:
            response = client.get(f"{self.endpoint}/moto-api/recorder/download-recording")
        text = response.raise_for_status().text
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture
def recording(aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoRecorder]:
    """moto's recorder, emptied, writing into this test's directory; stopped after."""
    from moto.moto_api import recorder

    # moto's server runs in this process; its recorder would write ./moto_recording.
    monkeypatch.setattr(recorder, "_location", str(tmp_path / "moto_recording"))
    moto = MotoRecorder(aws)
    moto._post("reset-recording")
    yield moto
    moto._post("stop-recording")


def request_texts(entries: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list]:
    """``(where, body)`` and ``(where, headers)`` of each request moto recorded."""
    bodies, headers = [], []
    for entry in entries:
        where = f"moto request {entry['method']} {entry['url']}"
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("utf-8", errors="replace")
        bodies.append((f"{where} body", body + entry["url"]))
        headers.append((f"{where} headers", json.dumps(entry["headers"])))
    return bodies, headers


def server_texts(flow_run_ids: list[Any]) -> list[tuple[str, str]]:
    """What the Prefect server keeps of each run: the run, its task runs, artifacts, logs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # log lines reach the server in batches: send them
    texts: list[tuple[str, str]] = []
    with get_client(sync_client=True) as client:
        for run_id in flow_run_ids:
            run = client.read_flow_run(run_id)
            texts.append((f"flow run {run_id} (parameters, state)", run.model_dump_json()))
            runs = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            for task_run in client.read_task_runs(flow_run_filter=runs):
                texts.append((f"task run {task_run.name}", task_run.model_dump_json()))
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
            texts += [(f"artifact {a.key}", a.model_dump_json()) for a in artifacts]
            logs = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
            )
            texts += [(f"log line of run {run_id}", log.message) for log in logs]
    return texts


def stored_files(root: Path, planted: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """Every file under the local storage root and every object in moto's S3 but ``planted``
    (the test's own inputs, as ``s3://bucket/key``)."""
    texts = [
        (f"file {path}", path.read_bytes().decode("utf-8", errors="replace"))
        for path in root.rglob("*")
        if path.is_file()
    ]
    s3 = boto3.client("s3", region_name=REGION)
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                if f"s3://{bucket['Name']}/{item['Key']}" in planted:
                    continue
                body = s3.get_object(Bucket=bucket["Name"], Key=item["Key"])["Body"].read()
                texts.append(
                    (f"s3://{bucket['Name']}/{item['Key']}", body.decode("utf-8", errors="replace"))
                )
    return texts


# --- the runs -----------------------------------------------------------------------------------


def leaky_job(signal_uri: str, noise_uri: str) -> dict[str, Any]:
    """An MR Optimum GUI job carrying its bearer token and a presigned URL (innocent key)."""
    presigned = (
        f"https://{BUCKET}.s3.amazonaws.com/in/signal.npy?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential=ASIAFAKE%2F20261205&X-Amz-Signature={CANARIES['job presigned URL']}"
    )

    def file(uri: str) -> dict[str, Any]:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        return {
            "type": "file",
            "options": {
                "type": "s3",
                "bucket": bucket,
                "key": key,
                "vendor": "numpy",
                "link": presigned,
            },
        }

    task = {
        "version": "v0",
        "acquisition": 2,
        "type": "SNR",
        "name": "AC",
        "options": {
            "reconstructor": {
                "name": "RSS",
                "options": {"signal": file(signal_uri), "noise": file(noise_uri)},
            }
        },
    }
    token = f"Bearer {CANARIES['job bearer token']}"
    return {"version": "v0", "alias": "canary", "output": {}, "task": task, "token": token}


def run_mr_job_from_s3(tmp_path: Path) -> Callable[[], Any]:
    """mr_reconstruction of a job read from S3, on a unit whose storage is S3."""
    from flows.mr_reconstruction import mr_reconstruction
    from tasks.mr.phantom import make_phantom, phantom_acquisition

    phantom = make_phantom(32, 32, 4, amplitude=40.0, correlation=0.3, seed=5)
    signal, noise = phantom_acquisition(phantom, slices=1, noise_samples=32 * 100, seed=7)
    np.save(tmp_path / "signal.npy", signal[..., 0, 0])
    np.save(tmp_path / "noise.npy", noise)
    s3 = boto3.client("s3", region_name=REGION)
    s3.upload_file(str(tmp_path / "signal.npy"), BUCKET, "in/signal.npy")
    s3.upload_file(str(tmp_path / "noise.npy"), BUCKET, "in/noise.npy")
    job = leaky_job(f"s3://{BUCKET}/in/signal.npy", f"s3://{BUCKET}/in/noise.npy")
    s3.put_object(Bucket=BUCKET, Key=JOB_URI.split("/", 3)[3], Body=json.dumps(job).encode())
    # Local Dask threads, S3 storage: every input and output crosses moto.
    ComputeUnit(name="canary-s3", storage_root=f"s3://{BUCKET}/runs").save(
        "canary-s3", overwrite=True
    )

    def run() -> Any:
        state = mr_reconstruction(options=JOB_URI, unit="canary-s3", return_state=True)
        state.result()  # raises if the run failed
        return state.state_details.flow_run_id

    return run


def run_multinode_on_batch(monkeypatch: pytest.MonkeyPatch, aws: str) -> Callable[[], Any]:
    """multinode_simulation as a Batch multi-node job, through the unit's credentials block."""
    from prefect_aws import AwsCredentials

    from flows import multinode_simulation as module
    from tasks.compute.batch import ContainerSpec, ensure_job_definition, job_definition_spec
    from tasks.compute.channel import TOKEN_VARIABLE
    from tasks.simulation.mpi_simulate import PhantomSpec

    batch_without_docker(aws)
    describe_node_properties(monkeypatch)
    make_job_queue(QUEUE)
    batch = boto3.client("batch", region_name=REGION)
    # A multi-node job's nodes prove the run's token (tasks.compute.channel) from a secret.
    token = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="sciflow/run-token/canary", SecretString="t" * 64
    )["ARN"]
    container = ContainerSpec(image="repo/sciflow:sim", secrets=((TOKEN_VARIABLE, token),))
    definition, _ = ensure_job_definition(batch, job_definition_spec(container, node_count=2))
    AwsCredentials(
        aws_access_key_id="AKIACANARYUNITKEY000",
        aws_secret_access_key=CANARIES["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=CANARIES["AWS_SESSION_TOKEN"],
        region_name=REGION,
    ).save("canary-creds", overwrite=True)
    ComputeUnit(
        name="canary-aws",
        platform="aws",
        region=REGION,
        storage_root=f"s3://{BUCKET}/runs",
        aws_credentials_block="canary-creds",
        batch_job_queue=QUEUE,
        batch_job_definitions={"simulation": definition},
    ).save("canary-aws", overwrite=True)
    # What rank 0 would have written: moto's Batch runs no container.
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET, Key="runs/sim/simulation.h5", Body=b"mrd"
    )
    monkeypatch.setattr(module, "BATCH_POLL_S", 0.2)

    def run() -> Any:
        state = module.multinode_simulation(
            phantom=PhantomSpec(matrix=(16, 16), spins_per_voxel=1),
            coils=2,
            nodes=2,
            ranks_per_node=1,
            output=f"s3://{BUCKET}/runs/sim",
            unit="canary-aws",
            return_state=True,
        )
        state.result()
        return state.state_details.flow_run_id

    return run


def run_through_batch_worker() -> Callable[[], Any]:
    """A flow run submitted by the aws-batch worker, which holds PREFECT_API_KEY."""
    from tests.compute.test_batch_worker import BASE, _run_through_worker

    secrets = boto3.client("secretsmanager", region_name=REGION)
    arn = secrets.create_secret(
        Name="prefect-api-key", SecretString=CANARIES["Secrets Manager value"]
    )["ARN"]
    variables = {
        **BASE,
        "poll_interval_s": 0.01,
        "execution_role_arn": "arn:aws:iam::123456789012:role/batch-exec",
        "prefect_api_key_secret_arn": arn,
    }

    def run() -> Any:
        flow_run, _, result, _ = anyio.run(_run_through_worker, "canary-batch", variables)
        assert result.identifier  # the job was submitted, not refused
        return flow_run.id

    return run


# --- the tests ----------------------------------------------------------------------------------


def test_no_canary_leaves_the_aws_path_runs(
    aws, recording, sciflow_dirs, tmp_path, monkeypatch, caplog, capfd
):
    """Guards against any secret a run holds reaching a job body, an S3 object, a log line,
    an artifact or a stored parameter: a pasted-job token kept in info.json (as before
    ``load_job``), a clear API key in a Batch job's environment (as before
    ``refuse_clear_credentials``), a credential logged or echoed in an error."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CANARIES["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", CANARIES["AWS_SESSION_TOKEN"])
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    runs = [
        run_mr_job_from_s3(tmp_path),
        run_multinode_on_batch(monkeypatch, aws),
        run_through_batch_worker(),
    ]
    # INFO: what sciflow and Prefect log by default. At DEBUG, botocore logs each request's
    # headers (X-Amz-Security-Token) and websockets the Prefect events auth message (the API
    # key): libraries' debug output, which a deployment must not turn on.
    caplog.set_level("INFO")
    recording.start()
    with temporary_settings({PREFECT_API_KEY: CANARIES["PREFECT_API_KEY"]}):
        flow_run_ids = [run() for run in runs]
    entries = recording.entries()
    out, err = capfd.readouterr()

    # The runs did reach moto with what was planted: the job read, info.json written, two
    # Batch jobs submitted, requests signed by the unit's credentials block.
    requests = [f"{e['method']} {e['url']}" for e in entries]
    assert any(r.startswith("GET") and r.endswith(JOB_URI.split("/", 3)[3]) for r in requests)
    assert any(r.startswith("PUT") and r.endswith("/info.json") for r in requests)
    assert sum(r.endswith("/v1/submitjob") for r in requests) == 2
    assert any("AKIACANARYUNITKEY000" in str(e["headers"]) for e in entries)
    bodies, headers = request_texts(entries)
    texts = [
        *bodies,
        *server_texts(flow_run_ids),
        *stored_files(sciflow_dirs, planted=frozenset({JOB_URI})),
        *((f"log record of {r.name}", r.getMessage()) for r in caplog.records),
        ("stdout and stderr", out + err),
    ]
    leaks = find_canaries(iter(texts)) + find_canaries(iter(headers), skip=IN_HEADERS_BY_DESIGN)
    assert leaks == [], "\n".join(f"{leak.canary} in {leak.where}" for leak in leaks)


def test_the_scan_finds_a_planted_leak(aws, recording, sciflow_dirs):
    """The checks above can fail: a flow that logs one canary and uploads another is caught
    in the server's logs, moto's recorded body and the stored object."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)

    @flow
    def leaky() -> None:
        get_run_logger().info("token is %s", CANARIES["job bearer token"])
        boto3.client("s3", region_name=REGION).put_object(
            Bucket=BUCKET, Key="leak.txt", Body=CANARIES["Secrets Manager value"].encode()
        )

    recording.start()
    state = leaky(return_state=True)
    bodies, _ = request_texts(recording.entries())
    found = find_canaries(iter([*bodies, *server_texts([state.state_details.flow_run_id])]))
    found += find_canaries(iter(stored_files(sciflow_dirs)))
    assert {(leak.canary, leak.where.split(" ")[0]) for leak in found} == {
        ("Secrets Manager value", "moto"),
        ("job bearer token", "log"),
        ("Secrets Manager value", f"s3://{BUCKET}/leak.txt"),
    }
