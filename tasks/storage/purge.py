"""Purge a prefix: every object version, delete marker and incomplete upload under it, verified.

On a versioned bucket a plain delete only hides an object behind a delete marker, so the purge
deletes every version and every marker by id, aborts multipart uploads that never completed
(their parts are stored and billed but listed nowhere else), and then verifies the prefix
holds nothing. Cleanup purges a run's intermediates with it; the model registry, a version.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tasks.aws.clients import aws_errors
from tasks.storage.objects import Location, ObjectStore

# DeleteObjects takes at most 1,000 keys (or versions) a call.
DELETE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Purge:
    """What a purge removed (``versions`` counts files on a local disk) and what it left."""

    versions: int
    markers: int
    uploads: int
    left: list[str]
    refused: list[str]

    @property
    def ok(self) -> bool:
        """Nothing refused and nothing left."""
        return not self.left and not self.refused

    def describe(self) -> str:
        """One line for the record: what went and what did not."""
        removed = (
            f"removed {self.versions} object versions, {self.markers} delete markers, "
            f"aborted {self.uploads} incomplete uploads"
        )
        problems = []
        if self.refused:
            problems.append(f"refused: {', '.join(self.refused[:5])}")
        if self.left:
            problems.append(f"{len(self.left)} left: {', '.join(self.left[:5])}")
        return "; ".join([removed, *problems])


def purge_prefix(store: ObjectStore, uri: str, dry_run: bool = False) -> Purge:
    """Remove everything under the directory ``uri``, all versions, and verify it is empty.

    Args:
        store: The object store (its S3 client for an ``s3://`` URI).
        uri: The directory (prefix) to purge.
        dry_run: List what would go (as ``left``), remove nothing.
    """
    loc = Location.parse(uri)
    if not loc.is_s3:
        return _purge_local(loc, dry_run)
    prefix = loc.key.rstrip("/") + "/"
    s3, bucket = store.s3, loc.bucket
    versions, markers = _versions(s3, bucket, prefix)
    uploads = _uploads(s3, bucket, prefix)
    if dry_run:
        listed = [f"{key} (version {vid})" for key, vid in versions + markers]
        listed += [f"{key} (upload {uid})" for key, uid in uploads]
        return Purge(0, 0, 0, listed, [])
    with aws_errors(f"purge {loc}"):
        for key, upload_id in uploads:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        refused = delete_versions(s3, bucket, versions + markers)
    left_versions, left_markers = _versions(s3, bucket, prefix)
    left = [key for key, _ in left_versions + left_markers]
    left += [f"{key} (upload)" for key, _ in _uploads(s3, bucket, prefix)]
    return Purge(len(versions), len(markers), len(uploads), left, refused)


def delete_versions(s3: Any, bucket: str, versions: list[tuple[str, str]]) -> list[str]:
    """Delete ``(key, version id)`` pairs, 1,000 a call; returns ``"key: code"`` per refusal."""
    refused: list[str] = []
    for start in range(0, len(versions), DELETE_BATCH):
        batch = [{"Key": k, "VersionId": v} for k, v in versions[start : start + DELETE_BATCH]]
        answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        refused += [f"{e['Key']}: {e.get('Code', '')}" for e in answer.get("Errors", [])]
    return refused


def _purge_local(loc: Location, dry_run: bool) -> Purge:
    path = loc.path
    if not path.exists():
        return Purge(0, 0, 0, [], [])
    files = sorted(str(p) for p in path.rglob("*") if p.is_file())
    if dry_run:
        return Purge(0, 0, 0, files, [])
    refused: list[str] = []
    try:
        shutil.rmtree(path)
    except OSError as exc:
        refused.append(f"{path}: {exc}")
    left = sorted(str(p) for p in path.rglob("*")) if path.exists() else []
    return Purge(len(files), 0, 0, left, refused)


def _versions(
    s3: Any, bucket: str, prefix: str
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    versions: list[tuple[str, str]] = []
    markers: list[tuple[str, str]] = []
    for page in _pages(s3, "list_object_versions", Bucket=bucket, Prefix=prefix):
        versions += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
        markers += [(m["Key"], m["VersionId"]) for m in page.get("DeleteMarkers", [])]
    return versions, markers


def _uploads(s3: Any, bucket: str, prefix: str) -> list[tuple[str, str]]:
    return [
        (u["Key"], u["UploadId"])
        for page in _pages(s3, "list_multipart_uploads", Bucket=bucket, Prefix=prefix)
        for u in page.get("Uploads", [])
    ]


def _pages(s3: Any, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    with aws_errors(f"{operation} s3://{kwargs['Bucket']}/{kwargs['Prefix']}"):
        yield from s3.get_paginator(operation).paginate(**kwargs)
