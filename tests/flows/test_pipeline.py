import json
from pathlib import Path

import pytest
from prefect import flow

from blocks.compute_unit import local_unit
from flows.pipeline import report, research_pipeline
from flows.preflight import preflight
from flows.secure_cleanup import secure_cleanup
from tasks.compute.hooks import cleanup_on_exit
from tasks.errors import InputError
from tasks.settings import get_settings
from tests.cleanup.flow_runs import make_flow_run


def test_research_pipeline_runs_every_stage_and_writes_a_manifest(sciflow_dirs):
    result = research_pipeline(preflight_probes=2)
    assert result.ok
    run_dir = Path(result.run_dir)
    assert run_dir.parent == sciflow_dirs / "runs" / "local"
    manifest = json.loads(Path(result.manifest_uri).read_text())
    assert set(manifest["stages"]) == {
        "preflight",
        "simulation",
        "reconstruction",
        "training",
        "model-upload",
        "secure-cleanup",
    }
    assert manifest["run_id"] == run_dir.name
    snr_map = Path(result.stages["reconstruction"])
    assert snr_map.name == "SNR.nii.gz"
    assert snr_map.parent == run_dir / "reconstruction"
    assert Path(result.stages["simulation"]) == run_dir / "simulation" / "simulation.h5"
    assert result.median_snr > 10  # the simulated Shepp-Logan's SNR inside the mask
    model = Path(result.stages["training"])
    assert model == run_dir / "training" / "model" / "model.pt"
    metrics = json.loads((model.parent.parent / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["steps"] > 0
    assert metrics["history"]["loss"][-1] < metrics["history"]["loss"][0]  # it learned
    registry = sciflow_dirs / "runs" / "registry" / "denoiser"
    assert (result.model_name, result.model_version) == ("denoiser", "1")
    assert Path(result.stages["model-upload"]) == registry / "1" / "manifest.json"
    published = json.loads(Path(result.stages["model-upload"]).read_text())
    assert {f["path"] for f in published["files"]} >= {"model/model.pt", "metrics.json"}
    assert not any(f["path"].startswith("checkpoints/") for f in published["files"])
    assert run_dir.name in published["lineage"]["flow_runs"]
    assert "model registry: denoiser version 1" in report(result)
    training_set = json.loads((run_dir / "training-set" / "manifest.json").read_text())
    assert len(training_set["sources"]) == 2  # reconstruction and simulation
    cleanup = json.loads(Path(result.stages["secure-cleanup"]).read_text())
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


def test_preflight_checks_storage_dask_and_mpiexec():
    result = preflight(probes=4)
    assert result.ok, result.checks
    assert [c["check"] for c in result.checks] == ["storage round trip", "mpiexec", "dask workers"]
    assert "4 tasks on" in result.checks[2]["detail"]
    assert json.loads(Path(result.report_uri).read_text()) == result.checks


def test_pipeline_rejects_an_unknown_unit_before_doing_anything(sciflow_dirs):
    with pytest.raises(InputError, match="compute unit 'mars' not found"):
        research_pipeline(unit="mars")
    assert not (sciflow_dirs / "runs" / "mars").exists()


def test_secure_cleanup_sweeps_scratch_and_partial_writes(sciflow_dirs):
    run_id = make_flow_run()  # cleanup refuses ids the API does not know
    scratch = get_settings().scratch_root / run_id
    (scratch / "deep").mkdir(parents=True)
    (scratch / "deep" / "weights.bin").write_bytes(b"secret weights")
    run_dir = sciflow_dirs / "runs" / "local" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / ".snr.npy.abc.tmp").write_bytes(b"half")

    result = secure_cleanup(run_id=run_id)

    assert result.ok
    assert not scratch.exists()
    assert not (run_dir / ".snr.npy.abc.tmp").exists()
    assert result.record_uri == local_unit().audit_uri(run_id)
    record = json.loads(Path(result.record_uri).read_text())
    details = {c["name"]: c["detail"] for c in record["checks"]}
    assert details["scratch removed"].startswith("removed 1 files")
    assert details["no partial writes"] == "removed 1 temporary files"


def test_a_failing_flow_is_cleaned_up_by_its_hook(sciflow_dirs):
    seen = {}

    @flow(on_failure=[cleanup_on_exit])
    def doomed(unit: str = "local") -> None:
        from prefect.runtime import flow_run

        seen["run_id"] = flow_run.get_id()
        scratch = get_settings().scratch_root / seen["run_id"]
        scratch.mkdir(parents=True)
        (scratch / "tenant-data.npy").write_bytes(b"x" * 100)
        raise RuntimeError("simulated failure mid-run")

    with pytest.raises(RuntimeError, match="simulated failure"):
        doomed()

    assert not (get_settings().scratch_root / seen["run_id"]).exists()
    record = json.loads(Path(local_unit().audit_uri(seen["run_id"])).read_text())
    assert record["ok"] is True
    assert record["trigger"] == "end of run (Failed)"
