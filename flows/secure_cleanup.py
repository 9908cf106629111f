"""Secure cleanup: stop what a run launched, remove what it left, and seal a record of it."""

from __future__ import annotations

from prefect import task
from prefect.client.schemas.objects import FlowRun
from prefect.runtime import flow_run
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.compute_unit import load_unit
from tasks.cleanup.audit import Check
from tasks.cleanup.runs import read_run, started_by, unit_name
from tasks.cleanup.scope import Scope, resolve_scope
from tasks.cleanup.validate import validate_run
from tasks.compute.hooks import sciflow_flow
from tasks.compute.launches import LaunchRecord
from tasks.errors import SciflowError
from tasks.progress import publish_summary


class CleanupFailed(SciflowError):
    """A cleanup check failed; the record says which and what was found."""


class CleanupResult(BaseModel):
    """Where the sealed cleanup record is and what it holds."""

    record_uri: str = Field(description="URI of cleanup_validation.json.")
    ok: bool = Field(description="Whether every check passed.")
    checks: int = Field(description="Number of checks made.")
    dry_run: bool = Field(False, description="Whether it only listed what would go.")


@task
def stop_recorded_launches(unit: str, run_id: str, dry_run: bool = False) -> Check:
    """Stop whatever the run's launch record still holds (its own hooks may not have run)."""
    record = LaunchRecord.of_run(load_unit(unit), run_id)
    if dry_run:
        held = ", ".join(f"{launch.kind} {launch.id}" for launch in record.launches())
        return Check("launches stopped", not held, f"would stop: {held or 'nothing'}")
    try:
        stopped = record.stop_all(f"secure cleanup of flow run {run_id}")
    except SciflowError as exc:  # the others were stopped; what failed stays recorded
        return Check("launches stopped", False, str(exc))
    if left := record.launches():
        names = ", ".join(f"{launch.kind} {launch.id}" for launch in left)
        return Check("launches stopped", False, f"still recorded: {names}")
    detail = ", ".join(f"{launch.kind} {launch.id}" for launch in stopped) or "none left"
    return Check("launches stopped", True, detail, removed=len(stopped))


def cleanup_trigger(target: FlowRun) -> str:
    """What the record names as its trigger: the automation that started this run, if one did."""
    own = flow_run.get_id()
    by = started_by(read_run(own)) if own else ""
    if by.startswith("automation"):
        return f"secure-cleanup by {by} after the run was {target.state_name}"
    return "secure-cleanup"


@sciflow_flow(name="secure-cleanup")
def secure_cleanup(
    run_id: str,
    unit: str | SkipJsonSchema[None] = "",
    scope: tuple[Scope, ...] = ("all",),
    dry_run: bool = False,
) -> CleanupResult:
    """Clean up after the flow run ``run_id``; seal the record under ``<root>/audit/<unit>/``.

    Every check runs, whatever the others found; then a failed one fails this flow.

    Args:
        run_id: The flow run whose leftovers to remove (its UUID, known to the Prefect API).
        unit: The compute unit it ran on; by default the one its ``unit`` parameter names.
        scope: What to clean: ``local`` (scratch, half-written files, processes),
            ``intermediates`` (its ``tmp/`` prefix), ``cloud`` (what it launched, then every
            resource tagged with its run id), or ``all``.
        dry_run: Only list what would go; remove nothing (the record says so).

    Raises:
        InputError: ``run_id`` is not a flow-run id or names no flow run, or ``scope`` names
            nothing or an unknown part; nothing is touched.
        CleanupFailed: A check failed (after all ran and the record was written).
    """
    unit = unit or None  # "": an empty form field
    parts = resolve_scope(scope)
    target = read_run(run_id)
    compute_unit = load_unit(unit or unit_name(target))
    unit = compute_unit.name
    launched = [stop_recorded_launches(unit, run_id, dry_run)] if parts & {"local", "cloud"} else []
    record, uri = validate_run(
        compute_unit, run_id, cleanup_trigger(target), launched, dry_run, parts
    )
    publish_summary(
        "Secure cleanup",
        [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in record.checks],
        key=f"cleanup-{unit}",
    )
    if failed := record.failed:
        names = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        raise CleanupFailed(
            f"{len(failed)} of {len(record.checks)} cleanup checks failed for run {run_id} "
            f"({names}); record at {uri}"
        )
    return CleanupResult(record_uri=uri, ok=record.ok, checks=len(record.checks), dry_run=dry_run)
