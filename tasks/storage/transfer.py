"""Verified transfers and conditional writes, on S3 or a local directory.

``upload_verified`` copies a file and returns its size and SHA-256, computed from the bytes
as they are sent (no second pass); ``download_verified`` refuses a copy whose size or
SHA-256 differs from the recorded ones. ``put_once`` (write once: final outputs, a registry's
manifests) and ``put_if_match`` (compare-and-swap) are the conditional writes.

S3 uploads use our own multipart loop rather than boto3's TransferManager, fresh or
resumed: one code path, which ``benchmarks/upload.py`` measures against plain
``upload_file`` (1 GiB to moto, 16 MiB parts, 8 threads, 2 cores shared with a CI run:
0.84x-1.07x its time over six runs, five at or under 1.0x, with 4-6% less CPU in all; see
the benchmark's docstring), while the TransferManager cannot resume.

- A file up to the store's part size goes up in one PUT with its SHA-256 as
  ``ChecksumSHA256``; a larger one as a multipart upload with ``ChecksumAlgorithm=CRC32``,
  whose parts are read once, in order, with ``readinto`` into ``concurrency`` reused
  buffers: one thread feeds them to the whole-file SHA-256 (hashlib releases the GIL) while
  ``concurrency`` threads send them, each with its CRC32, which S3 checks; a buffer is
  reused once its part is both sent and hashed. A ``bytearray`` body goes out in one
  ``sendall`` (botocore streams a ``bytes`` body from a BytesIO in 16 KiB writes, after a
  ``100-continue`` round trip).
- CRC32 rather than SHA-256 per part: the cryptographic digest is the file's SHA-256 (the
  manifest's, checked on every load); a second SHA-256 pass per part cost the client CPU
  and made S3 (moto, serially at completion) hash the object with SHA-256 again, 1.1-1.3x
  the time of plain ``upload_file``, which also sends CRC32. zlib computes CRC32 natively
  (CRC32C and CRC64NVME would need awscrt). The checksum header is signed; the payload is
  not hashed again for the signature (on HTTPS botocore does the same; TLS authenticates).
- A failed or killed upload is left on S3 (not aborted) for the next run: that run finds it
  with ``ListMultipartUploads``, lists its parts, reads every part again to hash it and
  uploads only the parts missing or differing: a part is kept when its size, its CRC32
  (where S3 reports one) and its ETag (where that is the part's MD5, as on S3 without KMS
  and on moto) match. Buckets should carry a lifecycle rule that aborts incomplete
  multipart uploads after some days.
- An object already complete at the key with the same size and checksums (a single PUT's
  SHA-256, or a multipart object's composite CRC32 and MD5 ETag) is kept, not sent again.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any
from uuid import uuid4
from weakref import WeakKeyDictionary

from tasks.aws.clients import aws_errors, client
from tasks.errors import (
    AlreadyExists,
    ConcurrentUpdate,
    InputError,
    IntegrityError,
    SciflowError,
    TransientError,
)
from tasks.storage.objects import MIB, Location, ObjectStore, _tagging, fsync_dir

__all__ = [
    "AlreadyExists",
    "ConcurrentUpdate",
    "IntegrityError",
    "UploadedFile",
    "download_verified",
    "put_if_match",
    "put_once",
    "read_with_etag",
    "upload_client",
    "upload_verified",
]

Progress = Callable[[int], None]
CHUNK = MIB
MAX_PARTS = 10_000  # S3's limit per multipart upload
MIN_PART = 5 * MIB  # S3's minimum for every part but the last
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_MD5_MULTIPART_ETAG = re.compile(r'^"?([0-9a-f]{32})-([0-9]+)"?$')
_UPLOAD_CLIENTS: WeakKeyDictionary[ObjectStore, Any] = WeakKeyDictionary()


@dataclass(frozen=True)
class UploadedFile:
    """A file as stored: where, how many bytes, and the SHA-256 (hex) of its content."""

    uri: str
    size: int
    sha256: str


def upload_verified(
    store: ObjectStore,
    source: Path,
    uri: str,
    *,
    on_progress: Progress | None = None,
    tags: Mapping[str, str] | None = None,
) -> UploadedFile:
    """Copy a local file to ``uri``, hashing it as it streams; returns what was stored.

    On S3 an interrupted upload of the same file to the same key resumes (see the module
    docstring); nothing appears under ``uri`` until the whole file is there.

    Args:
        store: The store (its part size and concurrency apply on S3).
        source: A local file.
        uri: Destination.
        on_progress: Called in the calling thread with the bytes done since its last call
            (parts found already on S3 count as done).
        tags: S3 object tags (ignored locally).

    Raises:
        InputError: ``source`` is not a file, or changed while it was read.
        IntegrityError: S3 reports a size or checksum other than the one sent.
    """
    source = Path(source)
    if not source.is_file():
        raise InputError(f"cannot upload {source}: no such file")
    loc = Location.parse(uri)
    before = _stamp(source)
    if not loc.is_s3:
        size, digest = _local_copy(source, loc.path, on_progress)
    elif before[0] <= store.part_size:
        size, digest = _s3_put(store, source, loc, on_progress, tags)
    else:
        size, digest = _MultipartUpload(store, source, loc, on_progress, tags).run()
    if _stamp(source) != before or size != before[0]:
        raise InputError(
            f"cannot upload {source}: it changed while it was read; upload it again once "
            "whatever writes it has finished"
        )
    return UploadedFile(str(loc), size, digest)


def upload_client(store: ObjectStore) -> Any:
    """The S3 client that sends ``upload_verified``'s bytes (``PutObject``, ``UploadPart``).

    The store's account and retry policy, one connection per part in flight, and no
    separate payload hash for the signature: every request it sends carries a signed
    checksum of its body (``x-amz-checksum-sha256`` or ``-crc32``).
    """
    cached = _UPLOAD_CLIENTS.get(store)
    if cached is None:
        from botocore.config import Config

        cached = client(
            "s3",
            store.account,
            max_attempts=store.max_attempts,
            max_pool_connections=max(10, store.concurrency * 2),
            config=Config(s3={"payload_signing_enabled": False}),
        )
        _UPLOAD_CLIENTS[store] = cached
    return cached


def download_verified(
    store: ObjectStore, uri: str, dest: str | os.PathLike[str], *, size: int, sha256: str
) -> Path:
    """Copy ``uri`` to ``dest`` only if its size and SHA-256 (hex) are the recorded ones.

    On S3 an object larger than the store's part size comes as ranged GETs, ``concurrency``
    at a time, all of one object version (``If-Match`` its ETag), hashed in order as they
    arrive; a size that differs is refused before anything is fetched.

    Raises:
        IntegrityError: The content differs; nothing is left at ``dest``.
        InputError: There is no object at ``uri``.
    """
    loc, target = Location.parse(uri), Path(dest)
    if loc.is_s3:
        stored = _head(store, loc)
        if stored is None:
            raise InputError(f"cannot read {loc}: no such object")
        if stored.size != size:
            raise IntegrityError(
                f"refusing {loc}: it has {stored.size} bytes; expected {size} bytes "
                f"with SHA-256 {sha256}"
            )
        chunks = _s3_chunks(store, loc, stored)
    else:
        chunks = _local_chunks(loc)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    try:
        hasher, got = hashlib.sha256(), 0
        with tmp.open("wb") as out:
            for chunk in chunks:
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
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def put_once(
    store: ObjectStore,
    uri: str,
    content: bytes | Path,
    *,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Write a file that must never be replaced (a final output, a manifest); returns the URI.

    On S3 a ``PutObject`` with ``IfNoneMatch="*"``, or for a file larger than the store's
    part size a multipart upload whose ``CompleteMultipartUpload`` carries it (an unfinished
    upload to the key resumes as in ``upload_verified``). Locally the content goes to a
    hidden temporary name beside the target, is fsynced, then gets the target's name with
    ``os.link``, which fails if the name exists; the directory is fsynced after.

    Content already at ``uri`` with the same SHA-256 counts as success, so a retried or
    rerun write is idempotent; of two concurrent writers of different content exactly one
    succeeds.

    Args:
        store: The store (its part size and concurrency apply on S3).
        uri: Destination.
        content: The bytes, or a local file to copy.
        tags: S3 object tags (ignored locally).

    Raises:
        AlreadyExists: ``uri`` exists with other content; it is left as it was.
        InputError: ``content`` names no file.
    """
    loc = Location.parse(uri)
    if isinstance(content, bytes | bytearray | memoryview):
        content = bytes(content)
    else:
        content = Path(content)
        if not content.is_file():
            raise InputError(f"cannot write {loc}: source {content} is not a file")
    if not loc.is_s3:
        _local_put_once(loc, content)
        return str(loc)
    try:
        if isinstance(content, bytes) or content.stat().st_size <= store.part_size:
            _s3_put_once(store, loc, content, tags)
        else:
            _s3_multipart_once(store, loc, content, tags)
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


# --- S3 upload ----------------------------------------------------------------------------


def _s3_put(
    store: ObjectStore,
    source: Path,
    loc: Location,
    on_progress: Progress | None,
    tags: Mapping[str, str] | None,
) -> tuple[int, str]:
    """One PUT carrying the file's SHA-256, unless the same content is already there."""
    data = source.read_bytes()
    digest = hashlib.sha256(data).digest()
    checksum = _b64(digest)
    existing = _head(store, loc)
    if not (existing and existing.size == len(data) and existing.checksum == checksum):
        extra = {"Tagging": _tagging(tags)} if tags else {}
        with aws_errors(f"upload to {loc}"):
            upload_client(store).put_object(
                Bucket=loc.bucket,
                Key=loc.key,
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=checksum,
                **extra,
            )
    if on_progress is not None:
        on_progress(len(data))
    return len(data), digest.hex()


def _s3_put_once(
    store: ObjectStore, loc: Location, content: bytes | Path, tags: Mapping[str, str] | None
) -> None:
    """One conditional PUT; on 412 the object there must hold the same bytes."""
    from botocore.exceptions import ClientError

    data = content if isinstance(content, bytes) else content.read_bytes()
    extra = {"Tagging": _tagging(tags)} if tags else {}
    with aws_errors(f"create {loc}"):
        try:
            store.s3.put_object(
                Bucket=loc.bucket,
                Key=loc.key,
                Body=data,
                IfNoneMatch="*",
                ChecksumSHA256=_b64sha256(data),
                **extra,
            )
            return
        except ClientError as exc:
            if _status(exc) != 412:
                raise
    _same_or_refuse(store, loc, len(data), _sha256(data))


def _s3_multipart_once(
    store: ObjectStore, loc: Location, source: Path, tags: Mapping[str, str] | None
) -> None:
    """A multipart upload completed with ``IfNoneMatch``; an object already there is compared.

    The key is checked first, so a file that would be refused is not sent.
    """
    if _head(store, loc) is not None:
        _same_or_refuse(store, loc, source.stat().st_size, _file_sha256(source))
        return
    try:
        _MultipartUpload(store, source, loc, None, tags, create_only=True).run()
    except _Taken:
        _same_or_refuse(store, loc, source.stat().st_size, _file_sha256(source))


class _Taken(Exception):
    """A conditional complete found an object at the key (S3 answered 412)."""


def _same_or_refuse(store: ObjectStore, loc: Location, size: int, sha256: str) -> None:
    """Return if the object at ``loc`` has ``size`` bytes with ``sha256`` (hex); else refuse."""
    stored = _head(store, loc)
    if stored is not None and stored.size == size:
        whole = _b64(bytes.fromhex(sha256))
        if stored.checksum == whole:  # a single PUT's checksum is the content's own
            return
        if _object_sha256(store, loc) == sha256:
            return
    raise _refused(loc, sha256)


def _object_sha256(store: ObjectStore, loc: Location) -> str:
    hasher = hashlib.sha256()
    with aws_errors(f"read {loc}"):
        body = store.s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        for chunk in body.iter_chunks(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _refused(loc: Location, sha256: str) -> AlreadyExists:
    return AlreadyExists(
        f"cannot write {loc}: it exists with other content than this write's "
        f"(SHA-256 {sha256[:16]}...); outputs are written once, so choose another output "
        "location or remove the old one first"
    )


@dataclass(frozen=True, slots=True)
class _Part:
    """One part of a multipart upload: its number (from 1), offset and size in bytes."""

    number: int
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class _Stored:
    """What S3 reports about an object or an uploaded part."""

    size: int
    etag: str
    checksum: str | None  # base64 SHA-256 (a single PUT's)
    crc32: str | None = None  # base64 CRC32 (a multipart object's ends in "-<parts>")


class _MultipartUpload:
    """One file to one key as a multipart upload, resuming one left by an earlier run."""

    def __init__(
        self,
        store: ObjectStore,
        source: Path,
        loc: Location,
        on_progress: Progress | None,
        tags: Mapping[str, str] | None,
        create_only: bool = False,
    ) -> None:
        self.store, self.source, self.loc = store, source, loc
        self.on_progress, self.tags = on_progress, tags
        self.create_only = create_only  # complete only if no object is at the key
        self.size = source.stat().st_size
        self.sent_parts = 0  # parts this run uploaded (the rest were on S3 already)

    def run(self) -> tuple[int, str]:
        """Upload (or finish uploading) the file; returns its size and SHA-256 (hex)."""
        upload_id, stored = self._find_upload()
        parts = _layout(self.size, _part_size(self.size, self.store.part_size, stored))
        if upload_id is None:
            kept = self._kept_object(parts)
            if kept is not None:
                return self.size, kept
            upload_id = self._create()
        whole, sent = self._send(upload_id, parts, stored)
        self._complete(upload_id, parts, sent)
        return self.size, whole

    def _find_upload(self) -> tuple[str | None, dict[int, _Stored]]:
        """The newest unfinished CRC32 multipart upload to this key, and its parts."""
        s3, loc = self.store.s3, self.loc
        with aws_errors(f"list unfinished uploads to {loc}"):
            uploads = [
                upload
                for page in s3.get_paginator("list_multipart_uploads").paginate(
                    Bucket=loc.bucket, Prefix=loc.key
                )
                for upload in page.get("Uploads", [])
                if upload["Key"] == loc.key and upload.get("ChecksumAlgorithm") == "CRC32"
            ]
            if not uploads:
                return None, {}
            upload_id = max(uploads, key=lambda upload: upload["Initiated"])["UploadId"]
            stored = {
                part["PartNumber"]: _Stored(
                    part["Size"], part["ETag"], None, part.get("ChecksumCRC32")
                )
                for page in s3.get_paginator("list_parts").paginate(
                    Bucket=loc.bucket, Key=loc.key, UploadId=upload_id
                )
                for part in page.get("Parts", [])
            }
        return upload_id, stored

    def _kept_object(self, parts: list[_Part]) -> str | None:
        """The SHA-256 (hex) of the file if an identical object is complete at the key.

        Reads the file once and compares what S3 reports: a single PUT's SHA-256, or a
        multipart object's composite CRC32 and, where its ETag is the MD5 of the part MD5s
        (S3 without KMS, moto), that too. None (upload it) when nothing matches.
        """
        existing = _head(self.store, self.loc)
        if not (existing and existing.size == self.size and (existing.checksum or existing.crc32)):
            return None
        etag = _MD5_MULTIPART_ETAG.match(existing.etag)
        whole, crcs, md5s = hashlib.sha256(), [], []
        with self.source.open("rb") as src:
            for part in parts:
                data = src.read(part.size)
                whole.update(data)
                crcs.append(_crc32(data))
                if etag:
                    md5s.append(hashlib.md5(data).digest())  # noqa: S324 - S3's ETag
        if existing.checksum:
            same = existing.checksum == _b64(whole.digest())
        else:
            same = _part_checksums_match(existing.crc32, crcs, len(parts))
            if etag:
                composite = hashlib.md5(b"".join(md5s)).hexdigest()  # noqa: S324
                same = same and etag[1] == composite and int(etag[2]) == len(parts)
        if not same:
            return None
        if self.on_progress is not None:
            self.on_progress(self.size)
        return whole.hexdigest()

    def _create(self) -> str:
        extra = {"Tagging": _tagging(self.tags)} if self.tags else {}
        with aws_errors(f"start upload to {self.loc}"):
            response = self.store.s3.create_multipart_upload(
                Bucket=self.loc.bucket, Key=self.loc.key, ChecksumAlgorithm="CRC32", **extra
            )
        return str(response["UploadId"])

    def _send(
        self, upload_id: str, parts: list[_Part], stored: dict[int, _Stored]
    ) -> tuple[str, dict[int, tuple[str, str]]]:
        """Read each part once; one thread hashes the whole file while others send the parts.

        Parts are read with ``readinto`` into ``concurrency`` reused buffers, each free again
        once its part is both sent and hashed.

        Returns:
            The file's SHA-256 (hex), and each part's ETag and base64 CRC32 by number.
        """
        whole = hashlib.sha256()
        sent: dict[int, tuple[str, str]] = {}
        pending: set[Future[tuple[_Part, str, str, bool, bytearray]]] = set()
        free: list[bytearray] = []
        limit = self.store.concurrency

        def send(part: _Part, buffer: bytearray, hashed: Future[None]) -> Any:
            result = self._send_part(upload_id, part, buffer, stored.get(part.number))
            hashed.result()  # the buffer is reused only once the hash is done with it too
            return (*result, buffer)

        def collect(finished: set[Future[tuple[_Part, str, str, bool, bytearray]]]) -> None:
            for future in finished:
                part, etag, checksum, uploaded, buffer = future.result()
                sent[part.number] = (etag, checksum)
                self.sent_parts += uploaded
                free.append(buffer)
                if self.on_progress is not None:
                    self.on_progress(part.size)

        with (
            ThreadPoolExecutor(limit, thread_name_prefix="sciflow-upload") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="sciflow-sha256") as hasher,
            self.source.open("rb", buffering=0) as src,
        ):
            try:
                for part in parts:
                    # Bounds the parts held in memory: `limit` buffers, each sent and hashed.
                    while len(pending) >= limit:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        collect(finished)
                    if part.size == parts[0].size and free:
                        buffer = free.pop()
                    else:  # the first `limit` parts, and a shorter last one
                        buffer = bytearray(part.size)
                    if _read_into(src, buffer) != part.size:
                        raise InputError(
                            f"cannot upload {self.source}: it shrank while it was read"
                        )
                    # One thread, so in file order; hashlib releases the GIL meanwhile.
                    hashed = hasher.submit(whole.update, buffer)
                    pending.add(pool.submit(send, part, buffer, hashed))
                finished, pending = wait(pending)
                collect(finished)
            except BaseException:
                for future in pending:
                    future.cancel()
                hasher.shutdown(cancel_futures=True)
                raise
        return whole.hexdigest(), sent

    def _send_part(
        self, upload_id: str, part: _Part, data: bytearray, stored: _Stored | None
    ) -> tuple[_Part, str, str, bool]:
        """Upload one part unless S3 holds the same bytes already.

        A part on S3 is kept when its size, its CRC32 (where S3 reports one) and its ETag
        (where that is the part's MD5, as on S3 without KMS and on moto) all match, and at
        least one of the two was there to compare.

        Returns:
            The part, its ETag and base64 CRC32, and whether it was uploaded now.
        """
        crc = _crc32(data)
        checksum = _b64(crc)
        if stored is not None and stored.size == part.size:
            md5 = _MD5_ETAG.match(stored.etag)
            if (stored.crc32 or md5) and (
                (not stored.crc32 or stored.crc32 == checksum)
                and (not md5 or hashlib.md5(data).hexdigest() == md5[1])  # noqa: S324
            ):
                return part, stored.etag, checksum, False
        with aws_errors(f"upload part {part.number} of {self.loc}"):
            response = upload_client(self.store).upload_part(
                Bucket=self.loc.bucket,
                Key=self.loc.key,
                UploadId=upload_id,
                PartNumber=part.number,
                Body=data,
                ChecksumCRC32=checksum,
            )
        return part, str(response["ETag"]), checksum, True

    def _complete(
        self, upload_id: str, parts: list[_Part], sent: dict[int, tuple[str, str]]
    ) -> None:
        """Complete the upload, then check the object's size and composite checksum."""
        listing = [
            {"PartNumber": p.number, "ETag": sent[p.number][0], "ChecksumCRC32": sent[p.number][1]}
            for p in parts
        ]
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if self.create_only else {}
        with aws_errors(f"complete upload to {self.loc}"):
            try:
                self.store.s3.complete_multipart_upload(
                    Bucket=self.loc.bucket,
                    Key=self.loc.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": listing},
                    **condition,
                )
            except ClientError as exc:
                if not (self.create_only and _status(exc) == 412):
                    raise
                # Another writer created the key first: these parts will never be used.
                self.store.s3.abort_multipart_upload(
                    Bucket=self.loc.bucket, Key=self.loc.key, UploadId=upload_id
                )
                raise _Taken from None
        stored = _head(self.store, self.loc)
        crcs = [base64.b64decode(sent[p.number][1]) for p in parts]
        if (
            stored is None
            or stored.size != self.size
            or (stored.crc32 and not _part_checksums_match(stored.crc32, crcs, len(parts)))
        ):
            raise IntegrityError(
                f"{self.loc} on S3 is not what was sent: S3 reports "
                f"{stored.size if stored else 0} bytes with CRC32 "
                f"{stored.crc32 if stored else None}; sent {self.size} bytes with "
                f"{_b64(_crc32(b''.join(crcs)))}-{len(parts)}"
            )


def _part_size(size: int, wanted: int, stored: dict[int, _Stored]) -> int:
    """The part size: an unfinished upload's (its part 1), else ``wanted``, within S3's limits."""
    first = stored.get(1)
    if first is not None and first.size >= MIN_PART and first.size < size:
        return first.size
    # S3 allows 10,000 parts: a huge file gets larger parts, in whole MiB.
    return max(wanted, -(-size // MAX_PARTS // MIB) * MIB)


def _read_into(src: Any, buffer: bytearray) -> int:
    """Fill ``buffer`` from the unbuffered file ``src``; the bytes read (fewer at its end)."""
    view, got = memoryview(buffer), 0
    while got < len(buffer) and (n := src.readinto(view[got:])):
        got += n
    return got


def _layout(size: int, part_size: int) -> list[_Part]:
    return [
        _Part(number, offset, min(part_size, size - offset))
        for number, offset in enumerate(range(0, size, part_size), start=1)
    ]


def _head(store: ObjectStore, loc: Location) -> _Stored | None:
    """Size, ETag and SHA-256 checksum of the object at ``loc``; None if there is none."""
    from botocore.exceptions import ClientError

    with aws_errors(f"check {loc}"):
        try:
            head = store.s3.head_object(Bucket=loc.bucket, Key=loc.key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _status(exc) == 404:
                return None
            raise
    return _Stored(
        int(head["ContentLength"]),
        str(head["ETag"]),
        head.get("ChecksumSHA256"),
        head.get("ChecksumCRC32"),
    )


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
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, hasher.hexdigest()


def _local_put_once(loc: Location, content: bytes | Path) -> None:
    """Write to a temporary name, fsync, link it to ``loc`` (which must not exist), fsync the dir.

    ``os.link`` fails if the name exists, like ``O_EXCL``, but the file is complete before it
    gets its name: a reader never sees it half-written. A file already there with the same
    SHA-256 counts as written.
    """
    path = loc.path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    hasher = hashlib.sha256()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as out:
            if isinstance(content, bytes):
                hasher.update(content)
                out.write(content)
            else:
                with content.open("rb") as src:
                    while chunk := src.read(CHUNK):
                        hasher.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            if not path.is_file() or _file_sha256(path) != hasher.hexdigest():
                raise _refused(loc, hasher.hexdigest()) from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


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
            fsync_dir(path.parent)
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


def _local_chunks(loc: Location) -> Iterator[bytes]:
    try:
        with loc.path.open("rb") as src:
            while chunk := src.read(CHUNK):
                yield chunk
    except FileNotFoundError:
        raise InputError(f"cannot read {loc}: no such file") from None


def _s3_chunks(store: ObjectStore, loc: Location, stored: _Stored) -> Iterator[bytes]:
    """The object's bytes in order: one GET, or part-sized ranges fetched in parallel."""
    step = store.part_size

    def fetch(start: int) -> bytes:
        end = min(start + step, stored.size) - 1
        with aws_errors(f"download bytes {start}-{end} of {loc}"):
            response = store.s3.get_object(
                Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-{end}", IfMatch=stored.etag
            )
            return bytes(response["Body"].read())

    if stored.size <= step:
        with aws_errors(f"download {loc}"):
            body = store.s3.get_object(Bucket=loc.bucket, Key=loc.key, IfMatch=stored.etag)
            yield from body["Body"].iter_chunks(CHUNK)
        return
    starts = iter(range(0, stored.size, step))
    with ThreadPoolExecutor(store.concurrency, thread_name_prefix="sciflow-download") as pool:
        # A sliding window: at most `concurrency` ranges in memory, consumed in order.
        window = deque(pool.submit(fetch, start) for start in islice(starts, store.concurrency))
        try:
            while window:
                data = window.popleft().result()
                if (start := next(starts, None)) is not None:
                    window.append(pool.submit(fetch, start))
                yield data
        finally:
            for future in window:
                future.cancel()


# --- small helpers ------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def _crc32(data: bytes) -> bytes:
    """CRC32 as S3 takes it: 4 bytes, big-endian (zlib releases the GIL on large buffers)."""
    return zlib.crc32(data).to_bytes(4, "big")


def _part_checksums_match(reported: str | None, crcs: list[bytes], parts: int) -> bool:
    """Whether S3's composite CRC32 (``<base64>-<parts>``) is that of these part CRC32s."""
    if not reported:
        return False
    value, _, count = reported.partition("-")
    return value == _b64(_crc32(b"".join(crcs))) and count in ("", str(parts))


def _b64sha256(data: bytes) -> str:
    return _b64(hashlib.sha256(data).digest())


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _stamp(path: Path) -> tuple[int, int]:
    """Size and modification time (ns): what changes when a file is rewritten."""
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def _status(exc: Exception) -> int:
    response = getattr(exc, "response", {}) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
