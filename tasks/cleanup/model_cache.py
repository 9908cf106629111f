"""Validate the local model cache: every cached version against its manifest's digests.

``Registry.load`` keeps each version in ``<model cache>/<manifest sha256>/`` with the
manifest written last. A cached entry is valid when its manifest hashes to the directory's
name and every file it lists has the recorded size and SHA-256; anything else (a changed
byte, a missing file, a manifest without its files) is removed and named in the check.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

from tasks.cleanup.audit import Check
from tasks.errors import IntegrityError
from tasks.settings import get_settings
from tasks.storage.registry import MANIFEST_NAME, Manifest, verify_dir

CHECK_NAME = "model cache valid"


def validate_cache(cache: Path | None = None, dry_run: bool = False) -> Check:
    """Check every cached model version; remove and report those that do not match.

    Args:
        cache: The cache directory; ``SCIFLOW_MODEL_CACHE`` if omitted.
        dry_run: Only report the mismatches (the check fails on any); remove nothing.

    Returns:
        The check ``model cache valid``: ok when every entry left is valid (mismatches
        found were removed; their digests and the first problem are in ``detail``).
    """
    start = time.perf_counter()
    root = Path(cache) if cache is not None else get_settings().model_cache
    entries = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    checked, bad, left = 0, [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue  # a download in progress: it becomes an entry only once complete
        checked += 1
        problem = _problem(entry)
        if problem is None:
            continue
        bad.append(f"{entry.name[:12]}: {problem}")
        if dry_run:
            left.append(entry.name[:12])
            continue
        shutil.rmtree(entry, ignore_errors=True)
        if entry.exists():
            left.append(entry.name[:12])
    detail = f"checked {checked} cached versions in {root}"
    if bad:
        found = f"found {len(bad)}" if dry_run else f"removed {len(bad) - len(left)}"
        detail += f"; {found} that did not match: " + "; ".join(bad[:5])
    if left and not dry_run:
        detail += f"; could not remove {', '.join(left)}"
    return Check(
        CHECK_NAME,
        ok=not left,
        detail=detail,
        removed=len(bad) - len(left),
        seconds=time.perf_counter() - start,
    )


def _problem(entry: Path) -> str | None:
    """Why a cache entry is invalid, or None."""
    manifest_path = entry / MANIFEST_NAME
    if not manifest_path.is_file():
        return "no manifest"
    data = manifest_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.name:
        return "manifest does not hash to the entry's name"
    try:
        manifest = Manifest.from_json(data, str(manifest_path))
        verify_dir(entry, manifest)
    except IntegrityError as exc:
        return str(exc)
    return None
