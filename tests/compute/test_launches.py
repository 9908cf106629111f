"""The launch record: written by one process, read and stopped by another."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from tasks.compute.launches import Launch, LaunchRecord, process_launch
from tasks.storage.objects import ObjectStore

REPO = Path(__file__).resolve().parents[2]


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != "zombie":
                members.append(proc.info["pid"])
        except ProcessLookupError:
            continue
    return members


def test_a_group_recorded_by_another_process_is_stopped_from_this_one(tmp_path):
    root = str(tmp_path / "run-1")
    child = textwrap.dedent(
        f"""
        import subprocess, sys
        from tasks.compute.launches import LaunchRecord, process_launch
        from tasks.storage.objects import ObjectStore

        # `sh` leads its own group and starts `sleep` in it, as run_processes starts torchrun.
        proc = subprocess.Popen(
            ["sh", "-c", "sleep 300 & sleep 300"],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # else the caller would wait for the sleeps' output
            stderr=subprocess.DEVNULL,
        )
        LaunchRecord(ObjectStore(), {root!r}).add(process_launch(proc.pid, "sleepers"))
        print(proc.pid, flush=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", child], env=env, capture_output=True, text=True, check=True
    )
    pid = int(out.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while len(_group_members(pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_group_members(pid)) == 3  # sh and its two sleeps, orphaned by the recorder

    record = LaunchRecord(ObjectStore(), root)
    [entry] = record.launches()
    assert (entry.kind, entry.id, entry.pgid, entry.label) == ("process", str(pid), pid, "sleepers")

    assert record.stop_all("flow run cancelled") == [entry]

    assert _group_members(pid) == []
    assert record.launches() == []


def test_a_reused_pid_is_not_killed(tmp_path):
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        real = process_launch(proc.pid, "someone else")
        stale = Launch(
            kind="process",
            id=real.id,
            pgid=real.pgid,
            process_started=(real.process_started or 0) - 3600,  # recorded an hour earlier
        )
        record = LaunchRecord(ObjectStore(), str(tmp_path))
        record.add(stale)
        record.stop_all("cleanup")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_entries_round_trip_with_their_account(tmp_path):
    from tasks.aws.clients import AwsAccount

    launch = Launch(
        kind="ecs-task",
        id="arn:aws:ecs:us-east-1:123456789012:task/sciflow/abc",
        account=AwsAccount(region="us-east-1", role_arn="arn:aws:iam::1:role/r"),
        cluster="sciflow",
        label="worker",
    )
    record = LaunchRecord(ObjectStore(), str(tmp_path))
    record.add(launch)
    assert record.launches() == [launch]
    assert not list(tmp_path.rglob(".*.tmp"))  # written atomically
    record.done(launch)
    assert record.launches() == []


def test_records_leave_the_external_id_out_and_the_units_record_puts_it_back(tmp_path):
    from tasks.aws.clients import AwsAccount

    role = "arn:aws:iam::123456789012:role/sciflow-runner"
    account = AwsAccount(region="us-east-1", role_arn=role, external_id="xid-canary-41")
    launch = Launch(kind="batch-job", id="job-1", account=account, label="mpi")
    LaunchRecord(ObjectStore(), str(tmp_path), account).add(launch)

    on_disk = "".join(p.read_text() for p in tmp_path.rglob("*.json"))
    assert role in on_disk
    assert "xid-canary-41" not in on_disk
    assert "xid-canary-41" not in repr(launch)
    # Another process reads it through the unit, and can assume the role again to stop it.
    assert LaunchRecord(ObjectStore(), str(tmp_path), account).launches() == [launch]
    other = AwsAccount(region="us-east-1", role_arn="arn:aws:iam::1:role/other", external_id="x")
    (found,) = LaunchRecord(ObjectStore(), str(tmp_path), other).launches()
    assert found.account.external_id is None  # never handed to another role
