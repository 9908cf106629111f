"""Secure cleanup: sweep what a run left behind and record what was checked."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel, Field

from blocks.compute_unit import load_unit
from tasks.cleanup.sweep import (
    Check,
    check_run_id,
    find_partial_writes,
    record_cleanup,
    sweep_scratch,
)
from tasks.compute.hooks import sciflow_flow
from tasks.compute.launches import LaunchRecord
from tasks.errors import SciflowError
from tasks.progress import publish_summary


class CleanupResult(BaseModel):
    """Where the cleanup record is and whether every check passed."""

    record_uri: str = Field(description="URI of cleanup.json.")
    ok: bool = Field(description="Whether every check passed.")
    checks: int = Field(description="Number of checks made.")


@task
def stop_recorded_launches(unit: str, run_id: str) -> Check:
    """Stop whatever the run's launch record still holds (its own hooks may not have run)."""
    record = LaunchRecord.of_run(load_unit(unit), run_id)
    try:
        stopped = record.stop_all(f"secure cleanup of flow run {run_id}")
    except SciflowError as exc:  # the others were stopped; what failed stays recorded
        return Check("launches stopped", False, str(exc))
    if left := record.launches():
        names = ", ".join(f"{launch.kind} {launch.id}" for launch in left)
        return Check("launches stopped", False, f"still recorded: {names}")
    detail = ", ".join(f"{launch.kind} {launch.id}" for launch in stopped) or "none left"
    return Check("launches stopped", True, detail)


@task
def sweep_local_scratch(run_id: str) -> Check:
    """Remove the run's scratch directory."""
    return sweep_scratch(run_id)


@task
def remove_partial_writes(unit: str, run_id: str) -> Check:
    """Remove temporary files a crashed writer left in the run directory."""
    compute_unit = load_unit(unit)
    return find_partial_writes(compute_unit.object_store(), compute_unit.run_dir(run_id))


@sciflow_flow(name="secure-cleanup")
def secure_cleanup(run_id: str, unit: str = "local") -> CleanupResult:
    """Clean up after the flow run ``run_id`` and write ``cleanup.json`` in its directory.

    Args:
        run_id: The flow run whose leftovers to sweep (its UUID).
        unit: The compute unit it ran on.

    Raises:
        InputError: ``run_id`` is not a flow-run id; nothing is touched.
    """
    check_run_id(run_id)
    checks = [
        stop_recorded_launches(unit, run_id),
        sweep_local_scratch(run_id),
        remove_partial_writes(unit, run_id),
    ]
    compute_unit = load_unit(unit)
    root = compute_unit.run_dir(run_id)
    record = record_cleanup(compute_unit.object_store(), root, run_id, unit, checks)
    uri = f"{root}/cleanup.json"
    publish_summary(
        "Secure cleanup",
        [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks],
        key=f"cleanup-{unit}",
    )
    return CleanupResult(record_uri=uri, ok=record.ok, checks=len(checks))
