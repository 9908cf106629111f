"""Model upload: publish a model's files as a new version in the registry.

check names → gather the source's files (an S3 source is fetched to scratch) → upload them
in parallel, each hashed as it streams → manifest written last (the version is published) →
optional stage → FSx for Lustre import when the unit has one → table artifact.

The registry is ``<storage root>/registry/`` of the unit (``tasks.storage.registry``): with
the audit prefix, the one place a run writes outside its run directory.
"""

from __future__ import annotations

import json
import math
import platform
import re
import threading
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Annotated, Any

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.compute_unit import load_unit
from tasks.compute.hooks import sciflow_flow
from tasks.compute.run_context import RunContext
from tasks.compute.spending import check_spending
from tasks.errors import InputError
from tasks.forms import JSON_BOX
from tasks.progress import Progress, artifact_key, run_logger
from tasks.retry import transient_retries
from tasks.storage.fsx import FsxLink
from tasks.storage.objects import MIB, Location
from tasks.storage.registry import (
    Framework,
    Lineage,
    Published,
    Registry,
    Version,
    check_model_name,
    check_stage,
    local_files,
)
from tasks.training.config import CHECKPOINTS, CONFIG_NAME, METRICS_NAME, MODEL_DIR

# A training run's output holds model/config.json; its checkpoints are not the model.
TRAINING_MARKER = f"{MODEL_DIR}/{CONFIG_NAME}"
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class UploadedFileInfo(BaseModel):
    """One file of the published version."""

    path: str = Field(description="Path inside the version.")
    size: int = Field(description="Size in bytes.")
    sha256: str = Field(description="SHA-256 of the content, hex.")


class UploadResult(BaseModel):
    """The published version and how the upload went."""

    model: str = Field(description="Model name.")
    version: str = Field(description="The version published.")
    manifest_uri: str = Field(description="URI of the version's manifest.json.")
    files: list[UploadedFileInfo] = Field(description="Every file with its size and digest.")
    bytes: int = Field(description="Bytes uploaded in all.")
    seconds: float = Field(description="Wall time of the upload and publish, in seconds.")
    stage: str | None = Field(None, description="Stage now pointing at the version, if any.")
    lustre_task: str | None = Field(None, description="FSx import task id, if one ran.")


@task
def gather_source(run: RunContext, source: str) -> dict[str, Path]:
    """The files to publish, as local paths: relative path -> file.

    A training run's output gives its model, metrics, config and curves (not checkpoints);
    another directory gives every file; an S3 source is downloaded to the run's scratch.
    """
    loc = Location.parse(source)
    if not loc.is_s3:
        path = loc.path
        skip = (CHECKPOINTS,) if (path / TRAINING_MARKER).is_file() else ()
        files = local_files(path, skip=skip)
        access = run.unit.access()
        for local in files.values():  # a symlink in the source must not lead out
            access.check_read(str(local), "source")
        return files
    store = run.store
    rels = list(store.walk(str(loc)))
    dest = run.scratch / "model-source"
    if not rels:
        if not store.exists(str(loc)):
            raise InputError(f"model source {loc} does not exist or holds no files")
        store.download_file(str(loc), dest / Path(loc.key).name)
        return local_files(dest / Path(loc.key).name)
    if TRAINING_MARKER in rels:
        rels = [rel for rel in rels if rel.split("/")[0] != CHECKPOINTS]
    for rel in rels:
        store.download_file(str(loc.join(rel)), dest / rel)
    return local_files(dest)


def describe_source(
    files: dict[str, Path], source: str, run_id: str
) -> tuple[Framework, dict[str, Any], Lineage]:
    """Framework, scalar metrics and lineage from what a training run leaves beside its model."""
    versions = {"python": platform.python_version()}
    model_config = _json(files.get(TRAINING_MARKER))
    if "torch" in model_config:
        versions["torch"] = str(model_config["torch"])  # what it was trained with
    else:
        try:
            versions["torch"] = package_metadata.version("torch")
        except package_metadata.PackageNotFoundError:
            pass
    metrics = {
        key: value
        for key, value in _json(files.get(METRICS_NAME)).items()
        if isinstance(value, bool | int | str)
        or (isinstance(value, float) and math.isfinite(value))
    }
    dataset = _json(files.get(CONFIG_NAME)).get("dataset")
    runs = list(dict.fromkeys([*RUN_ID.findall(source), run_id]))
    lineage = Lineage(source=source, flow_runs=runs, data=[dataset] if dataset else [])
    return (
        Framework(name="pytorch" if "torch" in versions else "unknown", versions=versions),
        metrics,
        lineage,
    )


def _json(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


@task(**transient_retries())
def publish_version(
    registry: Registry,
    files: dict[str, Path],
    model_name: str,
    version: str | None,
    source: str,
    metadata: dict[str, Any],
    run_id: str,
) -> Published:
    """Upload the files and write the manifest last; a retry resumes the same claim."""
    framework, metrics, lineage = describe_source(files, source, run_id)
    total = sum(path.stat().st_size for path in files.values())
    logger = run_logger()
    lock = threading.Lock()
    with Progress(total=total, what="bytes", key=f"upload-{run_id[:8]}") as progress:

        def advance(count: int) -> None:
            with lock:
                progress.advance(count)

        published = registry.publish(
            files,
            model_name,
            version,
            source=source,
            framework=framework,
            metrics=metrics,
            metadata=metadata,
            lineage=lineage,
            on_file=lambda stored: logger.info(
                "stored %s (%d bytes, sha256 %s)", stored.uri, stored.size, stored.sha256
            ),
            on_progress=advance,
        )
    return published


@task
def promote_stage(registry: Registry, model_name: str, version: str, stage: str) -> None:
    """Point the stage at the new version (a conditional update)."""
    previous = registry.promote(model_name, version, stage)
    run_logger().info("stage %s of %s: %s -> %s", stage, model_name, previous or "(unset)", version)


@task
def import_to_lustre(fsx: FsxLink, version_uri: str, tags: dict[str, str]) -> str:
    """Import the version's prefix into the unit's FSx file system; returns the task id."""
    progress: Progress | None = None

    def report(done: int, total: int) -> None:
        nonlocal progress
        if progress is None and total:
            progress = Progress(total=total, what="files imported", key="lustre-import").__enter__()
        if progress is not None:
            progress.advance(done - progress.done)

    result = fsx.import_prefix(version_uri, tags=tags, on_progress=report)
    run_logger().info(
        "FSx import task %s: %d files in %.1f s", result.task_id, result.files, result.seconds
    )
    return result.task_id


@sciflow_flow(name="model-upload")
def model_upload(
    source: str,
    model_name: str,
    version: str | SkipJsonSchema[None] = "",
    stage: str | SkipJsonSchema[None] = "",
    metadata: Annotated[dict[str, Any] | None, JSON_BOX] = None,
    registry: str | SkipJsonSchema[None] = "",
    unit: str = "local",
) -> UploadResult:
    """Publish a model's files as a version in the registry, verified, with a manifest.

    Args:
        source: A local file or directory, or a storage URI (a training run's output: its
            model/, metrics.json and config.json are published, checkpoints are not).
        model_name: Registry name: 1-64 letters, digits, '-' or '_'.
        version: An integer ('3') or semantic version ('1.2.3'); the model's next if omitted.
        stage: Stage to point at the new version ('staging', 'production'), if any.
        metadata: JSON notes stored in the manifest.
        registry: Registry root URI; the unit's `<storage root>/registry` if omitted.
        unit: Compute unit whose storage (and FSx file system) holds the registry.
    """
    version, stage, registry = (
        version or None,
        stage or None,
        registry or None,
    )  # "": an empty form field
    check_model_name(model_name)
    if version is not None:
        Version.parse(version)
    if stage is not None:
        check_stage(stage)
    compute_unit = load_unit(unit)
    check_spending(compute_unit)
    access = compute_unit.access()
    access.check_read(source, "source")
    if registry is not None:
        access.check_write(registry, "registry")
    run = RunContext.current(compute_unit)
    target = compute_unit.registry()
    if registry is not None:
        target = Registry(run.store, registry, fsx=target.fsx)

    files = gather_source(run, source)
    published = publish_version(
        target, files, model_name, version, source, metadata or {}, run.run_id
    )
    manifest = published.manifest
    if stage is not None:
        promote_stage(target, model_name, manifest.version, stage)
    lustre_task = None
    if target.fsx is not None:
        version_uri = target.version_uri(model_name, manifest.version)
        lustre_task = import_to_lustre(target.fsx, version_uri, run.tags)

    rate = manifest.size / MIB / published.seconds if published.seconds > 0 else 0.0
    rows = [
        {"file": f.path, "bytes": f.size, "sha256": f.sha256, "MiB/s": ""} for f in manifest.files
    ]
    rows.append({"file": "(all)", "bytes": manifest.size, "sha256": "", "MiB/s": f"{rate:.1f}"})
    create_table_artifact(
        rows,
        key=artifact_key("model", model_name),
        description=f"{model_name} version {manifest.version}: {published.manifest_uri}",
    )
    run_logger().info(
        "published %s version %s: %d files, %d bytes in %.2f s (%.1f MiB/s)",
        model_name,
        manifest.version,
        len(manifest.files),
        manifest.size,
        published.seconds,
        rate,
    )
    return UploadResult(
        model=model_name,
        version=manifest.version,
        manifest_uri=published.manifest_uri,
        files=[UploadedFileInfo(**f.model_dump()) for f in manifest.files],
        bytes=manifest.size,
        seconds=published.seconds,
        stage=stage,
        lustre_task=lustre_task,
    )
