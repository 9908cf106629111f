"""The research pipeline a scientist runs end to end.

preflight → simulate → reconstruct → train → upload model → secure cleanup. Each stage is a
subflow with its own parameters; stages land with their issues, and ``make demo`` grows with
them. Today: preflight, an MPI Bloch simulation, reconstruction of what it wrote (or of the
user's ``signal``), a few DDP steps of a denoising U-Net on the reconstructed and simulated
images, its upload to the unit's model registry as the next version, and secure cleanup.
"""

from __future__ import annotations

import json

from prefect import task
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.compute_unit import load_unit
from flows.distributed_training import distributed_training
from flows.model_upload import model_upload
from flows.mr_reconstruction import check_reach as check_reconstruction_reach
from flows.mr_reconstruction import mr_reconstruction
from flows.multinode_simulation import check_reach as check_simulation_reach
from flows.multinode_simulation import multinode_simulation
from flows.preflight import preflight
from flows.secure_cleanup import secure_cleanup
from tasks.compute.hooks import sciflow_flow
from tasks.compute.run_context import RunContext
from tasks.compute.spending import check_spending
from tasks.mr.options import MrOptions, parse_job
from tasks.progress import publish_summary
from tasks.retry import transient_retries
from tasks.simulation.mpi_simulate import PhantomSpec, SequenceSpec
from tasks.storage.registry import check_model_name
from tasks.training.config import TrainingSettings
from tasks.training.data import build_training_set

# The demo simulation: a 64x64 Shepp-Logan, 4 spins per voxel, ideally spoiled GRE (few spins
# cannot dephase within a voxel, so RF spoiling alone would not give the Ernst contrast).
DEMO_PHANTOM = PhantomSpec(matrix=(64, 64), spins_per_voxel=4)
DEMO_SEQUENCE = SequenceSpec(builder="gre", params={"dummy_scans": 150, "spoil": "ideal"})

# The demo reconstruction: pseudo multiple replicas of a B1 combination, masked at 10% of the
# maximum (MR Optimum's GUI defaults, with fewer replicas to keep the demo quick).
DEMO_RECONSTRUCTION = MrOptions(
    method="pmr", recon="b1", replicas=32, mask="percentage", mask_value=10
)


# The demo training: a few DDP steps of a small U-Net on 2 processes; the images are tiny,
# so it shows the machinery (processes, checkpoints, curves), not a useful denoiser.
DEMO_TRAINING = TrainingSettings(model="unet", model_options={"width": 8}, epochs=2)
# The registry name the pipeline publishes its trained model under.
DEMO_MODEL_NAME = "denoiser"


@task(**transient_retries())
def make_training_set(run: RunContext, sources: list[str], dest: str) -> str:
    """(noisy, clean) image pairs from the stages' outputs; returns the set's directory."""
    build_training_set(sources, dest, store=run.store)
    return dest


class PipelineResult(BaseModel):
    """Where a pipeline run's outputs are."""

    run_dir: str = Field(description="URI of the pipeline run's directory.")
    manifest_uri: str = Field(description="URI of pipeline.json, listing every stage's output.")
    stages: dict[str, str] = Field(description="Stage name to its main output's URI.")
    ok: bool = Field(description="Whether every stage's checks passed.")
    median_snr: float = Field(description="Median SNR inside the mask of the reconstruction.")
    val_loss: float = Field(description="Validation loss of the trained model.")
    model_name: str = Field(description="Registry name of the trained model.")
    model_version: str = Field(description="Registry version the trained model was published as.")
    cleanup_checks: int = Field(description="Cleanup checks made, all passed (else it failed).")


@sciflow_flow(name="research-pipeline")
def research_pipeline(
    unit: str = "local",
    preflight_probes: int = 4,
    phantom: PhantomSpec = DEMO_PHANTOM,
    sequence: SequenceSpec = DEMO_SEQUENCE,
    coils: int = 8,
    ranks: int = 2,
    signal: str | SkipJsonSchema[None] = "",
    noise: str | SkipJsonSchema[None] = "",
    reconstruction: MrOptions = DEMO_RECONSTRUCTION,
    training: TrainingSettings = DEMO_TRAINING,
    model_name: str = DEMO_MODEL_NAME,
) -> PipelineResult:
    """Run every stage on one compute unit and write a manifest of their outputs.

    Args:
        unit: Compute unit the stages run on (``local`` is this machine).
        preflight_probes: Tasks the preflight spreads over the Dask workers.
        phantom: What the simulation images.
        sequence: The pulse sequence it plays.
        coils: Receive coils.
        ranks: MPI ranks sharing the simulation's spins.
        signal: Raw data to reconstruct instead of the simulation's.
        noise: Separate noise scan for ``signal``, if it has none inside.
        reconstruction: SNR method and reconstruction options.
        training: What to train on the reconstructed and simulated images (DDP).
        model_name: Registry name the trained model is published under (its next version).
    """
    signal, noise = signal or None, noise or None  # "": an empty form field
    compute_unit = load_unit(unit)
    # Every path the stages would reach is checked before the first stage starts.
    check_model_name(model_name)
    access = compute_unit.access()
    check_simulation_reach(access, phantom, sequence, None)
    check_reconstruction_reach(access, signal, noise, parse_job(reconstruction), None)
    check_spending(compute_unit)
    run = RunContext.current(compute_unit)

    checked = preflight(unit=unit, probes=preflight_probes)
    simulated = multinode_simulation(
        phantom=phantom,
        sequence=sequence,
        coils=coils,
        nodes=1,
        ranks_per_node=ranks,
        output=run.uri("simulation"),
        unit=unit,
    )
    raw = signal or simulated.raw_uri
    reconstructed = mr_reconstruction(
        signal=raw, noise=noise, options=reconstruction, output=run.uri("reconstruction"), unit=unit
    )
    training_set = make_training_set(
        run, [reconstructed.output, simulated.raw_uri], run.uri("training-set")
    )
    trained = distributed_training(
        dataset=training_set, settings=training, output=run.uri("training"), unit=unit
    )
    uploaded = model_upload(source=trained.output, model_name=model_name, unit=unit)
    cleaned = secure_cleanup(run_id=run.run_id, unit=unit)

    stages = {
        "preflight": checked.report_uri,
        "simulation": simulated.raw_uri,
        "reconstruction": reconstructed.snr,
        "training": trained.model,
        "model-upload": uploaded.manifest_uri,
        "secure-cleanup": cleaned.record_uri,
    }
    manifest = {"run_id": run.run_id, "unit": unit, "stages": stages}
    manifest_uri = run.store.write_text(run.uri("pipeline.json"), json.dumps(manifest, indent=2))
    publish_summary(
        "Research pipeline",
        [{"stage": name, "output": uri} for name, uri in stages.items()],
        key=f"pipeline-{unit}",
        notes=f"Run directory: `{run.root}`",
    )
    return PipelineResult(
        run_dir=run.root,
        manifest_uri=manifest_uri,
        stages=stages,
        ok=checked.ok and cleaned.ok,
        cleanup_checks=cleaned.checks,
        median_snr=reconstructed.median_snr,
        val_loss=trained.val_loss,
        model_name=uploaded.model,
        model_version=uploaded.version,
    )


def report(result: PipelineResult) -> str:
    """What ``make demo`` prints: the verdict, where outputs are, and the published version."""
    lines = [
        f"\nresearch-pipeline {'succeeded' if result.ok else 'FAILED its checks'}",
        f"outputs: {result.run_dir}",
        *(f"  {stage:16s} {uri}" for stage, uri in result.stages.items()),
        f"cleanup: {result.cleanup_checks} checks passed",
        f"median SNR in the mask: {result.median_snr:.1f}",
        f"denoiser validation loss: {result.val_loss:.4g}",
        f"model registry: {result.model_name} version {result.model_version}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    result = research_pipeline()
    print(report(result))
    raise SystemExit(0 if result.ok else 1)
