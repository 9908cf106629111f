"""Local storage through ObjectStore: plain paths and file:// URIs, atomic writes."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import pytest

from tasks.errors import InputError
from tasks.storage.objects import MIB, Location, ObjectStore, join_uri
from tests.storage.helpers import CrashingReader


@pytest.fixture
def store() -> ObjectStore:
    return ObjectStore()


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_bytes_and_text_round_trip_through_a_plain_path(store, tmp_path):
    path = tmp_path / "a" / "b.bin"
    assert store.write_bytes(str(path), b"\x00\x01\xff") == str(path)
    assert store.read_bytes(str(path)) == b"\x00\x01\xff"
    store.write_text(str(tmp_path / "note.txt"), "grüße")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "grüße"


def test_bytes_round_trip_through_a_file_uri(store, tmp_path):
    uri = f"file://{tmp_path}/sub/data.bin"
    assert store.write_bytes(uri, b"payload") == str(tmp_path / "sub" / "data.bin")
    assert store.read_bytes(uri) == b"payload"
    assert store.read_bytes(f"file://localhost{tmp_path}/sub/data.bin") == b"payload"


def test_file_uri_percent_escapes_are_decoded(store, tmp_path):
    store.write_bytes(f"file://{tmp_path}/with%20space.txt", b"x")
    assert (tmp_path / "with space.txt").read_bytes() == b"x"


def test_relative_paths_resolve_to_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = Location.parse("runs/x.txt")
    assert loc.scheme == "file"
    assert Path(loc.key).is_absolute()
    assert loc.path == tmp_path.resolve() / "runs" / "x.txt"
    assert join_uri("runs", "a", "b.txt") == str(tmp_path.resolve() / "runs" / "a" / "b.txt")


def test_join_appends_parts_and_refuses_parent_references(tmp_path):
    assert join_uri(str(tmp_path), "/a/", "b.txt") == str(tmp_path / "a" / "b.txt")
    assert join_uri("s3://bucket/root/", "a", "b") == "s3://bucket/root/a/b"
    assert join_uri("s3://bucket", "a") == "s3://bucket/a"
    with pytest.raises(InputError, match=r"'\.\./etc'.*contains '\.\.'"):
        join_uri(str(tmp_path), "../etc")
    with pytest.raises(InputError, match=r"contains '\.\.'"):
        join_uri("s3://bucket/root", "a/../../b")


def test_file_round_trips_through_upload_and_download(store, tmp_path, rng):
    data = rng.bytes(3 * MIB + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store.upload_file(src, f"file://{tmp_path}/store/obj.bin")
    got = store.download_file(str(tmp_path / "store" / "obj.bin"), tmp_path / "out" / "obj.bin")
    assert got == tmp_path / "out" / "obj.bin"
    assert got.read_bytes() == data


def test_directory_round_trips_through_upload_dir_walk_and_download_dir(store, tmp_path):
    src = tmp_path / "tree"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "sub" / "mid.txt").write_text("mid")
    (src / "sub" / "deeper" / "low.bin").write_bytes(b"\x00low")
    dest = f"file://{tmp_path}/stored"

    uris = store.upload_dir(src, dest)

    expected = ["sub/deeper/low.bin", "sub/mid.txt", "top.txt"]
    assert uris == [str(tmp_path / "stored" / rel) for rel in expected]
    assert list(store.walk(dest)) == expected
    paths = store.download_dir(dest, tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in paths) == expected
    for rel in expected:
        assert (tmp_path / "back" / rel).read_bytes() == (src / rel).read_bytes()


def test_crash_mid_upload_leaves_no_file_and_no_temporary(store, tmp_path, rng):
    data = rng.bytes(3 * MIB)
    target = tmp_path / "out" / "big.bin"

    with pytest.raises(OSError, match="simulated crash"):
        store.upload_fileobj(CrashingReader(data, limit=2 * MIB), str(target))

    assert not target.exists()
    assert _names(target.parent) == []


def test_overwrite_that_crashes_keeps_the_old_content(store, tmp_path, rng):
    target = tmp_path / "model.bin"
    store.write_bytes(str(target), b"old content")

    with pytest.raises(OSError, match="simulated crash"):
        store.upload_fileobj(CrashingReader(rng.bytes(2 * MIB), limit=1024), str(target))

    assert target.read_bytes() == b"old content"
    assert _names(tmp_path) == ["model.bin"]
    store.upload_fileobj(io.BytesIO(b"new content"), str(target))
    assert target.read_bytes() == b"new content"
    assert _names(tmp_path) == ["model.bin"]


def test_walk_hides_temporaries_and_skips_missing_directories(store, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "kept.txt").write_text("k")
    (tmp_path / "d" / ".kept.txt.0123abcd.tmp").write_text("half")
    (tmp_path / "d" / "sub" / ".x.tmp").write_text("half")
    (tmp_path / "d" / ".hidden").write_text("h")

    assert list(store.walk(str(tmp_path / "d"))) == [".hidden", "kept.txt"]
    assert list(store.walk(str(tmp_path / "nowhere"))) == []


def test_exists_for_file_directory_and_missing(store, tmp_path):
    store.write_bytes(str(tmp_path / "d" / "f.txt"), b"x")
    assert store.exists(str(tmp_path / "d" / "f.txt"))
    assert store.exists(f"file://{tmp_path}/d")
    assert not store.exists(str(tmp_path / "d" / "missing.txt"))


def test_remove_counts_files_for_a_file_a_directory_and_nothing(store, tmp_path):
    for rel in ("d/a.txt", "d/b.txt", "d/sub/c.txt", "single.txt"):
        store.write_bytes(str(tmp_path / rel), b"x")

    assert store.remove(str(tmp_path / "single.txt")) == 1
    assert store.remove(f"file://{tmp_path}/d") == 3
    assert store.remove(str(tmp_path / "d")) == 0
    assert _names(tmp_path) == []


def test_reading_a_missing_file_names_the_path(store, tmp_path):
    missing = tmp_path / "nope.bin"
    with pytest.raises(InputError, match=f"^cannot read {re.escape(str(missing))}: no such file$"):
        store.read_bytes(str(missing))
    with pytest.raises(InputError, match=f"^cannot read {re.escape(str(missing))}: no such file$"):
        store.download_file(str(missing), tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_reading_a_directory_as_a_file_names_the_path(store, tmp_path):
    with pytest.raises(
        InputError, match=f"^cannot read {re.escape(str(tmp_path))}: it is a directory"
    ):
        store.read_bytes(str(tmp_path))


def test_download_dir_of_an_empty_directory_is_an_input_error(store, tmp_path):
    with pytest.raises(
        InputError, match=f"^cannot read {re.escape(str(tmp_path))}: no files under it$"
    ):
        store.download_dir(str(tmp_path), tmp_path / "out")


def test_upload_of_a_missing_source_names_it(store, tmp_path):
    with pytest.raises(
        InputError, match=f"^cannot upload {re.escape(str(tmp_path / 'gone.bin'))}: no such file$"
    ):
        store.upload_file(tmp_path / "gone.bin", str(tmp_path / "dest.bin"))
    with pytest.raises(
        InputError, match=f"^cannot upload {re.escape(str(tmp_path / 'gone'))}: not a directory$"
    ):
        store.upload_dir(tmp_path / "gone", str(tmp_path / "dest"))


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("ftp://x", "has unsupported scheme 'ftp'"),
        ("s3://", "has no bucket"),
        ("s3:///key", "has no bucket"),
        ("file://otherhost/x", "names host 'otherhost'"),
    ],
)
def test_bad_uris_are_input_errors_naming_the_uri(store, uri, why):
    with pytest.raises(InputError, match=f"^storage URI {re.escape(repr(uri))} {why}"):
        Location.parse(uri)
    with pytest.raises(InputError, match=re.escape(repr(uri))):
        store.read_bytes(uri)


def test_empty_uri_is_an_input_error():
    with pytest.raises(InputError, match="storage URI is empty"):
        Location.parse("")


def test_part_size_below_the_s3_minimum_is_refused():
    with pytest.raises(InputError, match="part_size_mib=4 is below S3's 5 MiB minimum"):
        ObjectStore(part_size_mib=4)


def test_store_survives_pickling_and_still_works(tmp_path):
    store = ObjectStore(part_size_mib=7, concurrency=3, max_attempts=2)
    clone = pickle.loads(pickle.dumps(store))  # noqa: S301  # our own bytes

    assert (clone.part_size, clone.concurrency, clone.max_attempts) == (7 * MIB, 3, 2)
    clone.write_text(str(tmp_path / "p.txt"), "after pickle")
    assert clone.read_bytes(f"file://{tmp_path}/p.txt") == b"after pickle"


def test_a_staged_name_is_distinct_per_uri_and_keeps_the_suffixes_readers_need():
    from tasks.storage.objects import staged_name

    a, b = staged_name("s3://b/a/scan.h5"), staged_name("s3://b/b/scan.h5")
    assert a != b
    assert a.endswith(".h5")
    assert b.endswith(".h5")
    assert a == staged_name("s3://b/a/scan.h5")  # a retry finds its earlier copy
    assert staged_name("s3://b/maps/T1.nii.gz").endswith(".nii.gz")
    assert staged_name("s3://b/twix/meas.dat").endswith(".dat")
    assert staged_name("s3://b/seq/gre.seq").endswith(".seq")
    assert "/" not in staged_name("s3://b/../x/y.h5")
    assert staged_name("s3://b/no-suffix").isalnum()
