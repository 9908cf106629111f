"""Secure cleanup: sweep what a run left behind and record what was checked."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from pydantic import BaseModel, Field

from blocks.compute_unit import load_unit
from tasks.cleanup.sweep import (
    Check,
    find_partial_writes,
    record_cleanup,
    sweep_scratch,
)
from tasks.progress import publish_summary, run_logger


class CleanupResult(BaseModel):
    """Where the cleanup record is and whether every check passed."""

    record_uri: str = Field(description="URI of cleanup.json.")
    ok: bool = Field(description="Whether every check passed.")
    checks: int = Field(description="Number of checks made.")


@task
def sweep_local_scratch(run_id: str) -> Check:
    """Remove the run's scratch directory."""
    return sweep_scratch(run_id)


@task
def remove_partial_writes(unit: str, run_id: str) -> Check:
    """Remove temporary files a crashed writer left in the run directory."""
    compute_unit = load_unit(unit)
    return find_partial_writes(compute_unit.object_store(), compute_unit.run_dir(run_id))


@flow(name="secure-cleanup")
def secure_cleanup(run_id: str, unit: str = "local") -> CleanupResult:
    """Clean up after the flow run ``run_id`` and write ``cleanup.json`` in its directory.

    Args:
        run_id: The flow run whose leftovers to sweep.
        unit: The compute unit it ran on.
    """
    checks = [sweep_local_scratch(run_id), remove_partial_writes(unit, run_id)]
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


def cleanup_on_exit(flow: Any, flow_run: Any, state: Any) -> None:
    """Flow hook: run the cleanup checks when a run ends, however it ends.

    Hooks run in the flow run's process, so this calls the checks directly rather than
    starting a subflow whose own run could be cancelled with its parent.
    """
    unit_name = (flow_run.parameters or {}).get("unit") or None
    run_id = str(flow_run.id)
    compute_unit = load_unit(unit_name)
    root = compute_unit.run_dir(run_id)
    store = compute_unit.object_store()
    checks = [sweep_scratch(run_id), find_partial_writes(store, root)]
    record = record_cleanup(store, root, run_id, compute_unit.name, checks)
    run_logger().info(
        "cleanup after %s run %s: %d checks, ok=%s", state.name, run_id, len(checks), record.ok
    )
