"""Secure cleanup checks on this machine: a run's scratch and its half-written files."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path

from tasks.cleanup.audit import Check
from tasks.errors import InputError
from tasks.settings import get_settings
from tasks.storage.objects import Location, ObjectStore

# Names writers give files before renaming them into place (ObjectStore, ``.<name>.<hex>.tmp``).
TEMPORARY = ".*.tmp"


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a flow-run id (a UUID in canonical form), else an InputError.

    It becomes part of paths that are deleted: ``"/home/me"`` joined onto the scratch root
    would replace it, and ``""`` would name every run's scratch.
    """
    try:
        canonical = str(uuid.UUID(run_id))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical != run_id:
        raise InputError(
            f"run_id={run_id!r} is not a flow-run id; expected a UUID such as "
            "'0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b' (the run's id in the Prefect UI)"
        )
    return run_id


def run_scratch(run_id: str, scratch_root: Path | None = None) -> Path:
    """The run's scratch directory, refused unless it lies inside the scratch root.

    Raises:
        InputError: ``run_id`` is not a flow-run id, or its directory is a symlink (which
            could point anywhere).
    """
    root = (scratch_root or get_settings().scratch_root).resolve()
    path = root / check_run_id(run_id)
    if path.is_symlink():
        raise InputError(
            f"scratch of run {run_id} is a symlink to {path.readlink()}; expected a directory "
            f"under {root}: nothing was deleted"
        )
    return path


def sweep_scratch(run_id: str, scratch_root: Path | None = None, dry_run: bool = False) -> Check:
    """Delete a run's local scratch directory and verify it is gone."""
    root = run_scratch(run_id, scratch_root)
    count = sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    if dry_run:
        return Check("scratch removed", count == 0, f"would remove {count} files under {root}")
    problem = ""
    try:
        shutil.rmtree(root)
    except FileNotFoundError:
        pass
    except OSError as exc:
        problem = f": {exc}"
    gone = not root.exists()
    detail = f"removed {count} files under {root}" if gone else f"{root} still exists{problem}"
    return Check("scratch removed", gone, detail, removed=count if gone else 0)


def find_partial_writes(store: ObjectStore, run_root: str, dry_run: bool = False) -> Check:
    """Remove temporary (half-written) files from a local run directory; verify none is left.

    On S3 an incomplete multipart upload is invisible and is aborted by the writer or the
    bucket's lifecycle rule, so only local directories are checked here.
    """
    loc = Location.parse(run_root)
    if loc.is_s3 or not loc.path.is_dir():
        return Check("no partial writes", True, f"no local directory at {run_root}")
    found = sorted(loc.path.rglob(TEMPORARY))
    if dry_run:
        return Check("no partial writes", not found, f"would remove {len(found)} temporary files")
    for path in found:
        with contextlib.suppress(OSError):  # whatever stays is reported below
            path.unlink(missing_ok=True)
    left = sorted(str(p) for p in loc.path.rglob(TEMPORARY))
    if left:
        return Check("no partial writes", False, f"{len(left)} temporary files remain: {left}")
    detail = f"removed {len(found)} temporary files" if found else "none found"
    return Check("no partial writes", True, detail, removed=len(found))
