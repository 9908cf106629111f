"""As a user: ``multinode_simulation`` deployed on the aws-batch pool, run for real.

A real Prefect server and ``prefect worker start --type aws-batch`` (in this host's namespace,
moto on 127.0.0.1); the stand-in (tests/standin) runs what moto's Batch is asked to run. The
worker submits the flow run as a Batch job; the flow, in that job's namespace, reads its AWS
unit from the server (through a relay), writes the spec to moto's S3 and submits the
simulation as a multi-node parallel job; its nodes start ``python -m
tasks.simulation.multinode`` in namespaces of their own, and one MPI job spans them and writes
the MRD file to S3.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import boto3
import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.compute_unit import ComputeUnit
from blocks.registration import unregister_unit
from tasks.compute.batch import JOB_STATES
from tasks.compute.channel import TOKEN_VARIABLE, new_token
from tasks.mr.io import read_raw
from tests.compute.moto_batch import REGION
from tests.e2e.conftest import BATCH_POOL, BATCH_QUEUE, REPO, PrefectServer, Service
from tests.standin.containers import wait_for

pytestmark = pytest.mark.e2e

UNIT = "sim-standin"
BUCKET = "sciflow-standin"
FLOW_NAME = "multinode-simulation"
ENTRYPOINT = "flows/multinode_simulation.py:multinode_simulation"
RANK_MODULE = "tasks.simulation.mpi_simulate"
NODES = 2
RUN_TIMEOUT_S = 420.0


@pytest.fixture
def simulation_unit(prefect_server: PrefectServer, batch_standin: Any, aws: str) -> Iterator[str]:
    """The unit's Batch job definition for the simulation image, its bucket, its block."""
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    # The nodes' control channel admits only nodes that prove the token (scoped to the job).
    token = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="sciflow/run-token/simulation", SecretString=new_token()
    )["ARN"]
    container = {
        "image": "sciflow-simulation:standin",
        "resourceRequirements": [
            {"type": "VCPU", "value": "1"},
            {"type": "MEMORY", "value": "2048"},
        ],
        # The nodes are namespaces of one machine: keep UCX off shared memory, as between
        # hosts (tests/simulation/test_multinode.py).
        "environment": [{"name": "UCX_TLS", "value": "self,tcp"}],
        "secrets": [{"name": TOKEN_VARIABLE, "valueFrom": token}],
    }
    definition = boto3.client("batch", region_name=REGION).register_job_definition(
        jobDefinitionName="sciflow-simulation",
        type="multinode",
        nodeProperties={
            "numNodes": NODES,
            "mainNode": 0,
            "nodeRangeProperties": [{"targetNodes": f"0:{NODES - 1}", "container": container}],
        },
    )["jobDefinitionArn"]
    unit = ComputeUnit(
        name=UNIT,
        platform="aws",
        region=REGION,
        storage_root=f"s3://{BUCKET}/runs",
        batch_job_queue=BATCH_QUEUE,
        batch_job_definitions={"simulation": definition},
    )
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        unit.save(UNIT, overwrite=True)
    yield UNIT
    # The session's server outlives this test: `make pools` in later tests reads every unit.
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        unregister_unit(UNIT)


async def _deploy(api_url: str, container_api_url: str) -> str:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(FLOW_NAME)
            return str(
                await client.create_deployment(
                    flow_id=flow_id,
                    name="standin",
                    entrypoint=ENTRYPOINT,
                    work_pool_name=BATCH_POOL,
                    pull_steps=[
                        {
                            "prefect.deployments.steps.set_working_directory": {
                                "directory": str(REPO)
                            }
                        }
                    ],
                    job_variables={
                        "job_queue": BATCH_QUEUE,
                        "image": "sciflow:standin",
                        "poll_interval_s": 0.5,
                        # The flow's container reaches the server through the stand-in's relay.
                        "env": {"PREFECT_API_URL": container_api_url},
                    },
                )
            )


async def _run(api_url: str, deployment_id: str, parameters: dict[str, Any]) -> str:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
            return str(run.id)


async def _flow_run(api_url: str, flow_run_id: str) -> Any:
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)


def _state(api_url: str, flow_run_id: str) -> str | None:
    return anyio.run(_flow_run, api_url, flow_run_id).state_name


def _wait_for_state(
    server: PrefectServer, flow_run_id: str, names: set[str], worker: Service, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while (state := _state(server.api_url, flow_run_id)) not in names:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {flow_run_id} is {state}, not {names}\n{worker.log()}")
        time.sleep(0.5)
    return state


def _netns(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _rank_processes() -> dict[str, str]:
    """pid -> network namespace of every process running a simulation rank."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The rank itself, not the entrypoint or mpiexec that carry its command line.
        if argv[1:5] == [b"-m", b"mpi4py", b"-m", RANK_MODULE.encode()]:
            namespace = _netns(entry.name)
            if namespace:
                found[entry.name] = namespace
    return found


class RankWatcher:
    """Polls /proc while a run goes on: which namespaces ran ranks, by node of the job."""

    def __init__(self, batch_standin: Any) -> None:
        self.stand_in = batch_standin
        self.by_node: dict[str, set[str]] = {}  # node job id -> pids of ranks seen in it
        self.pids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            hosts = dict(self.stand_in.hosts)
            namespaces = {}
            for node, host in hosts.items():
                try:
                    namespaces[f"net:[{os.stat(f'/run/netns/{host.namespace}').st_ino}]"] = node
                except OSError:
                    continue
            for pid, namespace in _rank_processes().items():
                if namespace in namespaces:
                    self.by_node.setdefault(namespaces[namespace], set()).add(pid)
                    self.pids.add(pid)
            time.sleep(0.2)

    def __enter__(self) -> RankWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _simulation_jobs(batch: Any) -> list[dict[str, Any]]:
    summaries = []
    for status in JOB_STATES:
        summaries += batch.list_jobs(jobQueue=BATCH_QUEUE, jobStatus=status)["jobSummaryList"]
    if not summaries:
        return []
    jobs = batch.describe_jobs(jobs=[s["jobId"] for s in summaries])["jobs"]
    return [j for j in jobs if "nodeProperties" in j and j["jobName"].startswith("sciflow-sim")]


@pytest.fixture
def deployment(
    prefect_server: PrefectServer,
    standin_network: Any,
    simulation_unit: str,
    batch_worker: Service,
) -> str:
    relay = standin_network.relay(int(prefect_server.api_url.rsplit(":", 1)[1].split("/")[0]))
    return anyio.run(_deploy, prefect_server.api_url, relay.url("/api"))


def test_a_deployment_run_on_the_batch_pool_runs_mpi_across_nodes_and_writes_mrd_to_s3(
    prefect_server: PrefectServer, batch_worker: Service, batch_standin: Any, deployment: str
):
    parameters = {
        "phantom": {"matrix": [16, 16], "spins_per_voxel": 1},
        "coils": 2,
        "nodes": NODES,
        "ranks_per_node": 1,
        "unit": UNIT,
    }
    flow_run_id = anyio.run(_run, prefect_server.api_url, deployment, parameters)
    with RankWatcher(batch_standin) as ranks:
        state = _wait_for_state(
            prefect_server, flow_run_id, {"Completed", "Failed", "Crashed"}, batch_worker,
            RUN_TIMEOUT_S,
        )  # fmt: skip
    assert state == "Completed", batch_worker.log()

    batch = boto3.client("batch", region_name=REGION)
    (job,) = _simulation_jobs(batch)
    assert job["status"] == "SUCCEEDED"
    assert job["tags"]["sciflow:run-id"] == flow_run_id
    nodes = batch.describe_jobs(jobs=[f"{job['jobId']}#{i}" for i in range(NODES)])["jobs"]
    assert [n["status"] for n in nodes] == ["SUCCEEDED"] * NODES
    # One rank in each node's namespace: the MPI job spanned the nodes.
    assert sorted(ranks.by_node) == [f"{job['jobId']}#{i}" for i in range(NODES)], ranks.by_node
    assert all(len(pids) == 1 for pids in ranks.by_node.values())

    raw_key = f"runs/{UNIT}/{flow_run_id}/simulation.h5"
    local = Path(batch_standin.logs_dir) / f"{flow_run_id}.h5"
    boto3.client("s3", region_name=REGION).download_file(BUCKET, raw_key, str(local))
    raw = read_raw(local)
    assert raw.signal.shape == (16, 16, 2, 1, 1)
    assert np.isfinite(raw.signal).all()
    assert np.abs(raw.signal).max() > 0
    assert raw.noise is not None
    assert raw.noise.shape[1] == 2
    assert prefect_server.proxy.requests == []


def test_cancelling_a_run_mid_way_terminates_its_job_and_its_node_processes(
    prefect_server: PrefectServer, batch_worker: Service, batch_standin: Any, deployment: str
):
    parameters = {
        "phantom": {"matrix": [128, 128], "spins_per_voxel": 4},
        "coils": 4,
        "nodes": NODES,
        "ranks_per_node": 1,
        "unit": UNIT,
    }
    flow_run_id = anyio.run(_run, prefect_server.api_url, deployment, parameters)
    batch = boto3.client("batch", region_name=REGION)
    with RankWatcher(batch_standin) as ranks:
        wait_for(lambda: len(ranks.by_node) == NODES, RUN_TIMEOUT_S, "ranks on every node")
        (job,) = _simulation_jobs(batch)
        assert job["status"] == "RUNNING"
        prefect_server.cli("flow-run", "cancel", flow_run_id)
        state = _wait_for_state(
            prefect_server, flow_run_id, {"Cancelled", "Completed", "Failed", "Crashed"},
            batch_worker, 120,
        )  # fmt: skip
    assert state == "Cancelled", batch_worker.log()
    done = wait_for(
        lambda: (
            (j := batch.describe_jobs(jobs=[job["jobId"]])["jobs"][0])["status"] == "FAILED" and j
        ),
        60,
        "the simulation job terminated",
    )
    assert flow_run_id in done["statusReason"]
    wait_for(lambda: not (ranks.pids & set(_rank_processes())), 30, "rank processes gone")
    wait_for(
        lambda: not any(n.startswith(job["jobId"]) for n in batch_standin.containers),
        30,
        "node containers gone",
    )
    assert not [n for n in batch_standin.hosts if n.startswith(job["jobId"])]
    # The flow's own job ends once `prefect flow-run execute` has recorded Cancelled and exits.
    own = anyio.run(_flow_run, prefect_server.api_url, flow_run_id).infrastructure_pid
    wait_for(
        lambda: batch.describe_jobs(jobs=[own])["jobs"][0]["status"] in ("SUCCEEDED", "FAILED"),
        60,
        "the flow run's own job ended",
    )
