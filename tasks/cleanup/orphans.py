"""Find runs that may still hold something, for the orphan sweep (``flows/cleanup_sweep.py``).

Storage is searched under one unit's run root (``<root>/<unit>/<run id>/``), scratch on this
machine (``<scratch root>/<run id>/``); only names that are flow-run ids count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from blocks.compute_unit import ComputeUnit
from tasks.aws.clients import aws_errors
from tasks.cleanup.sweep import check_run_id
from tasks.errors import InputError
from tasks.settings import get_settings
from tasks.storage.objects import Location, ObjectStore, join_uri


def runs_holding(unit: ComputeUnit, subdirs: Sequence[str]) -> dict[str, list[str]]:
    """Runs under ``unit``'s root with a file in some of ``subdirs`` (e.g. ``tmp``): which."""
    store, held = unit.object_store(), {}
    for run_id in _run_ids_under(unit):
        run_dir = unit.run_dir(run_id)
        if found := [s for s in subdirs if _has_a_file(store, join_uri(run_dir, s))]:
            held[run_id] = found
    return held


def held_in_scratch() -> set[str]:
    """Runs whose scratch directory exists on this machine (symlinks are not followed)."""
    root = get_settings().scratch_root
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if _is_run_id(p.name) and not p.is_symlink()}


def _run_ids_under(unit: ComputeUnit) -> Iterator[str]:
    """Names of the run directories under ``<root>/<unit>/`` that are flow-run ids."""
    loc = Location.parse(join_uri(unit.storage_root or get_settings().storage_root, unit.name))
    if not loc.is_s3:
        if loc.path.is_dir():
            yield from (p.name for p in loc.path.iterdir() if p.is_dir() and _is_run_id(p.name))
        return
    prefix = loc.key.rstrip("/") + "/"
    with aws_errors(f"list runs under {loc}"):
        pages = (
            unit.object_store()
            .s3.get_paginator("list_objects_v2")
            .paginate(Bucket=loc.bucket, Prefix=prefix, Delimiter="/")
        )
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                name = common["Prefix"][len(prefix) :].rstrip("/")
                if _is_run_id(name):
                    yield name


def _has_a_file(store: ObjectStore, uri: str) -> bool:
    return next(iter(store.walk(uri)), None) is not None  # on S3 one page, not all of them


def _is_run_id(name: str) -> bool:
    try:
        check_run_id(name)
    except InputError:
        return False
    return True
