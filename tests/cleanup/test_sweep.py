"""Cleanup's local checks: confined to the run's own scratch, and each able to fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.cleanup.sweep import check_run_id, find_partial_writes, sweep_scratch
from tasks.errors import InputError
from tasks.storage.objects import ObjectStore

RUN_ID = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    root = tmp_path / "scratch"
    (root / RUN_ID / "deep").mkdir(parents=True)
    (root / RUN_ID / "deep" / "kspace.npy").write_bytes(b"patient data")
    (root / "other-run").mkdir()
    (root / "other-run" / "keep.npy").write_bytes(b"someone else's")
    return root


@pytest.mark.parametrize(
    "run_id",
    ["/", "", "..", "../x", "/home/me", "other-run", RUN_ID.upper(), "{" + RUN_ID + "}", "*"],
)
def test_anything_but_a_run_id_is_refused_and_nothing_is_deleted(run_id, scratch):
    before = sorted(scratch.rglob("*"))
    with pytest.raises(InputError, match="is not a flow-run id; expected a UUID"):
        sweep_scratch(run_id, scratch)
    assert sorted(scratch.rglob("*")) == before


def test_a_scratch_symlinked_out_of_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "scratch", tmp_path / "home"
    root.mkdir()
    outside.mkdir()
    (outside / "thesis.tex").write_text("years of work")
    (root / RUN_ID).symlink_to(outside)
    with pytest.raises(InputError, match="is a symlink"):
        sweep_scratch(RUN_ID, root)
    assert (outside / "thesis.tex").read_text() == "years of work"


def test_a_runs_scratch_is_removed_and_only_its_own(scratch):
    check = sweep_scratch(RUN_ID, scratch)
    assert check.ok
    assert check.detail.startswith("removed 1 files")
    assert not (scratch / RUN_ID).exists()
    assert (scratch / "other-run" / "keep.npy").exists()


def test_the_run_id_check_names_what_it_expected():
    assert check_run_id(RUN_ID) == RUN_ID
    with pytest.raises(InputError, match="run_id='/home/me' is not a flow-run id"):
        check_run_id("/home/me")


def test_partial_writes_are_removed_and_the_removal_verified(tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / ".SNR.nii.gz.1f2e.tmp").write_bytes(b"half")
    check = find_partial_writes(ObjectStore(), str(tmp_path))
    assert check.ok
    assert check.detail == "removed 1 temporary files"
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_partial_write_that_cannot_be_removed_fails_the_check(tmp_path):
    stuck = tmp_path / ".info.json.9a8b.tmp"
    stuck.mkdir()  # a directory: unlink cannot remove it
    (stuck / "x").write_bytes(b"")
    check = find_partial_writes(ObjectStore(), str(tmp_path))
    assert not check.ok
    assert "1 temporary files remain" in check.detail
    assert str(stuck) in check.detail
