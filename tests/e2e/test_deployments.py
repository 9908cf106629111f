"""As a user: deploy deployments/prefect.yaml to a real server, run it through a process worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.e2e.conftest import REPO, PrefectServer, Service, flow_run_id_from

pytestmark = pytest.mark.e2e

PREFECT_FILE = "deployments/prefect.yaml"
DEPLOYMENTS = (
    "research-pipeline/local",
    "mr-reconstruction/local",
    "multinode-simulation/local",
    "distributed-training/local",
    "preflight/local",
    "secure-cleanup/local",
    "cleanup-sweep/local",
)
RUN_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """Point this process's Prefect client at the e2e server (the harness points elsewhere)."""
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


@pytest.fixture(scope="module")
def deployed(api: PrefectServer, process_worker: Service) -> str:
    """``prefect deploy --all`` from the repository root; returns its output."""
    return api.cli("deploy", "--all", "--prefect-file", PREFECT_FILE).stdout


def wait_for_terminal(flow_run_id: str, timeout: float = RUN_TIMEOUT_S) -> FlowRun:
    """Poll the API until the flow run is in a final state, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"flow run {flow_run_id} still {flow_run.state_name} after {timeout:.0f} s"
                )
            time.sleep(0.5)


@pytest.fixture(scope="module")
def pipeline_run(api: PrefectServer, deployed: str, process_worker: Service) -> FlowRun:
    """``prefect deployment run research-pipeline/local``, waited on until it finishes."""
    out = api.cli("deployment", "run", "research-pipeline/local").stdout
    return wait_for_terminal(flow_run_id_from(out))


def read_json(path: str | Path) -> object:
    return json.loads(Path(path).read_text())


def test_deploy_registers_every_flow_with_this_checkouts_path(api, deployed):
    assert str(REPO) not in (REPO / PREFECT_FILE).read_text()
    with get_client(sync_client=True) as client:
        for name in DEPLOYMENTS:
            deployment = client.read_deployment_by_name(name)
            assert deployment.work_pool_name == "sciflow-local"
            assert "sciflow" in deployment.tags
            assert deployment.description
            assert deployment.parameters == {}
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ]


def test_cli_deployment_run_completes_the_pipeline_and_writes_its_outputs(api, pipeline_run):
    assert pipeline_run.state_name == "Completed", pipeline_run.state
    run_dir = api.storage_root / "local" / str(pipeline_run.id)
    manifest = read_json(run_dir / "pipeline.json")
    assert manifest["run_id"] == str(pipeline_run.id)
    assert manifest["unit"] == "local"
    assert set(manifest["stages"]) == {
        "preflight",
        "simulation",
        "reconstruction",
        "training",
        "model-upload",
        "secure-cleanup",
    }
    stages = dict(manifest["stages"])
    record = Path(stages.pop("secure-cleanup"))
    # The model is published to the registry, the other place outside the run directories.
    published = Path(stages.pop("model-upload"))
    assert published.is_relative_to(api.storage_root / "registry" / "denoiser"), published
    assert read_json(published)["files"]
    for uri in stages.values():
        assert Path(uri).is_relative_to(api.storage_root / "local"), uri

    # The cleanup record lives outside the unit's run directories (run roles cannot delete it).
    assert record == api.storage_root / "audit" / "local" / run_dir.name / "cleanup_validation.json"
    cleanup = read_json(record)
    assert cleanup["ok"] is True
    assert {c["name"] for c in cleanup["checks"]} == {
        "launches stopped",
        "scratch removed",
        "no partial writes",
        "intermediates purged",
        "cloud resources removed",
        "scratch key destroyed",
        "gpu scrubbed",
        "model cache valid",
    }

    preflight = read_json(manifest["stages"]["preflight"])
    assert [c["check"] for c in preflight] == ["storage round trip", "mpiexec", "dask workers"]
    assert all(c["ok"] for c in preflight), preflight
    assert "4 tasks on" in preflight[2]["detail"]  # the deployment's default preflight_probes


def test_run_deployment_from_python_completes_preflight(api, deployed, process_worker):
    flow_run = run_deployment("preflight/local", parameters={"probes": 3}, timeout=0)
    flow_run = wait_for_terminal(str(flow_run.id))
    assert flow_run.state_name == "Completed", flow_run.state
    report = read_json(api.storage_root / "local" / str(flow_run.id) / "preflight.json")
    assert all(c["ok"] for c in report), report
    assert "3 tasks on" in report[2]["detail"]


def test_nothing_reaches_beyond_loopback(api, pipeline_run):
    """Server, worker, deploy, runs: all behind the recording proxy, which saw nothing."""
    assert pipeline_run.state_name == "Completed"
    assert api.proxy.requests == []


def test_cli_runs_mr_reconstruction_with_json_parameters(api, deployed, process_worker, tmp_path):
    """The CLI form scientists script: a signal path and options as JSON."""
    import numpy as np

    from tasks.mr.phantom import make_phantom, phantom_acquisition

    signal, noise = phantom_acquisition(make_phantom(32, 32, 4), noise_samples=4096)
    np.save(tmp_path / "signal.npy", signal[..., 0, 0])
    np.save(tmp_path / "noise.npy", noise)
    params = {
        "signal": str(tmp_path / "signal.npy"),
        "noise": str(tmp_path / "noise.npy"),
        "options": {"method": "ac", "recon": "b1", "mask": "percentage", "mask_value": 10},
    }
    out = api.cli("deployment", "run", "mr-reconstruction/local", "--params", json.dumps(params))
    flow_run = wait_for_terminal(flow_run_id_from(out.stdout))
    assert flow_run.state_name == "Completed", flow_run.state
    run_dir = api.storage_root / "local" / str(flow_run.id)
    info = read_json(run_dir / "info.json")
    assert info["sciflow"]["options"]["recon"] == "b1"
    assert info["sciflow"]["extra"]["median_snr_in_mask"] > 20
    assert (run_dir / "SNR.png").read_bytes().startswith(b"\x89PNG")


def test_cli_runs_distributed_training_on_two_processes(api, deployed, process_worker, tmp_path):
    """`prefect deployment run distributed-training/local` with a data set and a schedule."""
    from tasks.training.data import write_synthetic_set

    write_synthetic_set(str(tmp_path / "set"), train=32, validation=8, size=16)
    params = {
        "dataset": str(tmp_path / "set"),
        "settings": {"model_options": {"width": 8}, "epochs": 2, "checkpoint_every": 2},
    }
    out = api.cli("deployment", "run", "distributed-training/local", "--params", json.dumps(params))
    flow_run = wait_for_terminal(flow_run_id_from(out.stdout))
    assert flow_run.state_name == "Completed", flow_run.state
    output = api.storage_root / "local" / str(flow_run.id) / "training"
    metrics = read_json(output / "metrics.json")
    assert metrics["strategy"] == "ddp"
    assert len(metrics["samples_per_s_per_process"]) == 2
    assert metrics["steps"] == 8  # 2 epochs x 32 samples / batch 8
    assert (output / "loss.png").read_bytes().startswith(b"\x89PNG")
