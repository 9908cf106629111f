"""S3 storage through ObjectStore, over real HTTP to moto on loopback."""

from __future__ import annotations

import pickle
import re
import socket
import threading
import time
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError

from tasks.errors import InputError, TransientError
from tasks.storage.objects import ObjectStore
from tests.storage.helpers import CrashingReader

BUCKET = "sciflow-test"
MIB = 1024 * 1024


@pytest.fixture
def s3(aws):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def store(s3) -> ObjectStore:
    return ObjectStore(part_size_mib=5, concurrency=4)


def _status(call) -> int:
    with pytest.raises(ClientError) as info:
        call()
    return int(info.value.response["ResponseMetadata"]["HTTPStatusCode"])


def test_bytes_round_trip(store):
    uri = f"s3://{BUCKET}/runs/r1/out.bin"
    assert store.write_bytes(uri, b"\x00\x01\xff") == uri
    assert store.read_bytes(uri) == b"\x00\x01\xff"
    store.write_text(f"s3://{BUCKET}/note.txt", "grüße")
    assert store.read_bytes(f"s3://{BUCKET}/note.txt").decode() == "grüße"


def test_tags_given_to_writes_land_on_the_object(store, s3, tmp_path):
    tags = {"sciflow:run": "r 1/ü", "project": "mri"}
    store.write_bytes(f"s3://{BUCKET}/tagged.bin", b"x", tags=tags)
    (tmp_path / "f.bin").write_bytes(b"y")
    store.upload_file(tmp_path / "f.bin", f"s3://{BUCKET}/uploaded.bin", tags=tags)

    for key in ("tagged.bin", "uploaded.bin"):
        got = s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
        assert {t["Key"]: t["Value"] for t in got} == tags


def test_file_larger_than_a_part_goes_up_as_multipart_and_comes_back_identical(
    store, s3, tmp_path, rng
):
    data = rng.bytes(12 * MIB)
    (tmp_path / "big.bin").write_bytes(data)
    uri = f"s3://{BUCKET}/big/big.bin"

    store.upload_file(tmp_path / "big.bin", uri, tags={"k": "v"})

    head = s3.head_object(Bucket=BUCKET, Key="big/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # multipart ETags carry "-<parts>"
    assert head["ContentLength"] == len(data)
    assert s3.get_object_tagging(Bucket=BUCKET, Key="big/big.bin")["TagSet"] == [
        {"Key": "k", "Value": "v"}
    ]
    back = store.download_file(uri, tmp_path / "back" / "big.bin")
    assert back.read_bytes() == data
    assert sorted(p.name for p in back.parent.iterdir()) == ["big.bin"]


def test_crash_mid_multipart_upload_leaves_nothing_under_the_key(store, s3, rng):
    data = rng.bytes(12 * MIB)
    started = []
    store.s3.meta.events.register(
        "after-call.s3.CreateMultipartUpload", lambda **kw: started.append(kw["parsed"])
    )

    with pytest.raises(OSError, match="simulated crash"):
        store.upload_fileobj(CrashingReader(data, limit=7 * MIB), f"s3://{BUCKET}/half.bin")

    assert len(started) == 1  # the crash came mid-multipart, not before it began
    assert _status(lambda: s3.head_object(Bucket=BUCKET, Key="half.bin")) == 404
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_directory_round_trips_through_upload_dir_walk_download_dir_and_remove(store, s3, tmp_path):
    src = tmp_path / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "sub" / "mid.txt").write_text("mid")
    (src / "sub" / "deeper" / "low.bin").write_bytes(b"\x00low")
    s3.put_object(Bucket=BUCKET, Key="treeish/x.txt", Body=b"a sibling sharing the prefix")
    dest = f"s3://{BUCKET}/tree"

    uris = store.upload_dir(src, dest + "/")

    expected = ["sub/deeper/low.bin", "sub/mid.txt", "top.txt"]
    assert uris == [f"{dest}/{rel}" for rel in expected]
    assert list(store.walk(dest)) == expected
    paths = store.download_dir(dest, tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in paths) == expected
    for rel in expected:
        assert (tmp_path / "back" / rel).read_bytes() == (src / rel).read_bytes()

    assert store.remove(f"{dest}/top.txt") == 1
    assert store.remove(dest) == 2
    assert list(store.walk(dest)) == []
    assert store.remove(dest) == 0
    assert list(store.walk(f"s3://{BUCKET}/treeish")) == ["x.txt"]


def test_exists_for_a_file_a_prefix_and_something_missing(store):
    store.write_bytes(f"s3://{BUCKET}/d/sub/f.txt", b"x")

    assert store.exists(f"s3://{BUCKET}/d/sub/f.txt")
    assert store.exists(f"s3://{BUCKET}/d")
    assert store.exists(f"s3://{BUCKET}/d/")
    assert store.exists(f"s3://{BUCKET}")
    assert not store.exists(f"s3://{BUCKET}/d/sub/f")
    assert not store.exists(f"s3://{BUCKET}/missing")


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        (f"s3://{BUCKET}/no/such/key.bin", "NoSuchKey"),
        ("s3://no-such-bucket-here/key.bin", "NoSuchBucket"),
    ],
)
def test_reading_a_missing_object_is_a_one_line_input_error_naming_the_uri(store, uri, code):
    with pytest.raises(InputError, match=f"^cannot read {re.escape(uri)}: .*{code}") as info:
        store.read_bytes(uri)
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    assert "botocore" not in message


def test_downloading_a_missing_object_is_an_input_error_and_leaves_no_file(store, tmp_path):
    uri = f"s3://{BUCKET}/missing.bin"
    with pytest.raises(InputError, match=f"^cannot download {re.escape(uri)}: .*404"):
        store.download_file(uri, tmp_path / "out" / "missing.bin")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(InputError, match=f"cannot read s3://{BUCKET}/nothing: no files under"):
        store.download_dir(f"s3://{BUCKET}/nothing", tmp_path / "out")


def test_unreachable_endpoint_is_a_transient_error(aws, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    store = ObjectStore(max_attempts=1)
    uri = "s3://bucket/key.bin"

    started = time.monotonic()
    with pytest.raises(TransientError, match=f"^cannot read {re.escape(uri)}: .*127.0.0.1:9"):
        store.read_bytes(uri)
    with pytest.raises(TransientError, match=f"^cannot write {re.escape(uri)}"):
        store.write_bytes(uri, b"x")
    assert time.monotonic() - started < 10


def test_store_with_a_live_client_pickles_and_still_works(store):
    store.write_bytes(f"s3://{BUCKET}/before.txt", b"before")

    clone = pickle.loads(pickle.dumps(store))  # noqa: S301  # our own bytes

    assert clone.read_bytes(f"s3://{BUCKET}/before.txt") == b"before"
    clone.write_bytes(f"s3://{BUCKET}/after.txt", b"after")
    assert store.read_bytes(f"s3://{BUCKET}/after.txt") == b"after"


def test_console_folder_markers_are_not_files_but_remove_clears_them(store, s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="tree/sub/", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="tree/sub/a.txt", Body=b"a")

    assert list(store.walk(f"s3://{BUCKET}/tree")) == ["sub/a.txt"]
    paths = store.download_dir(f"s3://{BUCKET}/tree", tmp_path / "back")
    assert paths == [tmp_path / "back" / "sub" / "a.txt"]
    assert paths[0].read_bytes() == b"a"
    assert store.remove(f"s3://{BUCKET}/tree") == 1
    assert s3.list_objects_v2(Bucket=BUCKET).get("Contents", []) == []


def test_remove_raises_when_s3_refuses_some_deletes(store, s3, monkeypatch):
    for key in ("d/a.txt", "d/b.txt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    def refuse(**kwargs):
        return {"Errors": [{"Key": "d/b.txt", "Code": "AccessDenied", "Message": "Denied"}]}

    monkeypatch.setattr(store.s3, "delete_objects", refuse)
    with pytest.raises(
        InputError,
        match=rf"^cannot delete s3://{BUCKET}/d: S3 refused 1 object\(s\), first "
        rf"s3://{BUCKET}/d/b.txt with AccessDenied: Denied$",
    ):
        store.remove(f"s3://{BUCKET}/d")


def test_invalid_bucket_name_is_a_one_line_input_error(store):
    with pytest.raises(InputError, match=r"^cannot read s3://Bad_Bucket!/k: .*Invalid bucket name"):
        store.read_bytes("s3://Bad_Bucket!/k")


@pytest.fixture
def hangup_endpoint() -> Iterator[str]:
    """A loopback server that accepts each connection and closes it without answering."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_connection_dropped_by_the_server_is_a_transient_error(aws, hangup_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", hangup_endpoint)
    store = ObjectStore(max_attempts=1)

    with pytest.raises(TransientError, match=r"^cannot read s3://bucket/key\.bin: "):
        store.read_bytes("s3://bucket/key.bin")
