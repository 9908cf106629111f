"""The shred of a run's sealed scratch files: destroy the run's key and verify it is gone.

What deleting scratch guarantees depends on the kind of file (README "Secure cleanup",
"What the shred guarantees"): a file sealed with the run's key (``tasks.storage.sealed``) is
unreadable once this check passes, wherever copies of its blocks survive; a plain file is
deleted, no more.
"""

from __future__ import annotations

from pathlib import Path

from tasks.cleanup.audit import Check
from tasks.storage.sealed import TMPFS, destroy_key, key_path

NAME = "scratch key destroyed"


def shred_run_key(run_id: str, dry_run: bool = False, directory: Path | None = None) -> Check:
    """Destroy run ``run_id``'s scratch key, if it made one, and verify the key file is gone.

    Args:
        run_id: The flow run (its UUID).
        dry_run: Only say whether there is a key to destroy.
        directory: Where the keys are; ``tasks.storage.sealed.key_dir()`` if omitted.
    """
    path = key_path(run_id, directory)
    where = "memory (tmpfs)" if path.is_relative_to(TMPFS) else "disk: a delete, no more"
    if dry_run:
        found = path.exists()
        detail = f"would destroy {path} ({where})" if found else "no run key"
        return Check(NAME, not found, detail)
    had = destroy_key(run_id, directory)
    if path.exists() or path.is_symlink():
        return Check(NAME, False, f"{path} still exists after it was destroyed")
    if not had:
        return Check(NAME, True, "no run key: the run sealed nothing")
    detail = f"destroyed {path} ({where}); the run's sealed files are unreadable"
    return Check(NAME, True, detail, removed=1)
