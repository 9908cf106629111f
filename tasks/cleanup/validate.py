"""One cleanup validation for a run: the checks every end of run makes, timed and sealed.

The flow ``secure_cleanup`` and every flow's end hook call ``validate_run``; each adds its
own check of the run's launches first (``tasks.compute`` owns those), so both records hold
the same checks and whichever runs last leaves a complete record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from blocks.compute_unit import ComputeUnit
from tasks.cleanup.audit import Check, ValidationRecord, audit_key, write_record
from tasks.cleanup.gpu import scrub_gpus
from tasks.cleanup.intermediates import purge_intermediates
from tasks.cleanup.model_cache import CHECK_NAME as MODEL_CACHE_CHECK
from tasks.cleanup.model_cache import validate_cache
from tasks.cleanup.resources import CHECK_NAME as CLOUD_CHECK
from tasks.cleanup.resources import DASK_LOG_GROUP, cloud_resources_check
from tasks.cleanup.scope import PARTS, Part
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


def dask_log_groups(unit: ComputeUnit) -> list[str]:
    """The log groups a unit's Dask-on-Fargate tasks write to (their streams are the run's)."""
    return [(unit.fargate.log_group if unit.fargate else None) or DASK_LOG_GROUP]


def run_checks(
    unit: ComputeUnit, run_id: str, dry_run: bool = False, scope: Collection[Part] = PARTS
) -> list[Check]:
    """Scratch and its key, half-written files, GPU memory, model cache, intermediates, cloud.

    Each is removed and verified, if its part is in ``scope`` (``tasks.cleanup.scope``).
    """
    store, run_dir = unit.object_store(), unit.run_dir(run_id)

    def intermediates() -> Check:
        purge = purge_intermediates(store, run_dir, dry_run)
        return Check("intermediates purged", purge.ok, purge.describe(), purge.versions)

    def cloud() -> Check:
        if unit.is_local:
            return cloud_resources_check(None, run_id)
        return cloud_resources_check(
            unit.aws_account(), run_id, log_groups=dask_log_groups(unit), dry_run=dry_run
        )

    checks: list[Check] = []
    if "local" in scope:
        checks.append(timed("scratch removed", lambda: sweep_scratch(run_id, dry_run=dry_run)))
        checks.append(
            timed("no partial writes", lambda: find_partial_writes(store, run_dir, dry_run))
        )
        checks.append(timed("scratch key destroyed", lambda: shred_run_key(run_id, dry_run)))
        checks.append(timed("gpu scrubbed", lambda: scrub_gpus(dry_run)))
        checks.append(timed(MODEL_CACHE_CHECK, lambda: validate_cache(dry_run=dry_run)))
    if "intermediates" in scope:
        checks.append(timed("intermediates purged", intermediates))
    if "cloud" in scope:
        checks.append(timed(CLOUD_CHECK, cloud))
    return checks


def validate_run(
    unit: ComputeUnit,
    run_id: str,
    trigger: str,
    first: Sequence[Check] = (),
    dry_run: bool = False,
    scope: Collection[Part] = PARTS,
) -> tuple[ValidationRecord, str]:
    """Run the checks (of ``scope``) after ``first``, write the sealed record; returns both."""
    started = datetime.now(UTC).isoformat()
    checks = [*first, *run_checks(unit, run_id, dry_run, scope)]
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
