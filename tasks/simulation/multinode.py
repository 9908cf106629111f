"""Container entrypoint for AWS Batch multi-node parallel jobs: one MPI job across the nodes.

Every node of the job starts ``python -m tasks.simulation.multinode -- <command ...>``. As in
AWS's multi-node MPI recipe (aws-samples/aws-batch-mpi), the node whose
``AWS_BATCH_JOB_NODE_INDEX`` equals ``AWS_BATCH_JOB_MAIN_NODE_INDEX`` is the main node: it
waits for the other ``AWS_BATCH_JOB_NUM_NODES - 1`` nodes to register, writes a Hydra host
file (``address:slots``, main node first) and runs ``mpiexec -f hostfile -n <total slots>
<command>``. The child nodes connect to ``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS`` on a
fixed TCP port (``--port``) and report their slots.

The control channel (``tasks.compute.channel``) listens on the main node's private address
only (``--bind``; never every interface) and admits only nodes that prove the job's key:
HMAC-SHA256 of the run token (``SCIFLOW_RUN_TOKEN``, a `secrets` entry of the job
definition) and the Batch job id. A peer without it is dropped before it can register or
receive a proxy command line. Hydra's own proxy connections (``hydra_pmi_proxy`` to
``mpiexec``) are Hydra's and carry no token; they stay inside the job's security group.

Instead of ssh (the recipe's way, which needs keys and an sshd in the image) Hydra's manual
launcher is used: ``mpiexec -launcher manual`` prints one ``hydra_pmi_proxy`` command line
per host; the main node starts the first itself and sends each child its own over the
control channel. A child runs only a ``hydra_pmi_proxy`` command, exits with its status and
also stops (killing its proxy) when the main node closes the channel. Ranks keep their own
node's environment (``-genvnone``): Batch's per-node variables and credentials stay right. If
a child's channel closes mid-job (its container ended) the main node stops the job rather
than let Hydra wait for that node. The main node's exit status is the job's: 0, or the MPI
job's failure status.

Control messages are JSON objects, one per channel message: a child sends ``{"node", "slots",
"job", "addr"}``; the main node answers ``{"launch": argv}`` and, at the end,
``{"finish": status}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tasks.compute import channel
from tasks.compute.node_context import BATCH_JOB_ID, LOOPBACK, NodeContext, launcher_env
from tasks.compute.processes import kill_with_parent
from tasks.errors import InputError, SciflowError
from tasks.simulation.mpi import PROXY, MpiError, mpiexec_path, run_mpi

logger = logging.getLogger(__name__)

# TCP port of the main node's control channel (below Linux's ephemeral range, 32768-60999).
DEFAULT_PORT = 27415
# Seconds the main node waits for the children to register (Batch may start them minutes
# after the main node), and a child for the main node to accept it.
REGISTER_TIMEOUT_S = 600.0
# Seconds between a child's connection attempts.
RETRY_S = 0.5
# Seconds a child's proxy gets after SIGTERM before SIGKILL.
PROXY_GRACE_S = 5.0
# Longest control message accepted, in bytes.
MAX_MESSAGE = 1 << 16


@dataclass(frozen=True, slots=True)
class Member:
    """One node of the MPI job: where Hydra finds it and how many ranks it runs."""

    index: int
    addr: str
    slots: int


def hostfile_text(members: Sequence[Member]) -> str:
    """A Hydra host file: ``address:slots`` per node, in the order given."""
    return "".join(f"{member.addr}:{member.slots}\n" for member in members)


def write_hostfile(path: Path, members: Sequence[Member]) -> Path:
    """Write ``hostfile_text(members)`` to ``path`` under a temporary name, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(hostfile_text(members))
    tmp.replace(path)
    return path


def _job(job_id: str | None) -> str:
    """The job id shared by all nodes (a node's own id is ``<job>#<node index>``)."""
    return (job_id or "").split("#", 1)[0]


def job_key(job: str, env: dict[str, str] | None = None) -> bytes:
    """The control channel's key for ``job``: the run token scoped to the Batch job id.

    Raises:
        InputError: ``SCIFLOW_RUN_TOKEN`` is missing or too short.
    """
    return channel.scoped_key(channel.read_token(env), f"sciflow-multinode:{job}")


def _send(conn: Connection, message: dict[str, Any]) -> None:
    conn.send_bytes(json.dumps(message).encode())


def _read(conn: Connection, timeout_s: float | None) -> dict[str, Any] | None:
    """The next message; ``None`` when the peer closed. Raises ``TimeoutError``."""
    if timeout_s is not None and not conn.poll(timeout_s):
        raise TimeoutError("no control message in time")
    try:
        data = conn.recv_bytes(MAX_MESSAGE)
    except (EOFError, ConnectionError):
        return None
    except OSError as exc:  # longer than MAX_MESSAGE
        raise SciflowError(f"bad control message: {exc}") from exc
    message = json.loads(data)
    if not isinstance(message, dict):
        raise SciflowError(f"control message {data[:200]!r} is not a JSON object")
    return message


class ControlServer:
    """The main node's end of the control channel: registration, then proxy launches."""

    def __init__(
        self, port: int, count: int, main_index: int, job: str, bind: str, key: bytes
    ) -> None:
        self.count, self.main_index, self.job = count, main_index, job
        try:
            self.listener = channel.Listener(bind, port, key, parameter="--bind")
        except OSError as exc:
            raise SciflowError(f"cannot listen on {bind}:{port}: {exc}") from exc
        self.port = self.listener.address[1]
        self.children: dict[int, tuple[Member, Connection]] = {}
        self.main_addr: str | None = None
        self.finishing = threading.Event()

    def wait_for_children(self, timeout_s: float) -> list[Member]:
        """Accept registrations until every other node has one; children by node index.

        Raises:
            SciflowError: Not every node registered within ``timeout_s``; the message
                names the missing node indices.
        """
        expected = set(range(self.count)) - {self.main_index}
        deadline = time.monotonic() + timeout_s
        while set(self.children) != expected:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(expected - set(self.children))
                raise SciflowError(
                    f"nodes {missing} of {self.count} did not register with the main node on "
                    f"port {self.port} within {timeout_s:g} s; check that they started and "
                    "that the security group allows TCP between the job's nodes"
                )
            conn = self.listener.accept(remaining)  # only peers that proved the job's key
            if conn is not None:
                self._register(conn, deadline)
        return [member for _, (member, _) in sorted(self.children.items())]

    def _register(self, conn: Connection, deadline: float) -> None:
        peer = _peer(conn)
        try:
            hello = _read(conn, max(min(deadline - time.monotonic(), 10.0), 0.1))
            index, slots = int(hello["node"]), int(hello["slots"])  # type: ignore[index]
            job = str(hello.get("job") or "")  # type: ignore[union-attr]
            addr = str(hello.get("addr") or peer)  # type: ignore[union-attr]
        except (TimeoutError, TypeError, KeyError, ValueError, OSError, SciflowError) as exc:
            logger.warning("ignoring a bad registration from %s: %s", peer, exc)
            conn.close()
            return
        problem = None
        if job != self.job:
            problem = f"job {job!r} is not this job {self.job!r}"
        elif not 0 <= index < self.count or index == self.main_index:
            problem = f"node index {index} is not a child node of 0..{self.count - 1}"
        elif index in self.children:
            problem = f"node {index} registered twice"
        elif slots < 1:
            problem = f"slots={slots}; expected >= 1"
        if problem:
            logger.warning("rejecting registration from %s: %s", peer, problem)
            conn.close()
            return
        self.main_addr = self.main_addr or self.listener.address[0]
        self.children[index] = (Member(index, addr, slots), conn)
        logger.info("node %d registered from %s with %d slots", index, addr, slots)

    def launch(self, index: int, argv: list[str]) -> None:
        """Send node ``index`` its proxy command line."""
        _send(self.children[index][1], {"launch": argv})

    def watch(self, on_lost: Any) -> None:
        """Call ``on_lost(index)`` from a thread if a child's channel closes before ``finish``.

        Children send nothing after registering, so a readable channel means a lost node
        (its container ended); the caller then stops the job rather than let Hydra wait.
        """

        def run() -> None:
            conns = {conn: index for index, (_, conn) in self.children.items()}
            while conns and not self.finishing.is_set():
                try:
                    ready, _, _ = select.select(list(conns), [], [], 0.5)
                except (OSError, ValueError):
                    return  # closed by finish()
                for conn in ready:
                    try:
                        closed = _read(conn, 0) is None
                    except (TimeoutError, ValueError, OSError, SciflowError):
                        closed = True
                    if closed:
                        index = conns.pop(conn)
                        if not self.finishing.is_set():
                            on_lost(index)

        threading.Thread(target=run, daemon=True).start()

    def finish(self, status: int) -> None:
        """Tell every child the job ended with ``status`` and close the channel."""
        self.finishing.set()
        for _, conn in self.children.values():
            try:
                _send(conn, {"finish": status})
            except OSError:
                pass
            conn.close()
        self.listener.close()


def run_main(
    node: NodeContext,
    command: list[str],
    *,
    port: int = DEFAULT_PORT,
    slots: int,
    register_timeout_s: float = REGISTER_TIMEOUT_S,
    timeout_s: float | None = None,
    bind: str | None = None,
    workdir: Path | None = None,
    key: bytes | None = None,
) -> int:
    """The main node: gather the children, write the host file, run the MPI job.

    Args:
        node: This (main) node's place in the job.
        command: The MPI program and its arguments.
        port: The control channel's port.
        slots: MPI ranks on this node.
        register_timeout_s: Seconds to wait for the other nodes to register.
        timeout_s: Seconds the MPI job may run.
        bind: The one address the control channel listens on; this node's private address
            (``node.main_addr``) if omitted.
        workdir: Where the host file goes; a temporary directory if omitted.
        key: The job's channel key; ``job_key`` of this job if omitted.

    Returns:
        The job's exit status: 0, or the MPI job's failure status.

    Raises:
        InputError: No run token, a wildcard ``bind``, or no private address to bind.
    """
    if node.count == 1:
        logger.info("a job of one node: running %d ranks here", slots)
        return _status(lambda: run_mpi(command, slots, on_line=_print_line, timeout_s=timeout_s))
    job = _job(launcher_env().get(BATCH_JOB_ID))
    key = key or job_key(job)
    if bind is None:
        if node.main_addr == LOOPBACK:
            raise InputError(
                f"this main node found no private address (its name resolves to {LOOPBACK} "
                "only), so the other nodes cannot reach it; pass --bind <private address>"
            )
        bind = node.main_addr
    server = ControlServer(port, node.count, node.index, job, bind, key)
    local_proxy: list[subprocess.Popen[bytes]] = []
    status = 1

    cancel = threading.Event()

    def lost(index: int) -> None:
        logger.error("node %d left the job; stopping it", index)
        cancel.set()  # Hydra would wait for that node's proxy for ever

    try:
        logger.info(
            "main node %d waits for %d nodes on port %d", node.index, node.count - 1, server.port
        )
        children = server.wait_for_children(register_timeout_s)
        main = Member(node.index, server.main_addr or node.main_addr, slots)
        members = [main, *children]
        total = sum(member.slots for member in members)

        def start_proxies(commands: list[list[str]]) -> None:
            if len(commands) != len(members):
                message = f"mpiexec printed {len(commands)} proxy commands for {len(members)} hosts"
                raise MpiError(message, 1, {})
            local_proxy.append(_start_proxy(commands[0]))
            for member, argv in zip(members[1:], commands[1:], strict=True):
                try:
                    server.launch(member.index, argv)
                except OSError as exc:
                    raise MpiError(
                        f"cannot send node {member.index} its proxy: {exc}", 1, {}
                    ) from exc
            server.watch(lost)

        with tempfile.TemporaryDirectory(prefix="sciflow-mpi-") as scratch:
            hostfile = write_hostfile(Path(workdir or scratch) / "hostfile", members)
            logger.info("host file %s: %s", hostfile, hostfile_text(members).split())
            status = _status(
                lambda: run_mpi(
                    command,
                    total,
                    hostfile=hostfile,
                    launcher="manual",
                    on_proxies=start_proxies,
                    on_line=_print_line,
                    timeout_s=timeout_s,
                    cancel=cancel,
                )
            )
    finally:
        server.finish(status)
        for proxy in local_proxy:
            _stop_proxy(proxy)
    return status


def run_child(
    node: NodeContext,
    *,
    port: int = DEFAULT_PORT,
    slots: int,
    register_timeout_s: float = REGISTER_TIMEOUT_S,
    addr: str | None = None,
    key: bytes | None = None,
) -> int:
    """A child node: register with the main node, run the proxy it sends, report its end.

    Args:
        node: This node's place in the job (``main_addr``: where to register).
        port: The main node's control channel port.
        slots: MPI ranks on this node.
        register_timeout_s: Seconds to keep trying to reach the main node.
        addr: The address to give the main node; the one this node reaches it from if omitted.
        key: The job's channel key; ``job_key`` of this job if omitted.

    Returns:
        The proxy's exit status; without one, the main node's final status, or 1 if the
        main node went away without one.

    Raises:
        InputError: No run token.
        SciflowError: The main node refused this node's key, or was not reached in time.
    """
    job = _job(launcher_env().get(BATCH_JOB_ID))
    conn = _connect(node.main_addr, port, register_timeout_s, key or job_key(job))
    # Its own address: the one it reaches the main node from, unless told otherwise.
    own = addr or _own_end(conn)
    _send(conn, {"node": node.index, "slots": slots, "job": job, "addr": own})
    logger.info("node %d registered with %s:%d", node.index, node.main_addr, port)
    messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_pump, args=(conn, messages), daemon=True).start()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        while True:
            try:
                message = messages.get(timeout=0.2)
            except queue.Empty:
                if proxy is not None and proxy.poll() is not None:
                    logger.info("proxy exited with status %d", proxy.returncode)
                    return proxy.returncode
                continue
            if message is None:
                logger.warning("the main node closed the control channel")
                return _stop_proxy(proxy) if proxy is not None else 1
            if "launch" in message and proxy is None:
                proxy = _start_proxy(_proxy_argv(message["launch"]))
            elif "finish" in message:
                status = int(message["finish"])
                logger.info("the main node finished with status %d", status)
                if proxy is None:
                    return status
                try:  # the proxy ends by itself once mpiexec is done with it
                    return proxy.wait(timeout=PROXY_GRACE_S)
                except subprocess.TimeoutExpired:
                    _stop_proxy(proxy)
                    return status or 1
    finally:
        conn.close()


def _proxy_argv(argv: object) -> list[str]:
    """Check that the main node sent a Hydra proxy command, and return it."""
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise SciflowError(f"launch message {argv!r} is not a command line")
    if Path(argv[0]).name != PROXY:
        raise SciflowError(f"refusing to run {argv[0]!r}: children run only {PROXY}")
    return [str(mpiexec_path().with_name(PROXY)), *argv[1:]]


def _start_proxy(argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a Hydra proxy in its own process group (with its ranks), to stop all of it."""
    return subprocess.Popen(  # noqa: S603 - a hydra_pmi_proxy command (_proxy_argv)
        argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=kill_with_parent
    )


def _kill_group(proxy: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proxy.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pump(conn: Connection, messages: queue.Queue[dict[str, Any] | None]) -> None:
    try:
        while (message := _read(conn, None)) is not None:
            messages.put(message)
    except (OSError, ValueError, SciflowError) as exc:
        logger.warning("control channel: %s", exc)
    messages.put(None)


def _connect(host: str, port: int, timeout_s: float, key: bytes) -> Connection:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return channel.connect(host, port, key, timeout_s=RETRY_S * 4)
        except channel.AuthenticationFailed as exc:
            raise SciflowError(
                f"the main node at {host}:{port} refused this node: {exc}; every node of the "
                f"job needs the run's {channel.TOKEN_VARIABLE}"
            ) from exc
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise SciflowError(
                    f"cannot reach the main node at {host}:{port} within {timeout_s:g} s: {exc}"
                ) from exc
            time.sleep(RETRY_S)


def _sock_name(conn: Connection, peer: bool) -> str:
    sock = socket.socket(fileno=conn.fileno())
    try:
        return str((sock.getpeername() if peer else sock.getsockname())[0])
    except OSError:
        return "?"
    finally:
        sock.detach()


def _peer(conn: Connection) -> str:
    """The address a connection comes from."""
    return _sock_name(conn, peer=True)


def _own_end(conn: Connection) -> str:
    """This side's address of a connection."""
    return _sock_name(conn, peer=False)


def _stop_proxy(proxy: subprocess.Popen[bytes] | None) -> int:
    if proxy is None:
        return 1
    if proxy.poll() is None:
        proxy.terminate()
        try:
            proxy.wait(timeout=PROXY_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(proxy)  # ranks the proxy left behind
    return proxy.wait()


def _status(run: Any) -> int:
    try:
        return run()
    except MpiError as exc:
        logger.error("%s", exc)
        return exc.returncode if exc.returncode > 0 else 1


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _print_line(rank: int | None, line: str) -> None:
    sys.stdout.write(f"[{'mpiexec' if rank is None else rank}] {line}\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, find this node's part from ``AWS_BATCH_*`` and play it."""
    parser = argparse.ArgumentParser(
        prog="python -m tasks.simulation.multinode",
        description="Run one MPI job across the nodes of an AWS Batch multi-node job.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="Control channel port.")
    parser.add_argument(
        "--slots", type=int, default=_cpus(), help="MPI ranks on this node (default: its CPUs)."
    )
    parser.add_argument(
        "--register-timeout", type=float, default=REGISTER_TIMEOUT_S, help="Seconds to gather."
    )
    parser.add_argument("--timeout", type=float, default=None, help="Seconds the MPI job may run.")
    parser.add_argument(
        "--bind",
        default=None,
        help="Main node: the one address to listen on (default: its private address).",
    )
    parser.add_argument("--addr", default=None, help="Child: address to give the main node.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the MPI program.")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s multinode %(message)s")
    try:
        if not command:
            raise InputError("no command; expected `-- <program> [args]` after the options")
        if args.slots < 1:
            raise InputError(f"--slots={args.slots}; expected >= 1")
        node = NodeContext.from_batch_env(launcher_env())
        if node.is_main:
            return run_main(
                node,
                command,
                port=args.port,
                slots=args.slots,
                register_timeout_s=args.register_timeout,
                timeout_s=args.timeout,
                bind=args.bind,
            )
        return run_child(
            node,
            port=args.port,
            slots=args.slots,
            register_timeout_s=args.register_timeout,
            addr=args.addr,
        )
    except SciflowError as exc:
        logger.error("%s", exc)
        return 2 if isinstance(exc, InputError) else 1


if __name__ == "__main__":
    sys.exit(main())
