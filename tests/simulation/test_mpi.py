"""run_mpi for real: the MPICH wheel's process manager, two ranks, loopback only."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.simulation import mpi
from tasks.simulation.mpi import MpiError, mpi4py_argv, mpiexec_path, parse_rank_line, run_mpi
from tasks.simulation.mpi_hello import expected_sums

# Bound for every job here: a hang fails the test instead of the CI run.
JOB_TIMEOUT_S = 60.0
HELLO = "tasks.simulation.mpi_hello"


def _run(ranks: int, *args: str) -> list[tuple[int | None, str]]:
    lines: list[tuple[int | None, str]] = []
    status = run_mpi(
        mpi4py_argv(HELLO, *args),
        ranks,
        on_line=lambda rank, line: lines.append((rank, line)),
        timeout_s=JOB_TIMEOUT_S,
    )
    assert status == 0
    return lines


def _tagged(lines: list[tuple[int | None, str]], tag: str) -> dict[int | None, dict]:
    return {rank: json.loads(line[len(tag) + 1 :]) for rank, line in lines if line.startswith(tag)}


def test_two_ranks_report_and_allreduce_the_sum():
    lines = _run(2)
    hellos = _tagged(lines, "HELLO")
    assert sorted(hellos) == [0, 1]
    for rank, hello in hellos.items():  # the prefix parsed from the output is the MPI rank
        assert hello["rank"] == rank
        assert hello["size"] == 2
    result = _tagged(lines, "RESULT")
    assert list(result) == [0]  # rank 0 alone reports the result
    np.testing.assert_allclose(result[0]["sums"], expected_sums(10_000), rtol=1e-12, atol=1e-9)


def test_two_ranks_give_one_ranks_result():
    one = _tagged(_run(1, "--terms", "50000"), "RESULT")[0]["sums"]
    two = _tagged(_run(2, "--terms", "50000"), "RESULT")[0]["sums"]
    np.testing.assert_allclose(two, one, rtol=1e-12, atol=1e-9)


def test_a_failing_rank_fails_the_job_with_its_error_and_no_hang():
    start = time.monotonic()
    with pytest.raises(MpiError, match="rank 1 fails on purpose") as caught:
        run_mpi(mpi4py_argv(HELLO, "--fail-rank", "1"), 2, timeout_s=JOB_TIMEOUT_S)
    assert time.monotonic() - start < 20  # MPI_Abort ended the job, not the timeout
    assert caught.value.returncode != 0
    assert any("RuntimeError" in line for line in caught.value.rank_errors[1])
    assert 0 not in caught.value.rank_errors  # rank 0 wrote no error: it was stopped


def test_a_job_past_its_timeout_is_killed_with_its_ranks():
    code = "import os, time; print('PID', os.getpid(), flush=True); time.sleep(120)"
    pids: list[int] = []

    def remember(rank: int | None, line: str) -> None:
        if line.startswith("PID "):
            pids.append(int(line.split()[1]))

    start = time.monotonic()
    with pytest.raises(MpiError, match=r"timed out after 3 s"):
        run_mpi([sys.executable, "-c", code], 2, on_line=remember, timeout_s=3)
    assert time.monotonic() - start < 3 + 2 * mpi.KILL_GRACE_S + 2
    assert len(pids) == 2
    time.sleep(0.2)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def _listening_addresses(pids: list[int]) -> set[str]:
    """IPv4/IPv6 addresses the given processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    addresses = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                raw = bytes.fromhex(fields[1].split(":")[0])
                if len(raw) == 4:
                    addresses.add(".".join(str(b) for b in reversed(raw)))
                else:
                    addresses.add(raw.hex())
    return addresses


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc to list sockets")
def test_a_local_job_listens_on_loopback_only():
    code = (
        "import os, time\nfrom mpi4py import MPI\nMPI.COMM_WORLD.Barrier()\n"
        "print('READY', os.getpid(), os.getppid(), flush=True)\n"
        "MPI.COMM_WORLD.Barrier()\ntime.sleep(1.0)\n"
    )
    seen: dict[int, set[str]] = {}

    def inspect(rank: int | None, line: str) -> None:
        if rank is not None and line.startswith("READY "):
            seen[rank] = _listening_addresses([int(pid) for pid in line.split()[1:]])

    run_mpi(
        [sys.executable, "-m", "mpi4py", "-c", code], 2, on_line=inspect, timeout_s=JOB_TIMEOUT_S
    )
    assert sorted(seen) == [0, 1]
    for rank, addresses in seen.items():
        assert addresses <= {"127.0.0.1"}, f"rank {rank} listens on {addresses}"


def test_rank_labels_are_parsed_from_both_process_managers():
    assert parse_rank_line("[3] hello [world]") == (3, "hello [world]")
    assert parse_rank_line("[12] ") == (12, "")
    assert parse_rank_line("[1] about to fail[1] ") == (1, "about to fail")
    assert parse_rank_line("=== BAD TERMINATION ===") == (None, "=== BAD TERMINATION ===")
    assert parse_rank_line("2>out", "gforker") == (2, "out")
    assert parse_rank_line("0(err)>Traceback", "gforker") == (0, "Traceback")
    assert parse_rank_line("[0]0:Return code = 3", "gforker") == (None, "[0]0:Return code = 3")


def test_missing_mpiexec_is_an_input_error_saying_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match=r"no mpiexec .*pip install mpich"):
        mpiexec_path()
    with pytest.raises(InputError, match="no mpiexec"):
        run_mpi(["true"], 2)


def test_the_venvs_mpiexec_is_found_beside_python():
    assert mpiexec_path() == Path(sys.executable).parent / "mpiexec"


@pytest.mark.parametrize("ranks", [0, -1, 1.5, True])
def test_ranks_below_one_or_not_an_integer_are_an_input_error(ranks):
    with pytest.raises(InputError, match=r"ranks=.*expected an integer >= 1"):
        run_mpi(["true"], ranks)


def test_the_manual_launcher_needs_someone_to_start_the_proxies(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1:1\n")
    with pytest.raises(InputError, match="needs on_proxies"):
        run_mpi(["true"], 1, hostfile=hostfile, launcher="manual")


def test_hosts_and_hostfile_together_are_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not both"):
        run_mpi(["true"], 1, hosts=["127.0.0.1"], hostfile=tmp_path / "hostfile")


def test_a_job_run_in_a_flow_is_recorded_while_it_runs_and_forgotten_after(sciflow_dirs):
    from prefect import flow

    from tasks.compute.launches import current_record

    seen: list[int] = []

    @flow
    def hello() -> int:
        record = current_record()
        assert record is not None

        def count_recorded(rank: int | None, line: str) -> None:
            seen.append(len(record.launches()))

        run_mpi(mpi4py_argv(HELLO), 2, on_line=count_recorded, timeout_s=JOB_TIMEOUT_S)
        return len(record.launches())

    assert hello() == 0  # forgotten once mpiexec ended, before the flow's stop hook ran
    assert seen
    assert max(seen) == 1  # recorded while its ranks printed
