"""The model-upload flow: a training run's output into the registry, locally and on S3."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from prefect.artifacts import Artifact

from blocks.compute_unit import local_unit
from flows.model_upload import model_upload
from tasks.errors import InputError
from tasks.storage.registry import VersionExists

RUN = "0f8e7d6c-5b4a-4321-8765-0123456789ab"


def training_output(root: Path) -> Path:
    out = root / "local" / RUN / "training"
    (out / "model").mkdir(parents=True)
    (out / "checkpoints" / "step-4").mkdir(parents=True)
    (out / "model" / "model.pt").write_bytes(b"torchscript" * 100)
    (out / "model" / "state_dict.pt").write_bytes(b"tensors" * 100)
    (out / "model" / "config.json").write_text('{"torch": "2.5.1", "model": {"name": "unet"}}')
    (out / "metrics.json").write_text(json.dumps({"val_loss": 0.25, "steps": 8, "history": {}}))
    (out / "config.json").write_text(json.dumps({"dataset": "/data/set-1"}))
    (out / "checkpoints" / "step-4" / "blob.pt").write_bytes(b"not the model")
    return out


def test_a_training_output_is_published_staged_and_listed_in_an_artifact(sciflow_dirs):
    source = training_output(sciflow_dirs / "runs")
    result = model_upload(
        source=str(source), model_name="denoiser", stage="staging", metadata={"team": "mr"}
    )
    assert result.version == "1"
    assert {f.path for f in result.files} == {
        "model/model.pt",
        "model/state_dict.pt",
        "model/config.json",
        "metrics.json",
        "config.json",
    }
    assert result.bytes == sum(f.size for f in result.files)
    registry = local_unit().registry()
    manifest = registry.get("denoiser", "staging")
    assert manifest.version == "1"
    assert manifest.metrics == {"val_loss": 0.25, "steps": 8}
    assert manifest.framework.versions["torch"] == "2.5.1"
    assert manifest.lineage.data == ["/data/set-1"]
    assert manifest.lineage.flow_runs[0] == RUN
    assert manifest.metadata == {"team": "mr"}
    artifact = Artifact.get("model-denoiser")
    rows = json.loads(artifact.data)
    assert {r["file"] for r in rows} >= {"model/model.pt", "(all)"}
    assert next(r for r in rows if r["file"] == "metrics.json")["sha256"] == next(
        f.sha256 for f in result.files if f.path == "metrics.json"
    )

    again = model_upload(source=str(source), model_name="denoiser")
    assert again.version == "2"


def test_an_s3_source_goes_to_an_s3_registry(aws, tmp_path):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lab")
    source = training_output(tmp_path)
    for path in source.rglob("*"):
        if path.is_file():
            key = f"runs/training/{path.relative_to(source).as_posix()}"
            s3.put_object(Bucket="lab", Key=key, Body=path.read_bytes())
    result = model_upload(
        source="s3://lab/runs/training",
        model_name="denoiser",
        version="1.0.0",
        registry="s3://lab/registry",
    )
    assert result.manifest_uri == "s3://lab/registry/denoiser/1.0.0/manifest.json"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lab", Prefix="registry/")["Contents"]}
    assert "registry/denoiser/1.0.0/model/model.pt" in keys
    assert not any("checkpoints" in key for key in keys)


def test_bad_input_fails_clearly_and_publishes_nothing(sciflow_dirs):
    registry = sciflow_dirs / "runs" / "registry"
    with pytest.raises(InputError, match="does not exist"):
        model_upload(source=str(sciflow_dirs / "nowhere"), model_name="denoiser")
    with pytest.raises(InputError, match="model name 'de/noiser' is invalid"):
        model_upload(source=str(sciflow_dirs), model_name="de/noiser")
    assert not registry.exists()
    source = training_output(sciflow_dirs / "src")
    model_upload(source=str(source), model_name="denoiser", version="7")
    with pytest.raises(VersionExists, match="version 7 is already published"):
        model_upload(source=str(source), model_name="denoiser", version="7")
    assert local_unit().registry().list_versions("denoiser") == ["7"]
