"""Verified transfers and conditional writes, on S3 or a local directory.

``upload_verified`` copies a file and returns its size and SHA-256; ``download_verified``
refuses a copy whose size or SHA-256 differs from the recorded ones. ``put_if_absent``
(publish once) and ``put_if_match`` (compare-and-swap) are the conditional writes a
registry builds on.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from tasks.aws.clients import aws_errors
from tasks.errors import (
    AlreadyExists,
    ConcurrentUpdate,
    InputError,
    IntegrityError,
    SciflowError,
    TransientError,
)
from tasks.storage.objects import MIB, Location, ObjectStore

__all__ = [
    "AlreadyExists",
    "ConcurrentUpdate",
    "IntegrityError",
    "UploadedFile",
    "download_verified",
    "put_if_absent",
    "put_if_match",
    "read_with_etag",
    "upload_verified",
]

Progress = Callable[[int], None]
CHUNK = MIB


@dataclass(frozen=True)
class UploadedFile:
    """A file as stored: where, how many bytes, and the SHA-256 (hex) of its content."""

    uri: str
    size: int
    sha256: str


def upload_verified(
    store: ObjectStore, source: Path, uri: str, *, on_progress: Progress | None = None
) -> UploadedFile:
    """Copy a local file to ``uri``, hashing it as it streams; returns what was stored.

    Args:
        store: The store (its part size and concurrency apply on S3).
        source: A local file.
        uri: Destination.
        on_progress: Called with the bytes done since its last call.

    Raises:
        InputError: ``source`` is not a file.
    """
    source = Path(source)
    if not source.is_file():
        raise InputError(f"cannot upload {source}: no such file")
    loc = Location.parse(uri)
    if not loc.is_s3:
        size, digest = _local_copy(source, loc.path, on_progress)
        return UploadedFile(str(loc), size, digest)
    size, digest = _hash_file(source)
    store.upload_file(source, str(loc))
    if on_progress is not None:
        on_progress(size)
    return UploadedFile(str(loc), size, digest)


def download_verified(
    store: ObjectStore, uri: str, dest: str | os.PathLike[str], *, size: int, sha256: str
) -> Path:
    """Copy ``uri`` to ``dest`` only if its size and SHA-256 (hex) are the recorded ones.

    Raises:
        IntegrityError: The content differs; nothing is left at ``dest``.
    """
    loc, target = Location.parse(uri), Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    try:
        hasher, got = hashlib.sha256(), 0
        with tmp.open("wb") as out:
            for chunk in _read_chunks(store, loc):
                hasher.update(chunk)
                got += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if got != size or hasher.hexdigest() != sha256:
            raise IntegrityError(
                f"refusing {loc}: it has {got} bytes with SHA-256 {hasher.hexdigest()}; "
                f"expected {size} bytes with SHA-256 {sha256}"
            )
        tmp.replace(target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def put_if_absent(store: ObjectStore, uri: str, data: bytes) -> str:
    """Create ``uri`` with ``data`` unless it exists; returns the URI.

    Identical content already there counts as success, so a retried call is idempotent.

    Raises:
        AlreadyExists: ``uri`` exists with other content.
    """
    loc = Location.parse(uri)
    if not loc.is_s3:
        try:
            _local_exclusive_create(loc.path, data)
        except FileExistsError:
            if _sha256(loc.path.read_bytes()) != _sha256(data):
                raise AlreadyExists(f"cannot create {loc}: it exists with other content") from None
        return str(loc)
    from botocore.exceptions import ClientError

    try:
        with aws_errors(f"create {loc}"):
            try:
                store.s3.put_object(
                    Bucket=loc.bucket,
                    Key=loc.key,
                    Body=data,
                    IfNoneMatch="*",
                    ChecksumSHA256=_b64sha256(data),
                )
            except ClientError as exc:
                if _status(exc) != 412:
                    raise
                existing = store.read_bytes(str(loc))
                if _sha256(existing) != _sha256(data):
                    raise AlreadyExists(
                        f"cannot create {loc}: it exists with other content"
                    ) from None
    except SciflowError as exc:
        if exc.code == "ConditionalRequestConflict":  # S3: a concurrent conditional write
            raise TransientError(str(exc)) from exc
        raise
    return str(loc)


def read_with_etag(store: ObjectStore, uri: str) -> tuple[bytes, str] | None:
    """The content of ``uri`` and the tag ``put_if_match`` compares; None when absent."""
    loc = Location.parse(uri)
    if not loc.is_s3:
        try:
            data = loc.path.read_bytes()
        except FileNotFoundError:
            return None
        return data, _sha256(data)
    from botocore.exceptions import ClientError

    with aws_errors(f"read {loc}"):
        try:
            response = store.s3.get_object(Bucket=loc.bucket, Key=loc.key)
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
        return response["Body"].read(), response["ETag"]


def put_if_match(store: ObjectStore, uri: str, data: bytes, etag: str | None) -> str:
    """Replace ``uri`` with ``data`` only if it still has ``etag``; returns the new tag.

    Args:
        store: The store.
        uri: The object (a stage alias).
        data: New content.
        etag: The tag ``read_with_etag`` returned, or None to create an absent object.

    Raises:
        ConcurrentUpdate: The object changed (or appeared, or went) since it was read.
    """
    loc = Location.parse(uri)
    if not loc.is_s3:
        return _local_compare_and_swap(loc.path, data, etag)
    from botocore.exceptions import ClientError

    condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
    with aws_errors(f"update {loc}"):
        try:
            response = store.s3.put_object(
                Bucket=loc.bucket,
                Key=loc.key,
                Body=data,
                ChecksumSHA256=_b64sha256(data),
                **condition,
            )
        except ClientError as exc:
            # 412: the tag moved; 404: IfMatch on an object deleted meanwhile; 409: S3 saw
            # a concurrent conditional write to the key.
            if _status(exc) in (404, 409, 412):
                raise ConcurrentUpdate(
                    f"cannot update {loc}: it changed since it was read (expected "
                    f"{'no object' if etag is None else 'ETag ' + etag}); read it again"
                ) from exc
            raise
    return str(response["ETag"])


# --- local ------------------------------------------------------------------------------


def _local_copy(source: Path, target: Path, on_progress: Progress | None) -> tuple[int, str]:
    """Copy with a streaming SHA-256 to a temporary name, fsync, rename, fsync the parent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    hasher, size = hashlib.sha256(), 0
    try:
        with source.open("rb") as src, tmp.open("wb") as out:
            while chunk := src.read(CHUNK):
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if on_progress is not None:
                    on_progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, hasher.hexdigest()


def _local_exclusive_create(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name, then link it to ``path``, which must not exist.

    ``os.link`` fails if ``path`` exists, like ``O_EXCL``, but the file is complete before it
    gets its name: a reader never sees it half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _local_compare_and_swap(path: Path, data: bytes, etag: str | None) -> str:
    with _locked(path):
        current = _sha256(path.read_bytes()) if path.exists() else None
        if current != etag:
            raise ConcurrentUpdate(
                f"cannot update {path}: it changed since it was read (expected "
                f"{'no file' if etag is None else 'tag ' + etag}); read it again"
            )
        tmp = _temporary(path)
        try:
            with tmp.open("wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(path)
            _fsync_dir(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return _sha256(data)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s directory (released by the kernel if we die)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    # The name ObjectStore.walk hides: a reader listing files never sees it.
    return path.with_name(f".{path.name}.{uuid4().hex}.tmp")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_file(path: Path) -> tuple[int, str]:
    hasher, size = hashlib.sha256(), 0
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size, hasher.hexdigest()


def _read_chunks(store: ObjectStore, loc: Location) -> Iterator[bytes]:
    if not loc.is_s3:
        try:
            with loc.path.open("rb") as src:
                while chunk := src.read(CHUNK):
                    yield chunk
        except FileNotFoundError:
            raise InputError(f"cannot read {loc}: no such file") from None
        return
    with aws_errors(f"download {loc}"):
        body = store.s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        yield from body.iter_chunks(CHUNK)


# --- small helpers ------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", {}) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
