"""The research pipeline a scientist runs end to end.

preflight → simulate → reconstruct → train → upload model → secure cleanup. Each stage is a
subflow with its own parameters; stages land with their issues, and ``make demo`` grows with
them. Today: preflight and secure cleanup.
"""

from __future__ import annotations

import json

from prefect import flow
from pydantic import BaseModel, Field

from blocks.compute_unit import load_unit
from flows.preflight import preflight
from flows.secure_cleanup import cleanup_on_exit, secure_cleanup
from tasks.progress import publish_summary
from tasks.storage.run_dir import RunContext


class PipelineResult(BaseModel):
    """Where a pipeline run's outputs are."""

    run_dir: str = Field(description="URI of the pipeline run's directory.")
    manifest_uri: str = Field(description="URI of pipeline.json, listing every stage's output.")
    stages: dict[str, str] = Field(description="Stage name to its main output's URI.")
    ok: bool = Field(description="Whether every stage's checks passed.")


@flow(
    name="research-pipeline",
    on_failure=[cleanup_on_exit],
    on_crashed=[cleanup_on_exit],
    on_cancellation=[cleanup_on_exit],
)
def research_pipeline(unit: str = "local", preflight_probes: int = 4) -> PipelineResult:
    """Run every stage on one compute unit and write a manifest of their outputs.

    Args:
        unit: Compute unit the stages run on (``local`` is this machine).
        preflight_probes: Tasks the preflight spreads over the Dask workers.
    """
    compute_unit = load_unit(unit)
    run = RunContext.current(compute_unit)

    checked = preflight(unit=unit, probes=preflight_probes)
    cleaned = secure_cleanup(run_id=run.run_id, unit=unit)

    stages = {"preflight": checked.report_uri, "secure-cleanup": cleaned.record_uri}
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
    )


if __name__ == "__main__":
    result = research_pipeline()
    print(f"\nresearch-pipeline {'succeeded' if result.ok else 'FAILED its checks'}")
    print(f"outputs: {result.run_dir}")
    for stage, uri in result.stages.items():
        print(f"  {stage:16s} {uri}")
    raise SystemExit(0 if result.ok else 1)
