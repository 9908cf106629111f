"""Orphan sweep: clean up after runs that ended hours ago and still hold something.

Every run's end hooks clean up, and the cleanup automation (``tasks.cleanup.automation``)
does for runs killed before their hooks ran. This catches what both missed (the automation
was not installed, or the server was down when a run died): runs whose launch record,
intermediates or scratch are still there although Prefect says they ended more than
``older_than_hours`` ago. Each gets a ``secure_cleanup`` subflow. The deployment
``cleanup-sweep/local`` runs it every hour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from prefect.client.schemas.objects import FlowRun
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from blocks.compute_unit import ComputeUnit, load_unit
from flows.secure_cleanup import CleanupFailed, CleanupResult, secure_cleanup
from tasks.cleanup.intermediates import INTERMEDIATES
from tasks.cleanup.orphans import held_in_scratch, runs_holding
from tasks.cleanup.resources import tagged_run_ids
from tasks.cleanup.runs import ended_at, read_runs, unit_name
from tasks.cleanup.validate import dask_log_groups
from tasks.compute.hooks import sciflow_flow
from tasks.compute.launches import RECORD_DIR
from tasks.errors import InputError
from tasks.progress import publish_summary
from tasks.settings import get_settings

# What each kind of holding is called in the report.
HELD = {RECORD_DIR: "launch record", INTERMEDIATES: "intermediates"}


class SweptRun(BaseModel):
    """What the sweep did about one run that still held something."""

    run_id: str = Field(description="The flow run's id.")
    held: list[str] = Field(description="What it held: launch record, intermediates, scratch.")
    action: Literal["cleaned", "failed", "would clean", "left alone"] = Field(
        description="What the sweep did."
    )
    detail: str = Field(description="The cleanup record's URI, the failure, or why it was left.")


class SweepResult(BaseModel):
    """The runs the sweep found holding something, and what it did about each."""

    unit: str = Field(description="The compute unit swept.")
    older_than_hours: float = Field(description="Runs that ended longer ago were cleaned.")
    dry_run: bool = Field(description="Whether it only listed what it would clean.")
    runs: list[SweptRun] = Field(description="One entry per run found, by run id.")

    def ids(self, action: str) -> list[str]:
        """The run ids the sweep gave ``action``."""
        return [run.run_id for run in self.runs if run.action == action]


def candidate_run_ids(unit: ComputeUnit) -> dict[str, list[str]]:
    """Runs that may still hold something, and what: launches, intermediates, scratch, tags.

    Storage is searched under ``unit``'s run root; scratch is this machine's (any unit's runs);
    an AWS unit's account is searched by the ``sciflow:run-id`` tag.
    """
    held = {
        run_id: [HELD[sub] for sub in subs]
        for run_id, subs in runs_holding(unit, (RECORD_DIR, INTERMEDIATES)).items()
    }
    for run_id in held_in_scratch():
        held.setdefault(run_id, []).append("scratch")
    if not unit.is_local:
        tagged = tagged_run_ids(unit.aws_account(), log_groups=dask_log_groups(unit))
        for run_id, resources in tagged.items():
            held.setdefault(run_id, []).append(f"{len(resources)} tagged cloud resources")
    return held


def reason_to_leave(run: FlowRun | None, unit: str, cutoff: datetime) -> str:
    """Why the sweep leaves a run alone (``''``: clean it): unknown, elsewhere, not ended long."""
    if run is None:
        return "no such flow run on this Prefect API"
    ran_on = unit_name(run) or get_settings().default_unit
    if ran_on != unit:
        return f"ran on unit {ran_on!r}"
    ended = ended_at(run)
    if ended is None:
        return f"still {run.state_name or 'without a state'}"
    if ended > cutoff:
        return f"{run.state_name} at {ended.isoformat()}, after the cutoff {cutoff.isoformat()}"
    return ""


@sciflow_flow(name="cleanup-sweep")
def cleanup_sweep(
    unit: str = "local", older_than_hours: float = 24.0, dry_run: bool = False
) -> SweepResult:
    """Run secure cleanup for each run that ended ``older_than_hours`` ago and holds something.

    Runs still going, or ended more recently, are left alone, as are runs the Prefect API does
    not know (nothing is deleted for an id no server vouches for). Every cleanup runs, whatever
    the others did; then one that failed fails this flow.

    Args:
        unit: The compute unit whose runs to sweep.
        older_than_hours: How long ago a run must have ended (completed, failed, crashed or
            cancelled), in hours; 0 sweeps every ended run.
        dry_run: Only list the runs that would be cleaned; run no cleanup.

    Raises:
        InputError: ``older_than_hours`` is negative, or the unit does not exist.
        CleanupFailed: The cleanup of some run failed (after all were tried).
    """
    if older_than_hours < 0:
        raise InputError(f"older_than_hours={older_than_hours}; expected 0 or more hours")
    compute_unit = load_unit(unit)
    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
    candidates = candidate_run_ids(compute_unit)
    candidates.pop(flow_run.get_id() or "", None)
    runs = read_runs(candidates)
    swept = []
    for run_id, held in sorted(candidates.items()):
        if why := reason_to_leave(runs.get(run_id), compute_unit.name, cutoff):
            swept.append(SweptRun(run_id=run_id, held=held, action="left alone", detail=why))
        elif dry_run:
            ended = runs[run_id].state_name
            swept.append(SweptRun(run_id=run_id, held=held, action="would clean", detail=ended))
        else:
            state = secure_cleanup(run_id=run_id, unit=compute_unit.name, return_state=True)
            if state.is_completed():
                result: CleanupResult = state.result()
                action, detail = "cleaned", result.record_uri
            else:
                action, detail = "failed", state.message or state.name
            swept.append(SweptRun(run_id=run_id, held=held, action=action, detail=detail))
    report = SweepResult(
        unit=compute_unit.name, older_than_hours=older_than_hours, dry_run=dry_run, runs=swept
    )
    publish_summary(
        "Cleanup sweep",
        [run.model_dump() | {"held": ", ".join(run.held)} for run in swept],
        key=f"cleanup-sweep-{compute_unit.name}",
        notes=f"Runs that ended before {cutoff.isoformat()} were cleaned.",
    )
    if failed := report.ids("failed"):
        raise CleanupFailed(
            f"cleanup failed for {len(failed)} of {len(swept)} runs on unit "
            f"{compute_unit.name!r}: {', '.join(failed)}; each one's record says which check"
        )
    return report
