"""Purge a run's intermediates: ``<run dir>/tmp/``, every version, marker and upload under it.

Intermediates are what a run writes only to read again (staged slices, partial arrays); its
results sit elsewhere in the run directory and are kept. The purge itself
(``tasks.storage.purge``) removes every object version, delete marker and incomplete
multipart upload under the prefix, then verifies it holds nothing.
"""

from __future__ import annotations

from tasks.storage.objects import Location, ObjectStore
from tasks.storage.purge import Purge, purge_prefix

INTERMEDIATES = "tmp"

__all__ = ["INTERMEDIATES", "Purge", "intermediates_uri", "purge_intermediates"]


def intermediates_uri(run_dir: str) -> str:
    """Where a run keeps its intermediates: ``<run dir>/tmp/``."""
    return str(Location.parse(run_dir).join(INTERMEDIATES))


def purge_intermediates(store: ObjectStore, run_dir: str, dry_run: bool = False) -> Purge:
    """Remove everything under the run's ``tmp/`` prefix, all versions, and verify it is empty.

    Args:
        store: The unit's object store.
        run_dir: The run's directory URI (``ComputeUnit.run_dir``).
        dry_run: List what would go (as ``left``), remove nothing.
    """
    return purge_prefix(store, intermediates_uri(run_dir), dry_run)
