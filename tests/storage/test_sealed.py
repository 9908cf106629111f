"""Sealed scratch files: readable with the run's key, unreadable once it is destroyed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.errors import InputError
from tasks.storage import sealed
from tasks.storage.sealed import RunKey, SealedFileError, destroy_key, key_dir, key_path

RUN = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"
OTHER = "7d1f0a55-2c9e-4b8a-a3f1-5e6d7c8b9a01"
SECRET = b"k-space of patient 0042" * 100


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: nothing here calls Prefect."""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def test_a_sealed_file_reads_back_and_holds_no_plaintext(keys, tmp_path):
    key = RunKey.for_run(RUN, keys)
    path = key.write(tmp_path / "scratch" / RUN / "noise.npy", SECRET)
    assert key.read(path) == SECRET
    stored = path.read_bytes()
    assert b"patient" not in stored
    assert stored.startswith(sealed.MAGIC)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["noise.npy"]  # no temporary left


def test_another_process_of_the_run_reads_with_the_same_key(keys, tmp_path):
    path = RunKey.for_run(RUN, keys).write(tmp_path / "a.bin", SECRET)
    program = (
        "import sys; from pathlib import Path; from tasks.storage.sealed import RunKey; "
        "sys.stdout.buffer.write(RunKey.for_run(sys.argv[1], Path(sys.argv[2])).read(sys.argv[3]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", program, RUN, str(keys), str(path)],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.stdout == SECRET


def test_once_the_key_is_destroyed_the_file_cannot_be_read(keys, tmp_path):
    path = RunKey.for_run(RUN, keys).write(tmp_path / "a.bin", SECRET)
    assert destroy_key(RUN, keys) is True
    assert not key_path(RUN, keys).exists()
    assert destroy_key(RUN, keys) is False  # nothing left to destroy
    with pytest.raises(SealedFileError, match="does not open with run"):
        RunKey.for_run(RUN, keys).read(path)  # a new key for the same run id


def test_a_changed_byte_another_runs_key_or_a_rename_is_refused(keys, tmp_path):
    key = RunKey.for_run(RUN, keys)
    path = key.write(tmp_path / "a.bin", SECRET)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    with pytest.raises(SealedFileError):
        key.open(bytes(data), "a.bin")
    with pytest.raises(SealedFileError):
        RunKey.for_run(OTHER, keys).read(path)
    with pytest.raises(SealedFileError):
        key.read(path.rename(tmp_path / "b.bin"))
    with pytest.raises(SealedFileError, match="not a sealed file"):
        key.open(SECRET, "a.bin")


@pytest.mark.parametrize("run_id", ["", "..", "../x", "/etc/passwd", RUN.upper()])
def test_a_run_id_that_is_not_a_uuid_names_no_key(keys, run_id):
    with pytest.raises(InputError, match="not a flow-run id"):
        RunKey.for_run(run_id, keys)
    assert not keys.exists()


def test_a_key_directory_others_can_read_is_refused(keys):
    keys.mkdir(mode=0o755)
    keys.chmod(0o755)
    with pytest.raises(InputError, match="expected one only this user can read"):
        RunKey.for_run(RUN, keys)


def test_keys_live_in_memory_where_there_is_a_tmpfs(monkeypatch, tmp_path, sciflow_dirs):
    monkeypatch.setattr(sealed, "TMPFS", tmp_path / "shm")
    assert key_dir() == sciflow_dirs / "scratch" / ".keys"  # no /dev/shm: beside the data
    (tmp_path / "shm").mkdir()
    assert key_dir() == tmp_path / "shm" / f"sciflow-keys-{os.getuid()}"
