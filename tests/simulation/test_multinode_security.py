"""The multi-node control channel admits only the job's nodes and listens on one address.

Real entrypoint processes on loopback, as in test_multinode.py, and peers that play the
attacker: a stranger must not register as a node nor obtain Hydra's proxy command line.
"""

from __future__ import annotations

import json
import socket
import time

import psutil
import pytest

from tasks.compute import channel
from tasks.compute.node_context import NodeContext
from tasks.errors import InputError
from tasks.simulation import multinode
from tests.simulation.test_multinode import (
    ENTRYPOINT,
    HELLO,
    PROCESS_TIMEOUT_S,
    _batch_env,
    _environ,
    _finish,
    _free_port,
    _start,
    _tagged,
)


def _listening(pid: int, port: int, timeout_s: float = 30) -> list[str]:
    """The addresses process ``pid`` listens on at ``port``, once it does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [
            c.laddr.ip
            for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        ]
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"process {pid} did not listen on port {port} within {timeout_s} s")


def _old_registration(port: int) -> bytes:
    """What a stranger did to the old channel: register as node 1; all it was sent back."""
    hello = {"node": 1, "slots": 1, "job": "job-1", "addr": "127.0.0.3"}
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(json.dumps(hello).encode() + b"\n")
        sock.settimeout(15)
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (TimeoutError, ConnectionResetError):  # dropped: all it got is above
            pass
    return received


def test_strangers_are_refused_and_the_two_node_job_completes():
    """Guards against the open control channel of old: it listened on every interface and a
    stranger that sent a JSON line took node 1's place and was sent the hydra_pmi_proxy
    command line. Now a stranger's registration, a wrong token and an empty one are dropped
    in the handshake, the main node listens on 127.0.0.1 only, and the job of the two real
    nodes runs to its result."""
    port = _free_port()
    options = ["--port", str(port), "--register-timeout", "60", "--timeout", "60"]
    lo = {"UCX_NET_DEVICES": "lo"}
    main = _start(
        [*ENTRYPOINT, *options, "--bind", "127.0.0.1", "--slots", "1", "--", *HELLO],
        _environ({**lo, **_batch_env(0, 2, None)}),
    )
    procs = [main]
    try:
        assert _listening(main.pid, port) == ["127.0.0.1"]
        received = _old_registration(port)
        assert b"launch" not in received
        assert b"hydra_pmi_proxy" not in received
        key = multinode.job_key("job-1", {channel.TOKEN_VARIABLE: channel.new_token()})
        with pytest.raises(channel.AuthenticationFailed):
            channel.connect("127.0.0.1", port, key, timeout_s=15)
        with pytest.raises(channel.AuthenticationFailed):
            channel.connect("127.0.0.1", port, b"", timeout_s=15)
        child = _start(
            [*ENTRYPOINT, *options, "--slots", "2", "--addr", "127.0.0.2", "--", *HELLO],
            _environ({**lo, **_batch_env(1, 2, "127.0.0.1")}),
        )
        procs.append(child)
        (main_status, main_out, main_err), (child_status, _, child_err) = _finish(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert main_status == 0, main_err
    assert child_status == 0, child_err
    assert "['127.0.0.1:1', '127.0.0.2:2']" in main_err  # the real node 1, not the stranger
    assert main_err.count("refused a connection from 127.0.0.1") == 3
    assert sorted(_tagged(main_out, "HELLO")) == [0, 1, 2]
    assert "sums" in _tagged(main_out, "RESULT")[0]


def test_a_node_without_the_token_is_refused_before_it_connects():
    """Guards against a node run without the job's token: it has nothing to prove itself with,
    and says so (the variable's name, never a value) instead of trying."""
    env = _environ(_batch_env(1, 2, "127.0.0.1"))
    del env[channel.TOKEN_VARIABLE]
    child = _start([*ENTRYPOINT, "--port", str(_free_port()), "--", *HELLO], env)
    [(status, _, err)] = _finish([child])
    assert status == 2
    assert f"{channel.TOKEN_VARIABLE} is not set" in err


def test_the_main_node_never_listens_on_every_interface():
    """Guards against the old default (``--bind ''``: every interface): a wildcard is
    refused, and with no private address to bind the main node stops with a clear error."""
    wildcard = _start(
        [*ENTRYPOINT, "--port", str(_free_port()), "--register-timeout", "3", "--bind",
         "0.0.0.0", "--", *HELLO],  # noqa: S104 - the refusal is the test
        _environ(_batch_env(0, 2, None)),
    )  # fmt: skip
    [(status, _, err)] = _finish([wildcard])
    assert status == 2, err
    assert "--bind='0.0.0.0' listens on every interface" in err
    with pytest.raises(InputError, match="no private address"):
        multinode.run_main(NodeContext(0, 2, "127.0.0.1"), HELLO, slots=1, key=b"k" * 32)
    server = multinode.ControlServer(0, 2, 0, "job-1", "127.0.0.1", b"k" * 32)
    try:
        assert server.listener.address[0] == "127.0.0.1"
    finally:
        server.listener.close()


def test_the_job_key_is_bound_to_the_job():
    """Two jobs sharing one token secret still cannot join each other's channel."""
    env = {channel.TOKEN_VARIABLE: "t" * 64}
    assert multinode.job_key("job-1", env) != multinode.job_key("job-2", env)
    assert multinode.job_key("job-1", env) == multinode.job_key("job-1", env)
    assert PROCESS_TIMEOUT_S > 15  # the handshake timeouts above fit in a process's bound
