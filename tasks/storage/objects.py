"""Read and write files and directories by URI: a local path, ``file://`` or ``s3://``.

Writes are atomic. Locally a file is written under a hidden temporary name in the target
directory, fsynced and renamed, then the directory is fsynced so the rename survives a crash;
on S3 an object appears only when its single PUT or its multipart upload completes, and a
failed multipart upload is aborted. A crash therefore never leaves a half-written file under
its final name.

S3 goes through boto3's TransferManager (multipart, parallel parts), with a client from
``tasks.aws.clients`` (its retry policy; ``AWS_ENDPOINT_URL`` points it at moto in tests).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit
from uuid import uuid4

from tasks.aws.clients import AwsAccount, aws_errors, client, transfer_manager
from tasks.errors import THROTTLING, InputError, TransientError

MIB = 1024 * 1024

# Suffixes that wrap another (``.nii.gz``): a staged name keeps the one beneath too.
_WRAPPING_SUFFIXES = frozenset({".gz", ".bz2", ".xz", ".zst"})
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed storage URI: an absolute local path, or an S3 bucket and key."""

    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str | os.PathLike[str]) -> Location:
        """Parse a local path, ``file://`` URI or ``s3://bucket/key``.

        Raises:
            InputError: The URI has another scheme, or an S3 URI has no bucket.
        """
        text = os.fspath(uri)
        if not text:
            raise InputError("storage URI is empty; expected a path, file:// or s3://bucket/key")
        parts = urlsplit(text)
        if parts.scheme == "s3":
            if not parts.netloc:
                raise InputError(f"storage URI {text!r} has no bucket; expected s3://bucket/key")
            return cls("s3", parts.netloc, parts.path.lstrip("/"))
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise InputError(
                    f"storage URI {text!r} names host {parts.netloc!r}; "
                    "expected file:///absolute/path"
                )
            return cls("file", "", str(Path(unquote(parts.path)).resolve()))
        if parts.scheme and len(parts.scheme) > 1:  # one letter is a Windows drive
            raise InputError(
                f"storage URI {text!r} has unsupported scheme {parts.scheme!r}; "
                "expected a local path, file:// or s3://bucket/key"
            )
        return cls("file", "", str(Path(text).expanduser().resolve()))

    @property
    def is_s3(self) -> bool:
        """Whether this location is on S3."""
        return self.scheme == "s3"

    @property
    def path(self) -> Path:
        """The local path; only for local locations."""
        if self.is_s3:
            raise InputError(f"{self} is on S3; expected a local path")
        return Path(self.key)

    def join(self, *parts: str) -> Location:
        """This location with relative path parts appended (``/``-separated)."""
        clean = [p.strip("/") for p in parts if p.strip("/")]
        for part in clean:
            if ".." in part.split("/"):
                raise InputError(f"path part {part!r} contains '..'; expected a relative name")
        if self.is_s3:
            key = "/".join([self.key.rstrip("/"), *clean]) if self.key else "/".join(clean)
            return Location("s3", self.bucket, key)
        return Location("file", "", str(Path(self.key, *clean)))

    def __str__(self) -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self.key}"
        return self.key


def join_uri(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended, as a URI string (local paths made absolute)."""
    return str(Location.parse(base).join(*parts))


def staged_name(uri: str) -> str:
    """A file name for a local copy of ``uri``, distinct for every distinct URI.

    A SHA-256 digest of the whole URI (32 hex characters) plus the original suffix, two for a
    compressed file (``.h5``, ``.dat``, ``.seq``, ``.nii.gz``), so readers that choose a
    format by suffix still do. ``s3://b/a/scan.h5`` and ``s3://b/b/scan.h5`` get two names,
    where their basename would have made one copy of two inputs.
    """
    digest = hashlib.sha256(uri.encode()).hexdigest()[:32]
    suffixes = [s for s in PurePosixPath(urlsplit(uri).path).suffixes if _SUFFIX.fullmatch(s)]
    keep = 2 if suffixes and suffixes[-1].lower() in _WRAPPING_SUFFIXES else 1
    return digest + "".join(suffixes[-keep:])


class ObjectStore:
    """Files and directories by URI, local or on S3.

    Args:
        account: AWS account for S3 (credentials, region); the ambient one if omitted.
        part_size_mib: Multipart threshold and part size in MiB (S3 minimum is 5).
        concurrency: Parallel part transfers.
        max_attempts: Attempts per S3 request, first try included, before a throttle or
            lost connection is raised; ``SCIFLOW_AWS_MAX_ATTEMPTS`` if omitted.

    The store pickles without its S3 client and account, so it can travel to Dask workers,
    which use their own ambient credentials (a task role).
    """

    def __init__(
        self,
        account: AwsAccount | None = None,
        part_size_mib: int = 64,
        concurrency: int = 8,
        max_attempts: int | None = None,
    ) -> None:
        if part_size_mib < 5:
            raise InputError(f"part_size_mib={part_size_mib} is below S3's 5 MiB minimum")
        self._account = account
        self.part_size = part_size_mib * MIB
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {
            "_account": None,
            "part_size": self.part_size,
            "concurrency": self.concurrency,
            "max_attempts": self.max_attempts,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _client=None)

    # --- reading -------------------------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        """The whole content of one file."""
        loc = Location.parse(uri)
        if not loc.is_s3:
            return _local_read(loc.path)
        with aws_errors(f"read {loc}"):
            return self.s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()

    def download_file(self, uri: str, dest: str | os.PathLike[str]) -> Path:
        """Copy one file to a local path, atomically; returns the path."""
        loc, target = Location.parse(uri), Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not loc.is_s3:
            if not loc.path.is_file():
                raise InputError(f"cannot read {loc}: no such file")
            with loc.path.open("rb") as src:
                _atomic_local_write(target, src)
            return target
        with aws_errors(f"download {loc}"), self._transfers() as manager:
            # s3transfer writes a temporary name and renames it into place.
            manager.download(loc.bucket, loc.key, str(target)).result()
        return target

    def download_dir(self, uri: str, dest: str | os.PathLike[str]) -> list[Path]:
        """Copy every file under a directory URI to ``dest``, keeping relative paths."""
        root, target = Location.parse(uri), Path(dest)
        files = list(self.walk(str(root)))
        if not files:
            raise InputError(f"cannot read {root}: no files under it")
        out = []
        if not root.is_s3:
            for rel in files:
                out.append(self.download_file(str(root.join(rel)), target / rel))
            return out
        with aws_errors(f"download {root}"), self._transfers() as manager:
            futures = []
            for rel in files:
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                key = root.join(rel).key
                futures.append(manager.download(root.bucket, key, str(path)))
                out.append(path)
            for future in futures:
                future.result()
        return out

    def exists(self, uri: str) -> bool:
        """Whether a file (or a non-empty directory) is at ``uri``."""
        loc = Location.parse(uri)
        if not loc.is_s3:
            return loc.path.exists()
        return self._s3_has(loc) or next(iter(self.walk(str(loc))), None) is not None

    def walk(self, uri: str) -> Iterator[str]:
        """Relative paths of every file under a directory URI, sorted; temporaries hidden."""
        loc = Location.parse(uri)
        if not loc.is_s3:
            if not loc.path.is_dir():
                return
            for path in sorted(p for p in loc.path.rglob("*") if p.is_file()):
                if not _is_temporary(path.name):
                    yield path.relative_to(loc.path).as_posix()
            return
        for rel in self._s3_list(loc):
            if not rel.endswith("/"):  # a console "folder" marker, not a file
                yield rel

    # --- writing -------------------------------------------------------------------------

    def write_bytes(self, uri: str, data: bytes, tags: Mapping[str, str] | None = None) -> str:
        """Write one file atomically; returns its URI.

        Args:
            uri: Destination.
            data: Content.
            tags: S3 object tags (ignored locally), e.g. the run's ``run_tags``.
        """
        loc = Location.parse(uri)
        if not loc.is_s3:
            _atomic_local_write(loc.path, data)
            return str(loc)
        extra = {"Tagging": _tagging(tags)} if tags else {}
        with aws_errors(f"write {loc}"):
            # One PUT: the object appears whole or not at all.
            self.s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=data, **extra)
        return str(loc)

    def write_text(self, uri: str, text: str, tags: Mapping[str, str] | None = None) -> str:
        """Write UTF-8 text atomically; returns its URI."""
        return self.write_bytes(uri, text.encode(), tags)

    def upload_fileobj(
        self, fileobj: IO[bytes], uri: str, tags: Mapping[str, str] | None = None
    ) -> str:
        """Stream a readable binary file object to ``uri`` atomically; returns its URI.

        On S3, objects larger than the part size go up as a multipart upload whose parts
        travel in parallel; if reading fails midway the upload is aborted and nothing
        appears under the key.
        """
        loc = Location.parse(uri)
        if not loc.is_s3:
            _atomic_local_write(loc.path, fileobj)
            return str(loc)
        extra = {"Tagging": _tagging(tags)} if tags else None
        with aws_errors(f"upload to {loc}"), self._transfers() as manager:
            manager.upload(fileobj, loc.bucket, loc.key, extra_args=extra).result()
        return str(loc)

    def upload_file(
        self, src: str | os.PathLike[str], uri: str, tags: Mapping[str, str] | None = None
    ) -> str:
        """Copy one local file to ``uri`` atomically; returns its URI."""
        path = Path(src)
        if not path.is_file():
            raise InputError(f"cannot upload {path}: no such file")
        with path.open("rb") as fileobj:
            return self.upload_fileobj(fileobj, uri, tags)

    def upload_dir(
        self, src: str | os.PathLike[str], uri: str, tags: Mapping[str, str] | None = None
    ) -> list[str]:
        """Copy every file under a local directory to ``uri``; returns their URIs."""
        root, dest = Path(src), Location.parse(uri)
        if not root.is_dir():
            raise InputError(f"cannot upload {root}: not a directory")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not dest.is_s3:
            rel = [p.relative_to(root).as_posix() for p in files]
            return [self.upload_file(root / r, str(dest.join(r))) for r in rel]
        extra = {"Tagging": _tagging(tags)} if tags else None
        uris = []
        with aws_errors(f"upload to {dest}"), self._transfers() as manager:
            futures = []
            for path in files:
                target = dest.join(path.relative_to(root).as_posix())
                futures.append(manager.upload(str(path), target.bucket, target.key, extra))
                uris.append(str(target))
            for future in futures:
                future.result()
        return uris

    def remove(self, uri: str) -> int:
        """Delete a file or everything under a directory URI; returns how many files went."""
        loc = Location.parse(uri)
        if not loc.is_s3:
            if loc.path.is_dir():
                count = sum(1 for p in loc.path.rglob("*") if p.is_file())
                shutil.rmtree(loc.path)
                return count
            if loc.path.exists():
                loc.path.unlink()
                return 1
            return 0
        keys = [loc.key] if self._s3_has(loc) else []
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        keys += [prefix + rel for rel in self._s3_list(loc)]  # folder markers go too
        with aws_errors(f"delete {loc}"):
            for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 at most
                batch = [{"Key": key} for key in keys[start : start + 1000]]
                response = self.s3.delete_objects(
                    Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                _raise_for_refused_deletes(loc, response.get("Errors", []))
        return sum(1 for key in keys if not key.endswith("/"))

    # --- S3 plumbing ---------------------------------------------------------------------

    @property
    def account(self) -> AwsAccount | None:
        """The AWS account S3 calls go to; None for the ambient credentials."""
        return self._account

    @property
    def s3(self) -> Any:
        """The boto3 S3 client, created on first use."""
        if self._client is None:
            self._client = client(
                "s3",
                self._account,
                max_attempts=self.max_attempts,
                max_pool_connections=max(10, self.concurrency * 2),
            )
        return self._client

    def _transfers(self) -> Any:
        return transfer_manager(self.s3, self.part_size, self.concurrency)

    def _s3_has(self, loc: Location) -> bool:
        """Whether an object sits exactly at ``loc`` (a missing one is not an error)."""
        from botocore.exceptions import ClientError

        if not loc.key or loc.key.endswith("/"):
            return False
        with aws_errors(f"check {loc}"):
            try:
                self.s3.head_object(Bucket=loc.bucket, Key=loc.key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True

    def _s3_list(self, loc: Location) -> Iterator[str]:
        """Every key under ``loc`` as a directory, relative to it, folder markers included."""
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        with aws_errors(f"list {loc}"):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=loc.bucket, Prefix=prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(prefix) :]


def _raise_for_refused_deletes(loc: Location, errors: list[dict[str, str]]) -> None:
    """DeleteObjects answers 200 and lists the keys it refused; those must not pass silently."""
    if not errors:
        return
    first = errors[0]
    code = first.get("Code", "Unknown")
    message = (
        f"cannot delete {loc}: S3 refused {len(errors)} object(s), first "
        f"s3://{loc.bucket}/{first.get('Key', '')} with {code}: {first.get('Message', '')}"
    )
    if code in THROTTLING:
        raise TransientError(message)
    raise InputError(message)


def _tagging(tags: Mapping[str, str]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _local_read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {path}: it is a directory; expected a file") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None


def _atomic_local_write(path: Path, content: bytes | IO[bytes]) -> None:
    """Write under a hidden temporary name beside ``path``, rename over it, fsync the directory.

    Outputs that must never be replaced use ``tasks.storage.transfer.put_once`` instead.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid4().hex}.tmp")
    try:
        with tmp.open("wb") as out:
            if isinstance(content, bytes | bytearray | memoryview):
                out.write(content)
            else:
                shutil.copyfileobj(content, out, length=MIB)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself is durable only once the directory is


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a file created, linked or renamed in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
