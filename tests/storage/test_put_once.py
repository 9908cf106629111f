"""Write-once outputs (``tasks.storage.transfer.put_once``) and durable local renames.

Local and against moto's server on 127.0.0.1 (which answers ``If-None-Match: *`` on an
existing key with 412, for PutObject and for CompleteMultipartUpload), with 5 MiB parts.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from tasks.errors import AlreadyExists
from tasks.storage.objects import ObjectStore
from tasks.storage.transfer import put_once
from tests.storage import transfer_procs

BUCKET = "sciflow-once"
MIB = 1024 * 1024
PART = 5 * MIB


@pytest.fixture
def s3(aws: str) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        request.getfixturevalue("s3")
        return f"s3://{BUCKET}/run"
    return str(tmp_path / "run")


@pytest.fixture
def store() -> ObjectStore:
    return ObjectStore(part_size_mib=5, concurrency=4)


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", [100, 2 * PART + 3], ids=["small", "multipart"])
def test_a_final_output_is_written_once_and_an_identical_rewrite_succeeds(
    store: ObjectStore, root: str, tmp_path: Path, rng: Any, size: int
) -> None:
    """Guards against a final output being replaced by other content (a rerun, another run).

    The same bytes again succeed (a retried write is idempotent); other bytes of the same
    size are refused with one line naming the key, and the first content stays. On S3 the
    multipart case is the file larger than a part, completed with IfNoneMatch.
    """
    first, other = rng.bytes(size), rng.bytes(size)
    uri = f"{root}/SNR.nii.gz"

    assert put_once(store, uri, _file(tmp_path / "a", first)) == uri
    assert put_once(store, uri, _file(tmp_path / "b", first)) == uri
    assert put_once(store, uri, first) == uri
    with pytest.raises(AlreadyExists) as refused:
        put_once(store, uri, _file(tmp_path / "c", other))
    with pytest.raises(AlreadyExists):
        put_once(store, uri, other)

    message = str(refused.value)
    assert "\n" not in message
    assert f"cannot write {uri}: it exists with other content" in message
    assert store.read_bytes(uri) == first


def test_a_multipart_output_completes_only_if_the_key_is_still_free(
    store: ObjectStore, s3: Any, tmp_path: Path, rng: Any
) -> None:
    """Guards against a multipart upload replacing an object created while its parts went up.

    Another writer creates the key just before CompleteMultipartUpload; the complete carries
    IfNoneMatch, S3 answers 412, the upload is aborted (no parts left behind) and the write
    is refused, leaving the other writer's object.
    """
    data = rng.bytes(2 * PART + 1)
    key, theirs = "run/simulation.h5", b"created meanwhile"
    conditions: list[Any] = []

    def create_first(params: dict[str, Any], **_: Any) -> None:
        conditions.append(params.get("IfNoneMatch"))
        s3.put_object(Bucket=BUCKET, Key=key, Body=theirs)

    store.s3.meta.events.register("before-parameter-build.s3.CompleteMultipartUpload", create_first)

    with pytest.raises(AlreadyExists, match=f"cannot write s3://{BUCKET}/{key}"):
        put_once(store, f"s3://{BUCKET}/{key}", _file(tmp_path / "big", data))

    assert conditions == ["*"]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == theirs
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def _race(*args_per_racer: tuple[Any, ...]) -> list[str]:
    """One real process per argument tuple, released together; their outcomes, sorted."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(args_per_racer)), context.Queue()
    racers = [
        context.Process(target=transfer_procs.race_put_once, args=(barrier, results, *args))
        for args in args_per_racer
    ]
    for racer in racers:
        racer.start()
    try:
        return sorted(results.get(timeout=120) for _ in racers)
    finally:
        for racer in racers:
            racer.join(timeout=30)
            racer.kill()


@pytest.mark.parametrize("same", [False, True], ids=["different", "identical"])
def test_two_processes_writing_one_output_never_both_land(
    store: ObjectStore, root: str, same: bool
) -> None:
    """Guards against two writers of one output both believing they wrote it.

    Different content: exactly one wins, the other gets AlreadyExists, and the output holds
    the winner's bytes whole. The same content: both succeed (a retry racing its original).
    """
    uri = f"{root}/info.json"
    one, two = b'{"run": 1}', (b'{"run": 1}' if same else b'{"run": 2}')

    outcomes = _race((uri, one), (uri, two))

    assert outcomes == (["won", "won"] if same else ["AlreadyExists", "won"])
    assert store.read_bytes(uri) in (one, two)


def _fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path behind every fd passed to os.fsync (then fsync it for real)."""
    seen: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_a_local_write_fsyncs_the_directory_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against a crash losing a renamed-into-place file: the rename lives in the
    directory, which must reach the disk too (fsync of the parent after the rename)."""
    seen = _fsynced_paths(monkeypatch)
    target = tmp_path / "out" / "spec.json"

    ObjectStore().write_bytes(str(target), b"{}")

    assert seen[-1] == str(target.parent)
    assert Path(seen[0]).parent == target.parent  # the temporary file, before the rename
    assert target.read_bytes() == b"{}"


def test_put_once_fsyncs_the_file_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards against a write-once output whose name survives a crash without its content."""
    seen = _fsynced_paths(monkeypatch)
    target = tmp_path / "out" / "model.pt"

    put_once(ObjectStore(), str(target), b"weights")

    assert [Path(p).parent for p in seen] == [target.parent, target.parent.parent]
    assert seen[-1] == str(target.parent)
    assert [p.name for p in target.parent.iterdir()] == ["model.pt"]  # no temporary left


def test_a_local_output_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    """Guards against treating a directory in the output's place as the output."""
    (tmp_path / "info.json").mkdir()

    with pytest.raises(AlreadyExists, match=r"info\.json: it exists with other content"):
        put_once(ObjectStore(), str(tmp_path / "info.json"), b"{}")


def test_a_multipart_output_sent_twice_sends_nothing_the_second_time(
    store: ObjectStore, s3: Any, tmp_path: Path, rng: Any
) -> None:
    """Guards against a retried large output being uploaded again before it is compared."""
    data = rng.bytes(2 * PART + 5)
    source = _file(tmp_path / "big", data)
    uri = f"s3://{BUCKET}/run/simulation.h5"
    put_once(store, uri, source)
    started: list[str] = []
    store.s3.meta.events.register(
        "before-call.s3.CreateMultipartUpload", lambda **_: started.append("create")
    )

    put_once(store, uri, source)

    assert started == []
    body = s3.get_object(Bucket=BUCKET, Key="run/simulation.h5")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()
