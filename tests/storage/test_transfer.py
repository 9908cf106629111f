"""Verified transfers and conditional writes (tasks/storage/transfer.py), local and on moto."""

from __future__ import annotations

import hashlib

import boto3
import pytest

from tasks.errors import AlreadyExists, ConcurrentUpdate, IntegrityError
from tasks.storage.objects import ObjectStore
from tasks.storage.transfer import (
    download_verified,
    put_if_absent,
    put_if_match,
    read_with_etag,
    upload_verified,
)

BUCKET = "sciflow-transfer"
MIB = 1024 * 1024


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


def test_upload_then_download_verified_round_trips(store, root, tmp_path, rng):
    data = rng.bytes(MIB + 3)
    (tmp_path / "f.bin").write_bytes(data)

    done = upload_verified(store, tmp_path / "f.bin", f"{root}/f.bin")

    assert (done.size, done.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    back = download_verified(
        store, done.uri, tmp_path / "back.bin", size=done.size, sha256=done.sha256
    )
    assert back.read_bytes() == data
    with pytest.raises(IntegrityError, match="expected 1048580 bytes"):
        download_verified(
            store, done.uri, tmp_path / "bad.bin", size=done.size + 1, sha256=done.sha256
        )
    assert not (tmp_path / "bad.bin").exists()


def test_put_if_absent_is_idempotent_and_refuses_other_content(store, root):
    uri = f"{root}/manifest.json"
    assert put_if_absent(store, uri, b"one") == uri
    assert put_if_absent(store, uri, b"one") == uri
    with pytest.raises(AlreadyExists, match="exists with other content"):
        put_if_absent(store, uri, b"two")
    assert store.read_bytes(uri) == b"one"


def test_put_if_match_refuses_a_stale_tag(store, root):
    uri = f"{root}/stages/production"
    first = put_if_match(store, uri, b"1", None)
    with pytest.raises(ConcurrentUpdate):
        put_if_match(store, uri, b"x", None)
    second = put_if_match(store, uri, b"2", first)
    with pytest.raises(ConcurrentUpdate):
        put_if_match(store, uri, b"3", first)
    assert read_with_etag(store, uri) == (b"2", second)
