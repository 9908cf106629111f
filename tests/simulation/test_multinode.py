"""The multi-node entrypoint for real: nodes on loopback, then nodes in network namespaces.

The namespace test builds hosts the way Batch's nodes look to MPI: each node is a network
namespace (with its own UTS namespace, so its own hostname) on a private bridge, and each
runs the entrypoint with the ``AWS_BATCH_*`` variables Batch sets on that node. Only
loopback and addresses inside the namespaces made here are used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from tasks.compute import channel
from tasks.errors import SciflowError
from tasks.simulation import multinode
from tasks.simulation.mpi_hello import expected_sums
from tasks.simulation.multinode import Member, hostfile_text, write_hostfile

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ENTRYPOINT = [PYTHON, "-m", "tasks.simulation.multinode"]
HELLO = [PYTHON, "-m", "mpi4py", "-m", "tasks.simulation.mpi_hello"]
# Bound for each entrypoint process: a hang fails the test, not the CI run.
PROCESS_TIMEOUT_S = 60
# The private subnet used only inside the namespaces made here.
SUBNET = "10.200.0"
# The run token the nodes of these jobs share (as the job definition's `secrets` gives it).
TOKEN = channel.new_token()


def _batch_env(index: int, count: int, main_addr: str | None, job: str = "job-1") -> dict:
    """The variables AWS Batch sets on node ``index`` (the main node lacks its own address)."""
    env = {
        "AWS_BATCH_JOB_ID": f"{job}#{index}",
        "AWS_BATCH_JOB_NODE_INDEX": str(index),
        "AWS_BATCH_JOB_NUM_NODES": str(count),
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
    }
    if main_addr is not None:
        env["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = main_addr
    return env


def _environ(extra: dict) -> dict:
    """This environment without Batch's variables, with the run token every node is given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_BATCH_")}
    return {**base, "PYTHONPATH": str(REPO), channel.TOKEN_VARIABLE: TOKEN, **extra}


def _start(argv: Sequence[str], env: dict) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _finish(procs: Sequence[subprocess.Popen[str]]) -> list[tuple[int, str, str]]:
    """Wait for every process (bounded); kill the rest if one hangs."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def _tagged(output: str, tag: str) -> dict[int, dict]:
    """``[rank] TAG {json}`` lines of the main node's output, by rank."""
    found = {}
    for line in output.splitlines():
        label, _, text = line.partition(" ")
        if text.startswith(tag + " "):
            found[int(label.strip("[]"))] = json.loads(text[len(tag) + 1 :])
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_hostfile_lists_each_node_with_its_slots_main_first(tmp_path):
    members = [Member(0, "10.0.0.5", 4), Member(1, "10.0.0.7", 2), Member(2, "10.0.0.6", 1)]
    assert hostfile_text(members) == "10.0.0.5:4\n10.0.0.7:2\n10.0.0.6:1\n"
    path = write_hostfile(tmp_path / "hostfile", members)
    assert path.read_text() == hostfile_text(members)
    assert [p.name for p in tmp_path.iterdir()] == ["hostfile"]  # no temporary left


def test_a_child_runs_only_hydras_proxy():
    with pytest.raises(SciflowError, match="children run only hydra_pmi_proxy"):
        multinode._proxy_argv(["/bin/sh", "-c", "echo owned"])
    argv = multinode._proxy_argv(["/elsewhere/hydra_pmi_proxy", "--proxy-id", "1"])
    assert Path(argv[0]).parent == Path(sys.executable).parent
    assert argv[1:] == ["--proxy-id", "1"]


def test_two_entrypoints_on_loopback_register_and_run_one_job():
    port = _free_port()
    options = ["--port", str(port), "--register-timeout", "30", "--timeout", "60"]
    lo = {"UCX_NET_DEVICES": "lo"}  # the ranks of both "nodes" talk over loopback only
    child = _start(
        [*ENTRYPOINT, *options, "--slots", "2", "--addr", "127.0.0.2", "--", *HELLO],
        _environ({**lo, **_batch_env(1, 2, "127.0.0.1")}),
    )
    main = _start(
        [*ENTRYPOINT, *options, "--bind", "127.0.0.1", "--slots", "1", "--", *HELLO],
        _environ({**lo, **_batch_env(0, 2, None)}),
    )
    (main_status, main_out, main_err), (child_status, _, child_err) = _finish([main, child])
    assert main_status == 0, main_err
    assert child_status == 0, child_err
    assert "['127.0.0.1:1', '127.0.0.2:2']" in main_err  # the host file, main node first
    hellos = _tagged(main_out, "HELLO")
    assert {rank: hello["pmi_host"] for rank, hello in hellos.items()} == {
        0: "127.0.0.1",
        1: "127.0.0.2",
        2: "127.0.0.2",
    }
    np.testing.assert_allclose(
        _tagged(main_out, "RESULT")[0]["sums"], expected_sums(10_000), rtol=1e-12, atol=1e-9
    )


def test_a_lost_node_stops_the_job_instead_of_hanging(tmp_path):
    port = _free_port()
    options = ["--port", str(port), "--register-timeout", "30", "--timeout", "60", "--slots", "1"]
    program = "import os, time; print('UP', os.getpid(), flush=True); time.sleep(60)"
    command = [PYTHON, "-m", "mpi4py", "-c", program]
    lo = {"UCX_NET_DEVICES": "lo"}
    child = _start(
        [*ENTRYPOINT, *options, "--addr", "127.0.0.2", "--", *command],
        _environ({**lo, **_batch_env(1, 2, "127.0.0.1")}),
    )
    out, err = tmp_path / "main.out", tmp_path / "main.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        main = subprocess.Popen(
            [*ENTRYPOINT, *options, "--bind", "127.0.0.1", "--", *command],
            cwd=REPO,
            env=_environ({**lo, **_batch_env(0, 2, None)}),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT_S
        while len(pids) < 2 and time.monotonic() < deadline and main.poll() is None:
            time.sleep(0.1)
            pids = [
                int(line.split()[-1]) for line in out.read_text().splitlines() if " UP " in line
            ]
        assert len(pids) == 2, err.read_text()
        child.kill()  # the node's container is gone
        lost_at = time.monotonic()
        status = main.wait(timeout=PROCESS_TIMEOUT_S)
        assert time.monotonic() - lost_at < 2 * multinode.PROXY_GRACE_S + 5
        assert status != 0
        assert "node 1 left the job" in err.read_text()
    finally:
        for proc in (main, child):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for pid in pids:  # ranks a killed node left behind (a container would take them)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        child.communicate()


def test_the_main_node_names_the_nodes_that_never_registered():
    port = _free_port()
    options = ["--port", str(port), "--register-timeout", "3", "--slots", "1"]
    good = _start([*ENTRYPOINT, *options, "--", *HELLO], _environ(_batch_env(1, 3, "127.0.0.1")))
    stranger = _start(  # node 2 of another job: rejected
        [*ENTRYPOINT, *options, "--", *HELLO],
        _environ(_batch_env(2, 3, "127.0.0.1", job="other-job")),
    )
    main = _start(
        [*ENTRYPOINT, *options, "--bind", "127.0.0.1", "--", *HELLO],
        _environ(_batch_env(0, 3, None)),
    )
    (main_status, _, main_err), (good_status, _, _), (stranger_status, _, _) = _finish(
        [main, good, stranger]
    )
    assert main_status == 1
    assert "nodes [2] of 3 did not register" in main_err
    # The other job's key (its token scoped to its job id) fails the channel's handshake.
    assert "refused a connection from 127.0.0.1" in main_err
    assert good_status != 0  # told the job failed
    assert stranger_status != 0


def test_a_command_is_required():
    result = subprocess.run(
        [*ENTRYPOINT, "--"],
        cwd=REPO,
        env=_environ(_batch_env(0, 1, None)),
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
    )
    assert result.returncode == 2
    assert "no command" in result.stderr


# ---- several hosts: network namespaces ---------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def _cannot_make_namespaces() -> str | None:
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is missing: apt-get install -y iproute2"
    if os.geteuid() != 0:
        return "making network namespaces needs root (CAP_NET_ADMIN)"
    return None


@pytest.fixture
def hosts() -> Iterator[list[tuple[str, str]]]:
    """Three namespaces on one bridge (in a fourth): ``(namespace, address)`` per host.

    Every link is created inside the namespaces, so nothing is added to this host's network;
    deleting the namespaces deletes their links.
    """
    reason = _cannot_make_namespaces()
    if reason:
        print(f"SKIP several hosts: {reason}")
        pytest.skip(reason)
    tag = f"sf{os.getpid() % 100000}"
    switch = f"{tag}sw"
    nodes = [(f"{tag}n{i}", f"{SUBNET}.{i + 1}") for i in range(3)]
    made: list[str] = []
    try:
        for name in [switch, *(ns for ns, _ in nodes)]:
            _ip("netns", "add", name)
            made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for i, (ns, addr) in enumerate(nodes):
            _ip(
                "link", "add", "name", "eth0", "netns", ns, "type", "veth",
                "peer", "name", f"p{i}", "netns", switch,
            )  # fmt: skip
            _ip("-n", switch, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
    except subprocess.CalledProcessError as exc:
        _delete(made)
        reason = f"cannot make network namespaces: `{' '.join(exc.cmd)}`: {exc.stderr.strip()}"
        print(f"SKIP several hosts: {reason}")
        pytest.skip(reason)
    try:
        yield nodes
    finally:
        _delete(made)


def _delete(namespaces: list[str]) -> None:
    for name in reversed(namespaces):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _in_namespace(ns: str, hostname: str, argv: list[str]) -> list[str]:
    """Run ``argv`` in network namespace ``ns``, with its own hostname where unshare exists."""
    inner = argv
    if shutil.which("unshare"):
        script = 'hostname "$0" && exec "$@"'
        inner = ["unshare", "--uts", "sh", "-c", script, hostname, *argv]
    return ["ip", "netns", "exec", ns, *inner]


def test_one_mpi_job_runs_across_three_namespaces(hosts):
    main_addr = hosts[0][1]
    options = ["--register-timeout", "30", "--timeout", "60", "--slots", "2"]
    # Ranks talk over the bridge (TCP), not shared memory between the "hosts".
    transport = {"UCX_TLS": "self,tcp"}
    procs = []
    for index, (ns, _) in reversed(list(enumerate(hosts))):  # children first, as Batch may
        env = _environ({**transport, **_batch_env(index, 3, None if index == 0 else main_addr)})
        bind = ["--bind", main_addr] if index == 0 else []  # the namespaces resolve no names
        argv = _in_namespace(ns, f"node{index}", [*ENTRYPOINT, *options, *bind, "--", *HELLO])
        procs.append(_start(argv, env))
    results = _finish(procs[::-1])
    for index, (status, _, err) in enumerate(results):
        assert status == 0, f"node {index} exited {status}:\n{err}"
    main_out = results[0][1]
    hellos = _tagged(main_out, "HELLO")
    assert sorted(hellos) == list(range(6))
    namespace_ids = [Path(f"/run/netns/{ns}").stat().st_ino for ns, _ in hosts]
    for rank, hello in hellos.items():
        node = rank // 2  # two slots per node, nodes in host-file order
        assert hello["netns"] == namespace_ids[node], f"rank {rank} ran outside node {node}"
        assert hello["pmi_host"] == hosts[node][1]
        if shutil.which("unshare"):
            assert hello["host"] == f"node{node}"
    np.testing.assert_allclose(
        _tagged(main_out, "RESULT")[0]["sums"], expected_sums(10_000), rtol=1e-12, atol=1e-9
    )
