"""Secure cleanup checks: sweep a run's scratch space and record what was verified."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tasks.settings import get_settings
from tasks.storage.objects import Location, ObjectStore


@dataclass(frozen=True, slots=True)
class Check:
    """One verified condition."""

    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class CleanupRecord:
    """What cleanup did and checked for one run; written as ``cleanup.json``."""

    run_id: str
    unit: str
    finished_at: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(check.ok for check in self.checks)

    def to_json(self) -> str:
        """The record as indented JSON."""
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)


def sweep_scratch(run_id: str, scratch_root: Path | None = None) -> Check:
    """Delete a run's local scratch directory and verify it is gone."""
    root = (scratch_root or get_settings().scratch_root) / run_id
    count = sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    shutil.rmtree(root, ignore_errors=True)
    gone = not root.exists()
    detail = f"removed {count} files under {root}" if gone else f"{root} still exists"
    return Check("scratch removed", gone, detail)


def find_partial_writes(store: ObjectStore, run_root: str) -> Check:
    """Verify no temporary (half-written) file is left in a local run directory.

    On S3 an incomplete multipart upload is invisible and is aborted by the writer or the
    bucket's lifecycle rule, so only local directories need this check.
    """
    loc = Location.parse(run_root)
    if loc.is_s3 or not loc.path.is_dir():
        return Check("no partial writes", True, f"nothing to check under {run_root}")
    leftovers = sorted(str(p) for p in loc.path.rglob(".*.tmp"))
    for path in leftovers:
        Path(path).unlink(missing_ok=True)
    detail = f"removed {len(leftovers)} temporary files" if leftovers else "none found"
    return Check("no partial writes", True, detail)


def record_cleanup(
    store: ObjectStore, run_root: str, run_id: str, unit: str, checks: list[Check]
) -> CleanupRecord:
    """Write ``cleanup.json`` into the run directory and return the record."""
    record = CleanupRecord(
        run_id=run_id, unit=unit, finished_at=datetime.now(UTC).isoformat(), checks=checks
    )
    store.write_text(str(Location.parse(run_root).join("cleanup.json")), record.to_json())
    return record
