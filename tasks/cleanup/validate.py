"""One cleanup validation for a run: the checks every end of run makes, timed and sealed.

The flow ``secure_cleanup`` and every flow's end hook call ``validate_run``; each adds its
own check of the run's launches first (``tasks.compute`` owns those), so both records hold
the same checks and whichever runs last leaves a complete record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from blocks.compute_unit import ComputeUnit
from tasks.cleanup.audit import Check, ValidationRecord, audit_key, write_record
from tasks.cleanup.gpu import scrub_gpus
from tasks.cleanup.intermediates import purge_intermediates
from tasks.cleanup.shred import shred_run_key
from tasks.cleanup.sweep import find_partial_writes, sweep_scratch
from tasks.errors import SciflowError


def timed(name: str, check: Callable[[], Check]) -> Check:
    """Run ``check``, timing it; a sciflow error becomes a failed check, not a stop."""
    start = time.perf_counter()
    try:
        result = check()
    except SciflowError as exc:
        result = Check(name, False, str(exc))
    return replace(result, seconds=time.perf_counter() - start)


def run_checks(unit: ComputeUnit, run_id: str, dry_run: bool = False) -> list[Check]:
    """Scratch and its key, half-written files, intermediates, GPU memory: cleaned, verified."""
    store, run_dir = unit.object_store(), unit.run_dir(run_id)

    def intermediates() -> Check:
        purge = purge_intermediates(store, run_dir, dry_run)
        return Check("intermediates purged", purge.ok, purge.describe(), purge.versions)

    return [
        timed("scratch removed", lambda: sweep_scratch(run_id, dry_run=dry_run)),
        timed("no partial writes", lambda: find_partial_writes(store, run_dir, dry_run)),
        timed("intermediates purged", intermediates),
        timed("scratch key destroyed", lambda: shred_run_key(run_id, dry_run)),
        timed("gpu scrubbed", lambda: scrub_gpus(dry_run)),
    ]


def validate_run(
    unit: ComputeUnit,
    run_id: str,
    trigger: str,
    first: Sequence[Check] = (),
    dry_run: bool = False,
) -> tuple[ValidationRecord, str]:
    """Run the checks after ``first``, write the sealed record; returns it and its URI."""
    started = datetime.now(UTC).isoformat()
    checks = [*first, *run_checks(unit, run_id, dry_run)]
    record = ValidationRecord(
        run_id=run_id,
        unit=unit.name,
        trigger=trigger,
        dry_run=dry_run,
        started_at=started,
        finished_at=datetime.now(UTC).isoformat(),
        checks=checks,
    )
    uri = write_record(
        unit.object_store(), unit.audit_uri(run_id), record, audit_key(create=unit.is_local)
    )
    return record, uri
