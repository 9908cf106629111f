"""As a user: deploy deployments/prefect.yaml to a real server, run it through a process worker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from blocks.registration import register_unit
from tests.blocks.test_registration import full_output
from tests.e2e.conftest import (
    REPO,
    SERVER_START_TIMEOUT_S,
    VENV_BIN,
    PrefectServer,
    Service,
    flow_run_id_from,
    free_port,
    start_service,
    subprocess_env,
    wait_until_healthy,
)

pytestmark = pytest.mark.e2e

PREFECT_FILE = "deployments/prefect.yaml"
# Every flow in flows/ (its @sciflow_flow name), each deployed as `<name>/local`.
FLOW_NAMES = sorted(
    name
    for path in (REPO / "flows").glob("*.py")
    for name in re.findall(r'^@sciflow_flow\(name="([\w-]+)"', path.read_text(), re.MULTILINE)
)
DEPLOYMENTS = tuple(f"{name}/local" for name in FLOW_NAMES)
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
            # One deployment serves every class: route-job names the class's queue itself.
            assert deployment.work_queue_name == "default"
            assert "sciflow" in deployment.tags
            assert deployment.description
            assert deployment.parameters == {}
            assert deployment.pull_steps == [
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
            ]


def test_deploy_registers_the_sweep_hourly_and_the_nightly_retrain_inactive(api, deployed):
    with get_client(sync_client=True) as client:
        sweep = client.read_deployment_by_name("cleanup-sweep/local")
        training = client.read_deployment_by_name("distributed-training/local")
        others = [client.read_deployment_by_name(n) for n in DEPLOYMENTS]
    [hourly] = sweep.schedules
    assert (hourly.schedule.cron, hourly.schedule.timezone, hourly.active) == (
        "17 * * * *",
        "UTC",
        True,
    )
    [nightly] = training.schedules
    assert (nightly.schedule.cron, nightly.active, nightly.slug) == (
        "0 2 * * *",
        False,
        "nightly-retrain",
    )
    assert nightly.parameters["dataset"]  # a scheduled run needs one
    assert sum(len(d.schedules) for d in others) == 2


def test_make_deploy_on_a_fresh_server_creates_the_pool_first(
    tmp_path, recording_proxy, prefect_server
):
    """`make server` then `make deploy`, no `make worker`: the pool did not exist before."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = subprocess_env(
        home, api_url, tmp_path / "runs", tmp_path / "scratch", recording_proxy.url
    )
    server = start_service(
        "fresh prefect server",
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "server.log",
    )
    try:
        wait_until_healthy(f"{api_url}/health", server, SERVER_START_TIMEOUT_S)
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
            assert c.read_work_pools() == []
        # -o install: the test's environment is installed; a worktree's newer pyproject.toml
        # must not make this reinstall it.
        done = subprocess.run(
            ["make", "-o", "install", "deploy", f"LOCAL_API={api_url}"],
            cwd=REPO,
            env={**env, "PWD": str(REPO)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
            assert [(p.name, p.type) for p in c.read_work_pools()] == [("sciflow-local", "process")]
            names = {f"{c.read_flow(d.flow_id).name}/{d.name}" for d in c.read_deployments()}
            assert names == set(DEPLOYMENTS)
            assert "sciflow-cleanup-after-crash" in {a.name for a in c.read_automations()}
        # Running it again changes nothing and fails on nothing.
        again = subprocess.run(
            ["make", "-o", "install", "deploy", f"LOCAL_API={api_url}"],
            cwd=REPO,
            env={**env, "PWD": str(REPO)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
    finally:
        server.stop()


def test_an_aws_unit_gets_every_flow_on_its_pools_pulling_the_image(api, deployed, tmp_path):
    """deployments/deploy_unit.py against a unit saved on the server, as make pools saves it."""
    outputs = full_output("team", region="us-east-1")
    limits = register_unit(outputs).unit.limits
    argv = [sys.executable, "-m", "deployments.deploy_unit", "team"]
    done = subprocess.run(
        argv, cwd=REPO, env=api.env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    expected = {
        "research-pipeline/team-small": "team-small",
        "mr-reconstruction/team-small": "team-small",
        "mr-reconstruction/team-large": "team-large",
        "multinode-simulation/team-small": "team-small",
        "multinode-simulation/team-large": "team-large",
        "multinode-simulation/team-multinode": "team-batch",
        "distributed-training/team-small": "team-small",
        "distributed-training/team-large": "team-large",
        "distributed-training/team-multinode": "team-batch",
        "distributed-training/team-gpu": "team-gpu",  # ECS on EC2 GPU capacity
        "model-upload/team-small": "team-small",
        "preflight/team-small": "team-small",
        "secure-cleanup/team-small": "team-small",
        "cleanup-sweep/team-small": "team-small",
        "route-job/team-small": "team-small",
    }
    with get_client(sync_client=True) as client:
        stored = {
            f"{client.read_flow(d.flow_id).name}/{d.name}": d
            for d in client.read_deployments()
            if d.name.startswith("team-")
        }
        pool = client.read_work_pool("team-small")
        queues = {name: client.read_work_queue(d.work_queue_id) for name, d in stored.items()}
    # The compute-unit flows manage units from the server's side: local only.
    assert {name: d.work_pool_name for name, d in stored.items()} == expected
    for name, deployment in stored.items():
        size = deployment.name.removeprefix("team-")
        assert deployment.parameters == {"unit": "team"}, name
        if name.startswith("route-job/"):
            # A waiting routing run in the class's queue would hold the slot its run needs.
            assert deployment.work_queue_name == queues[name].name == "default", name
        else:
            # Its class's queue, limited by register_unit: UI, CLI and scheduled runs wait.
            assert deployment.work_queue_name == queues[name].name == size, name
            assert queues[name].concurrency_limit == limits.of(size).concurrent_runs, name
        assert deployment.pull_steps == [], name  # the image holds the code
        assert re.fullmatch(r"flows\.\w+:\w+", deployment.entrypoint), deployment.entrypoint
        batch = size == "multinode"
        assert deployment.job_variables == ({"size_class": size} if batch else {}), name
        assert deployment.description
        assert "sciflow" in deployment.tags
    # The image and the rest come from the pool, filled from the unit's terraform output.
    image = pool.base_job_template["variables"]["properties"]["image"]["default"]
    assert image == outputs["dask_image"]["value"]
    # One sweep per unit, hourly; the nightly retrain once, inactive.
    schedules = {n: [(s.schedule.cron, s.active) for s in d.schedules] for n, d in stored.items()}
    assert {n: s for n, s in schedules.items() if s} == {
        "cleanup-sweep/team-small": [("17 * * * *", True)],
        "distributed-training/team-small": [("0 2 * * *", False)],
    }
    # A module entrypoint loads without the checkout as working directory, as in the image.
    load = "from prefect.flows import load_flow_from_entrypoint as f; print(f(%r).name)"
    entry = stored["mr-reconstruction/team-large"].entrypoint
    loaded = subprocess.run(
        [sys.executable, "-c", load % entry],
        cwd=tmp_path,
        env=api.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert loaded.stdout.split()[-1] == "mr-reconstruction"


def test_deploy_unit_refuses_the_local_unit_and_unknown_ones(api):
    for unit, match in (("local", "deployed by prefect.yaml itself"), ("nope", "not found")):
        done = subprocess.run(
            [sys.executable, "-m", "deployments.deploy_unit", unit, "--print"],
            cwd=REPO,
            env=api.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert match in done.stderr


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
