"""The shred check: the run's key destroyed and verified gone; the record shows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from blocks.compute_unit import local_unit
from tasks.cleanup.shred import shred_run_key
from tasks.cleanup.validate import run_checks
from tasks.storage.sealed import RunKey, SealedFileError, key_path

RUN = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: nothing here calls Prefect."""


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return tmp_path / "keys"


def test_the_key_is_destroyed_and_the_sealed_files_cannot_be_read(keys, tmp_path):
    sealed = RunKey.for_run(RUN, keys).write(tmp_path / "scratch" / "maps.npy", b"maps")
    check = shred_run_key(RUN, directory=keys)
    assert check.ok, check.detail
    assert check.removed == 1
    assert "disk: a delete, no more" in check.detail  # tmp_path is not the tmpfs
    assert not key_path(RUN, keys).exists()
    with pytest.raises(SealedFileError):
        RunKey.for_run(RUN, keys).read(sealed)


def test_a_run_that_sealed_nothing_passes_and_says_so(keys):
    check = shred_run_key(RUN, directory=keys)
    assert check.ok
    assert check.detail == "no run key: the run sealed nothing"


def test_a_dry_run_names_the_key_and_keeps_it(keys):
    key = RunKey.for_run(RUN, keys)
    check = shred_run_key(RUN, dry_run=True, directory=keys)
    assert not check.ok  # what is left fails, as in the other dry runs
    assert check.detail.startswith(f"would destroy {key.path}")
    assert key.path.exists()


def test_a_key_that_survives_its_delete_fails_the_check(keys, monkeypatch):
    RunKey.for_run(RUN, keys)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # a silent failure
    check = shred_run_key(RUN, directory=keys)
    assert not check.ok
    assert "still exists after it was destroyed" in check.detail


def test_the_record_holds_the_key_and_gpu_checks(sciflow_dirs):
    key = RunKey.for_run(RUN)  # the default place, as a run would
    checks = {check.name: check for check in run_checks(local_unit(), RUN)}
    assert checks["scratch key destroyed"].ok
    assert checks["scratch key destroyed"].removed == 1
    assert not key.path.exists()
    gpu = checks["gpu scrubbed"]
    assert gpu.ok
    if gpu.skipped:  # this machine has no usable CUDA device: the record says so
        assert gpu.detail.startswith("no GPU: nothing to scrub")
    else:
        assert "zeroed" in gpu.detail
