"""The secure-cleanup flow: bad run ids touch nothing; every check can fail it; a dry run lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blocks.compute_unit import local_unit
from flows.secure_cleanup import CleanupFailed, secure_cleanup
from tasks.aws.clients import AwsAccount
from tasks.cleanup import audit
from tasks.compute.launches import Launch, LaunchRecord
from tasks.errors import InputError
from tasks.settings import get_settings
from tests.cleanup.flow_runs import make_flow_run

RUN_ID = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"  # well-formed, but no flow run has it


@pytest.fixture
def run_id() -> str:
    """A flow run the API knows: cleanup refuses any other id."""
    return make_flow_run()


@pytest.mark.parametrize("run_id", ["", "/", "../x"])
def test_a_bad_run_id_fails_the_flow_before_anything_is_touched(run_id, sciflow_dirs):
    scratch = get_settings().scratch_root
    (scratch / RUN_ID).mkdir(parents=True)
    (scratch / RUN_ID / "kspace.npy").write_bytes(b"data")
    with pytest.raises(InputError, match="is not a flow-run id"):
        secure_cleanup(run_id=run_id)
    assert (scratch / RUN_ID / "kspace.npy").exists()


def test_an_unknown_run_id_is_refused_and_nothing_is_deleted(sciflow_dirs):
    scratch, run_dir, record_path = _litter(RUN_ID)

    with pytest.raises(InputError, match=f"run_id='{RUN_ID}' names no flow run"):
        secure_cleanup(run_id=RUN_ID)

    assert (scratch / "kspace.npy").exists()
    assert (run_dir / "tmp" / "slice-0.npy").exists()
    assert (run_dir / ".snr.npy.ab12.tmp").exists()
    assert not record_path.exists()


def test_the_unit_comes_from_the_runs_own_parameters(sciflow_dirs):
    elsewhere = make_flow_run(parameters={"unit": "mars"})
    with pytest.raises(InputError, match="compute unit 'mars' not found"):
        secure_cleanup(run_id=elsewhere)


def test_a_launch_that_cannot_be_stopped_fails_its_check(aws, sciflow_dirs, run_id):
    unit = local_unit()
    record = LaunchRecord.of_run(unit, run_id)
    record.add(
        Launch(
            kind="ecs-task",
            id="arn:aws:ecs:us-east-1:123456789012:task/gone/0123",
            account=AwsAccount(region="us-east-1"),
            cluster="no-such-cluster",  # moto refuses: ClusterNotFoundException
            label="dask-worker-0",
        )
    )

    with pytest.raises(CleanupFailed, match="1 of 8 cleanup checks failed"):
        secure_cleanup(run_id=run_id)

    checks = json.loads(Path(unit.audit_uri(run_id)).read_text())
    assert checks["ok"] is False
    assert [c["ok"] for c in checks["checks"]] == [False] + [True] * 7  # all ran
    stopped = next(c for c in checks["checks"] if c["name"] == "launches stopped")
    assert not stopped["ok"]
    assert "ClusterNotFoundException" in stopped["detail"]
    assert len(record.launches()) == 1  # kept for the next try


def _litter(run_id: str) -> tuple[Path, Path, Path]:
    scratch = get_settings().scratch_root / run_id
    scratch.mkdir(parents=True)
    (scratch / "kspace.npy").write_bytes(b"data")
    run_dir = Path(local_unit().run_dir(run_id))
    (run_dir / "tmp").mkdir(parents=True)
    (run_dir / "tmp" / "slice-0.npy").write_bytes(b"slice")
    (run_dir / ".snr.npy.ab12.tmp").write_bytes(b"half")
    (run_dir / "snr.npy").write_bytes(b"result")
    return scratch, run_dir, Path(local_unit().audit_uri(run_id))


def test_cleanup_removes_everything_but_results_and_seals_a_record(sciflow_dirs, run_id):
    scratch, run_dir, record_path = _litter(run_id)

    result = secure_cleanup(run_id=run_id)

    assert result.ok
    assert result.checks == 8
    assert not scratch.exists()
    assert sorted(p.name for p in run_dir.iterdir() if p.name != "launches") == ["snr.npy"]
    assert result.record_uri == str(record_path)
    content = audit.verify(record_path.read_text(), audit.audit_key(create=False))
    removed = {c["name"]: c["removed"] for c in content["checks"]}
    assert removed == {
        "launches stopped": 0,
        "scratch removed": 1,
        "no partial writes": 1,
        "intermediates purged": 1,
        "cloud resources removed": 0,
        "scratch key destroyed": 0,
        "gpu scrubbed": 0,
        "model cache valid": 0,
    }
    assert content["trigger"] == "secure-cleanup"
    assert content["ok"] is True


def test_a_dry_run_lists_what_would_go_and_removes_nothing(sciflow_dirs, run_id):
    scratch, run_dir, record_path = _litter(run_id)

    with pytest.raises(CleanupFailed, match="3 of 8"):  # what is left fails, as it should
        secure_cleanup(run_id=run_id, dry_run=True)

    assert (scratch / "kspace.npy").exists()
    assert (run_dir / "tmp" / "slice-0.npy").exists()
    assert (run_dir / ".snr.npy.ab12.tmp").exists()
    content = audit.verify(record_path.read_text(), audit.audit_key(create=False))
    assert content["dry_run"] is True
    details = {c["name"]: c["detail"] for c in content["checks"]}
    assert details["scratch removed"].startswith("would remove 1 files")
    assert "slice-0.npy" in details["intermediates purged"]


def test_a_scratch_that_cannot_be_removed_fails_its_check(sciflow_dirs, run_id, monkeypatch):
    _, _, record_path = _litter(run_id)
    monkeypatch.setattr("shutil.rmtree", lambda path, *a, **k: None)  # a delete that silently fails

    with pytest.raises(CleanupFailed, match="scratch removed"):
        secure_cleanup(run_id=run_id)

    content = json.loads(record_path.read_text())
    assert [c["name"] for c in content["checks"] if not c["ok"]] == [
        "scratch removed",
        "intermediates purged",
    ]


def test_a_scope_cleans_only_its_parts(sciflow_dirs, run_id):
    scratch, run_dir, record_path = _litter(run_id)

    result = secure_cleanup(run_id=run_id, scope=("intermediates",))

    assert result.ok
    content = audit.verify(record_path.read_text(), audit.audit_key(create=False))
    assert [c["name"] for c in content["checks"]] == ["intermediates purged"]
    assert not (run_dir / "tmp").exists()
    assert (scratch / "kspace.npy").exists()  # local was not in scope
    assert (run_dir / ".snr.npy.ab12.tmp").exists()


@pytest.mark.parametrize(("scope", "problem"), [((), "scope is empty"), (("x",), "scope names")])
def test_a_scope_that_names_nothing_known_is_refused_before_anything_goes(
    scope, problem, sciflow_dirs, run_id
):
    scratch, _, record_path = _litter(run_id)
    with pytest.raises(InputError, match=problem):
        secure_cleanup.fn(run_id=run_id, scope=scope)
    assert (scratch / "kspace.npy").exists()
    assert not record_path.exists()
