"""Verified transfers and conditional writes (tasks/storage/transfer.py), local and on moto.

S3 tests run real boto3 over HTTP to moto on 127.0.0.1 with 5 MiB parts (S3's minimum) and
files of at most 11 MiB. moto accepts a wrong ``x-amz-checksum-crc32`` or ``-sha256`` without
complaint, so what we send is checked on the requests themselves with botocore event hooks.
"""

from __future__ import annotations

import base64
import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import boto3
import pytest

from tasks.errors import AlreadyExists, ConcurrentUpdate, InputError, IntegrityError
from tasks.storage.objects import ObjectStore
from tasks.storage.transfer import (
    download_verified,
    put_if_match,
    put_once,
    read_with_etag,
    upload_client,
    upload_verified,
)
from tests.storage import transfer_procs

BUCKET = "sciflow-transfer"
MIB = 1024 * 1024
PART = 5 * MIB
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def s3(aws):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "s3":
        request.getfixturevalue("s3")
        return f"s3://{BUCKET}/t"
    return str(tmp_path / "store")


@pytest.fixture
def store() -> ObjectStore:
    return ObjectStore(part_size_mib=5, concurrency=4)


@pytest.fixture
def big(tmp_path, rng) -> tuple[Path, bytes]:
    """A file of two full 5 MiB parts and a short third."""
    data = rng.bytes(2 * PART + MIB + 7)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    return path, data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _b64sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _count(client: Any, event: str) -> list[dict[str, Any]]:
    """Record every call of one operation through ``client`` (an after-call hook)."""
    calls: list[dict[str, Any]] = []
    client.meta.events.register(event, lambda **kwargs: calls.append(kwargs))
    return calls


def _crc32(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


def _b64crc32(data: bytes) -> str:
    return base64.b64encode(_crc32(data)).decode()


def _header(request: Any, name: str) -> str:
    value = request.headers[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def _body(request: Any) -> bytes:
    """The bytes a prepared request will send, leaving its stream where it was."""
    if isinstance(request.body, bytes | bytearray):
        return bytes(request.body)
    position = request.body.tell()
    request.body.seek(0)
    data = request.body.read()
    request.body.seek(position)
    return data


def _parts(data: bytes) -> list[bytes]:
    return [data[i : i + PART] for i in range(0, len(data), PART)]


# --- round trips ------------------------------------------------------------------------


def test_upload_then_download_verified_round_trips(store, root, tmp_path, rng):
    data = rng.bytes(MIB + 3)
    (tmp_path / "f.bin").write_bytes(data)
    progress: list[int] = []

    done = upload_verified(store, tmp_path / "f.bin", f"{root}/f.bin", on_progress=progress.append)

    assert (done.size, done.sha256) == (len(data), _sha256(data))
    assert sum(progress) == len(data)
    back = download_verified(
        store, done.uri, tmp_path / "back.bin", size=done.size, sha256=done.sha256
    )
    assert back.read_bytes() == data
    with pytest.raises(IntegrityError, match="expected 1048580 bytes"):
        download_verified(
            store, done.uri, tmp_path / "bad.bin", size=done.size + 1, sha256=done.sha256
        )
    assert not (tmp_path / "bad.bin").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_multipart_upload_round_trips_with_matching_digests(store, s3, big, tmp_path):
    path, data = big
    progress: list[int] = []

    done = upload_verified(store, path, f"s3://{BUCKET}/m/big.bin", on_progress=progress.append)

    assert (done.size, done.sha256) == (len(data), _sha256(data))
    assert sorted(progress) == sorted(len(p) for p in _parts(data))
    head = s3.head_object(Bucket=BUCKET, Key="m/big.bin", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3")
    composite = b"".join(_crc32(p) for p in _parts(data))
    assert head["ChecksumCRC32"].split("-")[0] == _b64crc32(composite)  # S3 adds "-3"
    back = download_verified(
        store, done.uri, tmp_path / "out" / "big.bin", size=done.size, sha256=done.sha256
    )
    assert back.read_bytes() == data
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_one_part_at_a_time_reuses_its_buffer_and_still_sends_each_part(s3, rng, tmp_path):
    """Concurrency 1: each full part is read into the previous part's buffer once it is sent."""
    data = rng.bytes(4 * PART + 11)
    path = tmp_path / "five.bin"
    path.write_bytes(data)
    bodies: list[Any] = []
    store = ObjectStore(part_size_mib=5, concurrency=1)
    upload_client(store).meta.events.register(
        "before-send.s3.UploadPart", lambda request, **_: bodies.append(request.body)
    )

    done = upload_verified(store, path, f"s3://{BUCKET}/one/five.bin")

    assert all(body is bodies[0] for body in bodies[:4])  # four full parts, one buffer
    assert (done.size, done.sha256) == (len(data), _sha256(data))
    assert s3.get_object(Bucket=BUCKET, Key="one/five.bin")["Body"].read() == data


def test_every_part_carries_a_signed_crc32_of_its_body(store, s3, big):
    """moto does not verify checksums, so the requests are inspected before they are sent.

    CRC32 (S3 checks it on receipt; zlib computes it natively) rather than a second SHA-256:
    the file's own SHA-256, for the manifest, is computed from the same bytes.
    """
    path, data = big
    # Each body is copied as it is sent: a part's buffer is reused for a later part.
    sent: list[tuple[Any, bytes]] = []
    upload_client(store).meta.events.register(
        "before-send.s3.UploadPart", lambda request, **_: sent.append((request, _body(request)))
    )
    created = []
    store.s3.meta.events.register(
        "before-send.s3.CreateMultipartUpload", lambda request, **_: created.append(request)
    )
    completed = []
    store.s3.meta.events.register(
        "before-send.s3.CompleteMultipartUpload", lambda request, **_: completed.append(request)
    )

    upload_verified(store, path, f"s3://{BUCKET}/h/big.bin")

    assert _header(created[0], "x-amz-checksum-algorithm") == "CRC32"
    expected = {_b64crc32(p) for p in _parts(data)}
    assert {_header(r, "x-amz-checksum-crc32") for r, _ in sent} == expected
    assert sorted(body for _, body in sent) == sorted(_parts(data))
    for request, body in sent:
        assert _header(request, "x-amz-checksum-crc32") == _b64crc32(body)
        # The checksum header is signed; the payload is not hashed a third time for SigV4.
        assert _header(request, "x-amz-content-sha256") == "UNSIGNED-PAYLOAD"
        assert "x-amz-checksum-crc32" in _header(request, "Authorization")
    listing = completed[0].body.decode()
    assert all(f"<ChecksumCRC32>{c}</ChecksumCRC32>" in listing for c in expected)


def test_a_small_file_goes_up_in_one_put_with_its_sha256(store, s3, tmp_path):
    (tmp_path / "small.json").write_bytes(b'{"a": 1}')
    puts: list[Any] = []
    upload_client(store).meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: puts.append(request)
    )

    upload_verified(store, tmp_path / "small.json", f"s3://{BUCKET}/small.json")

    assert [_header(r, "x-amz-checksum-sha256") for r in puts] == [_b64sha256(b'{"a": 1}')]
    assert s3.get_object(Bucket=BUCKET, Key="small.json")["Body"].read() == b'{"a": 1}'


def test_a_flipped_byte_on_s3_is_refused_and_leaves_nothing(store, s3, big, tmp_path):
    path, data = big
    done = upload_verified(store, path, f"s3://{BUCKET}/f/big.bin")
    flipped = bytearray(data)
    flipped[PART + 17] ^= 0x01
    s3.put_object(Bucket=BUCKET, Key="f/big.bin", Body=bytes(flipped))
    dest = tmp_path / "cache" / "big.bin"

    with pytest.raises(IntegrityError, match=f"expected {len(data)} bytes with SHA-256"):
        download_verified(store, done.uri, dest, size=done.size, sha256=done.sha256)

    assert list(dest.parent.iterdir()) == []


def test_a_size_that_differs_is_refused_before_anything_is_fetched(store, s3, big, tmp_path):
    path, data = big
    done = upload_verified(store, path, f"s3://{BUCKET}/s/big.bin")
    gets = _count(store.s3, "after-call.s3.GetObject")

    with pytest.raises(IntegrityError, match=f"has {len(data)} bytes; expected {len(data) - 1}"):
        download_verified(
            store, done.uri, tmp_path / "s.bin", size=len(data) - 1, sha256=done.sha256
        )

    assert gets == []
    assert not (tmp_path / "s.bin").exists()


def test_a_large_download_comes_in_part_sized_ranges_of_one_version(store, s3, big, tmp_path):
    path, data = big
    done = upload_verified(store, path, f"s3://{BUCKET}/g/big.bin")
    gets = _count(store.s3, "provide-client-params.s3.GetObject")

    download_verified(store, done.uri, tmp_path / "g.bin", size=done.size, sha256=done.sha256)

    etag = s3.head_object(Bucket=BUCKET, Key="g/big.bin")["ETag"]
    assert {call["params"]["Range"] for call in gets} == {
        f"bytes=0-{PART - 1}",
        f"bytes={PART}-{2 * PART - 1}",
        f"bytes={2 * PART}-{len(data) - 1}",
    }
    assert len(gets) == 3
    assert {call["params"]["IfMatch"] for call in gets} == {etag}
    assert (tmp_path / "g.bin").read_bytes() == data


def test_uploading_the_same_file_again_sends_nothing(store, s3, big, tmp_path):
    path, data = big
    (tmp_path / "small.bin").write_bytes(b"small")
    upload_verified(store, path, f"s3://{BUCKET}/again/big.bin")
    upload_verified(store, tmp_path / "small.bin", f"s3://{BUCKET}/again/small.bin")
    parts = _count(upload_client(store), "after-call.s3.UploadPart")
    puts = _count(upload_client(store), "after-call.s3.PutObject")
    progress: list[int] = []

    again = upload_verified(
        store, path, f"s3://{BUCKET}/again/big.bin", on_progress=progress.append
    )
    small = upload_verified(store, tmp_path / "small.bin", f"s3://{BUCKET}/again/small.bin")

    assert (parts, puts) == ([], [])
    assert again.sha256 == _sha256(data)
    assert small.sha256 == _sha256(b"small")
    assert sum(progress) == len(data)


def test_a_changed_file_is_uploaded_again(store, s3, big):
    path, data = big
    upload_verified(store, path, f"s3://{BUCKET}/c/big.bin")
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    parts = _count(upload_client(store), "after-call.s3.UploadPart")

    done = upload_verified(store, path, f"s3://{BUCKET}/c/big.bin")

    assert len(parts) == 3
    assert done.sha256 == _sha256(path.read_bytes())
    assert s3.get_object(Bucket=BUCKET, Key="c/big.bin")["Body"].read() == path.read_bytes()


def test_a_missing_source_is_refused(store, root, tmp_path):
    with pytest.raises(InputError, match="no such file"):
        upload_verified(store, tmp_path / "nope.bin", f"{root}/nope.bin")


# --- resume ---------------------------------------------------------------------------


def test_a_killed_upload_resumes_and_sends_only_the_missing_parts(store, s3, big, tmp_path):
    path, data = big
    marker = tmp_path / "two-parts-sent"
    uri = f"s3://{BUCKET}/k/big.bin"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.storage.transfer_procs", str(path), uri, str(marker), "2"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():  # polls a condition; the child hangs once it is true
            assert child.poll() is None, f"the uploader exited early with {child.returncode}"
            assert time.monotonic() < deadline, "the uploader never sent two parts"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    (unfinished,) = s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
    listed = s3.list_parts(Bucket=BUCKET, Key="k/big.bin", UploadId=unfinished["UploadId"])
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
    assert not s3.list_objects_v2(Bucket=BUCKET).get("Contents")  # nothing visible yet
    sent = _count(upload_client(store), "before-parameter-build.s3.UploadPart")
    progress: list[int] = []

    done = upload_verified(store, path, uri, on_progress=progress.append)

    assert [call["params"]["PartNumber"] for call in sent] == [3]
    assert sum(progress) == len(data)  # parts found on S3 count as done
    assert done.sha256 == _sha256(data)
    assert s3.get_object(Bucket=BUCKET, Key="k/big.bin")["Body"].read() == data
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_resume_replaces_a_part_on_s3_that_differs_from_the_file(store, s3, big):
    path, data = big
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="r/big.bin", ChecksumAlgorithm="CRC32")
    first, second = _parts(data)[:2]
    wrong = bytes([second[0] ^ 0xFF]) + second[1:]
    for number, body in ((1, first), (2, wrong)):
        s3.upload_part(
            Bucket=BUCKET,
            Key="r/big.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=body,
            ChecksumCRC32=_b64crc32(body),
        )
    sent = _count(upload_client(store), "before-parameter-build.s3.UploadPart")

    done = upload_verified(store, path, f"s3://{BUCKET}/r/big.bin")

    assert sorted(call["params"]["PartNumber"] for call in sent) == [2, 3]
    assert done.sha256 == _sha256(data)
    assert s3.get_object(Bucket=BUCKET, Key="r/big.bin")["Body"].read() == data


def test_resume_compares_the_crc32_s3_reports_as_well_as_the_md5_etag(store, s3, big):
    """moto lists parts without checksums, so ListParts' answer gets them added here.

    Part 1 keeps its true MD5 ETag but is reported with a wrong CRC32 (what S3 would say
    of a part whose bytes differ): it is sent again. Part 2's CRC32 is right: it is kept.
    """
    path, data = big
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key="x/big.bin", ChecksumAlgorithm="CRC32")
    first, second, _ = _parts(data)
    for number, body in ((1, first), (2, second)):
        s3.upload_part(
            Bucket=BUCKET,
            Key="x/big.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=body,
            ChecksumCRC32=_b64crc32(body),
        )
    reported = {1: _b64crc32(b"other bytes"), 2: _b64crc32(second)}

    def add_checksums(parsed: dict[str, Any], **_: Any) -> None:
        for part in parsed.get("Parts", []):
            part["ChecksumCRC32"] = reported[part["PartNumber"]]

    store.s3.meta.events.register("after-call.s3.ListParts", add_checksums)
    sent = _count(upload_client(store), "before-parameter-build.s3.UploadPart")

    done = upload_verified(store, path, f"s3://{BUCKET}/x/big.bin")

    assert sorted(call["params"]["PartNumber"] for call in sent) == [1, 3]
    assert done.sha256 == _sha256(data)
    assert s3.get_object(Bucket=BUCKET, Key="x/big.bin")["Body"].read() == data


# --- conditional writes -----------------------------------------------------------------


def test_put_once_is_idempotent_and_refuses_other_content(store, root):
    uri = f"{root}/manifest.json"
    assert put_once(store, uri, b"one") == uri
    assert put_once(store, uri, b"one") == uri
    with pytest.raises(AlreadyExists, match="exists with other content"):
        put_once(store, uri, b"two")
    assert store.read_bytes(uri) == b"one"


def test_put_if_match_refuses_a_stale_tag(store, root):
    uri = f"{root}/stages/production"
    first = put_if_match(store, uri, b"1", None)
    with pytest.raises(ConcurrentUpdate):
        put_if_match(store, uri, b"x", None)
    second = put_if_match(store, uri, b"2", first)
    with pytest.raises(ConcurrentUpdate, match="changed since it was read"):
        put_if_match(store, uri, b"3", first)
    assert read_with_etag(store, uri) == (b"2", second)
    assert read_with_etag(store, f"{root}/stages/none") is None


def _race(target: Any, *args_per_racer: tuple[Any, ...]) -> list[str]:
    """Run ``target`` in one real process per argument tuple, released together."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(args_per_racer)), context.Queue()
    racers = [
        context.Process(target=target, args=(barrier, results, *args)) for args in args_per_racer
    ]
    for racer in racers:
        racer.start()
    try:
        return sorted(results.get(timeout=120) for _ in racers)
    finally:
        for racer in racers:
            racer.join(timeout=30)
            racer.kill()


def test_two_processes_creating_one_object_one_wins(root, store):
    """moto answers a conditional If-None-Match: * PUT of an existing key with 412.

    moto checks the condition and then stores, without a lock, so two requests landing in
    the same instant could in principle both pass there (S3 itself is atomic); 15 rounds of
    four racers each all had exactly one winner.
    """
    uri = f"{root}/v1/manifest.json"

    outcomes = _race(transfer_procs.race_put_once, (uri, b"first"), (uri, b"second"))

    assert outcomes == ["AlreadyExists", "won"]
    assert store.read_bytes(uri) in (b"first", b"second")


def test_two_processes_moving_one_alias_one_wins(root, store):
    uri = f"{root}/stages/staging"
    etag = put_if_match(store, uri, b"v1", None)

    outcomes = _race(transfer_procs.race_put_if_match, (uri, b"v2", etag), (uri, b"v3", etag))

    assert outcomes == ["ConcurrentUpdate", "won"]
    assert store.read_bytes(uri) in (b"v2", b"v3")
