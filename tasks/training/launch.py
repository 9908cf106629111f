"""Start training processes and follow their event lines.

Here: ``torchrun`` for DDP (``--standalone`` on one node, a static rendezvous at the main
node's address across nodes) or a parameter server and its workers on 127.0.0.1, which admits
only processes holding the run's token. On an AWS
Batch node: ``python -m tasks.training.launch node --config <uri> --procs-per-node P``
reads the node's place in the job from Batch's variables (``NodeContext``) and runs
``torchrun`` with the main node as the rendezvous point, so every node of a multi-node job
runs the same command.
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.compute.channel import TOKEN_VARIABLE, new_token
from tasks.compute.launches import Launch, current_record, process_launch
from tasks.compute.node_context import LOOPBACK, NodeContext
from tasks.compute.processes import kill_with_parent, read_lines, stop_group
from tasks.errors import InputError, SciflowError
from tasks.training import events

# Rendezvous port on the main node of a multi-node job (open between the job's nodes).
RENDEZVOUS_PORT = 29400
# Parameter-server port (its workers connect to it).
SERVER_PORT = 29500
# Parameter-server processes exit after this many seconds unless told another limit: the
# longest default wall time of a size class (``blocks.compute_unit.DEFAULT_LIMITS``, not
# imported: these processes do not load Prefect). Launchers pass the unit's.
DEFAULT_WALL_TIME_S = 12 * 3600
# Seconds between SIGTERM and SIGKILL when stopping processes.
KILL_GRACE_S = 10.0
# Error lines kept per process for the exception message.
ERROR_TAIL_LINES = 20

EventHandler = Callable[[str, dict[str, Any]], None]
LineHandler = Callable[[str, str], None]


class TrainingFailed(SciflowError):
    """A training process failed; the message holds its last error lines."""


class TrainingTimedOut(TrainingFailed):
    """The processes ran past ``timeout_s`` and were stopped (each one's process group)."""


# Below Linux's default ephemeral range (/proc/sys/net/ipv4/ip_local_port_range).
LISTEN_PORTS = range(20_000, 32_768)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on now, on ``host``, outside the ephemeral range.

    Another process binds it later; a port from the ephemeral range could meanwhile become
    the local end of any outgoing connection on the machine (torchrun then failed with
    EADDRINUSE), so one is drawn from below it, where only listeners go.
    """
    for port in random.sample(LISTEN_PORTS, 64):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # all taken: any port the kernel gives
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def torchrun_argv(
    config_uri: str,
    *,
    procs_per_node: int,
    nodes: int = 1,
    node_rank: int = 0,
    main_addr: str = LOOPBACK,
    port: int = RENDEZVOUS_PORT,
    max_restarts: int = 0,
    python: str = sys.executable,
) -> list[str]:
    """The ``torchrun`` command of one node.

    One node rendezvouses on its own (``--standalone``: a free loopback port); several meet
    at ``main_addr:port`` (static rendezvous, node ranks from Batch). ``max_restarts``
    restarts every rank of the job when one dies; they resume from the newest checkpoint.
    The rendezvous carries no token and its store listens on every interface (see
    ``tasks.training.ddp``): it is exposed as far as the network allows.
    """
    command = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(procs_per_node)]
    command += [
        "--nnodes", str(nodes),
        "--node-rank", str(node_rank),
        "--master-addr", main_addr,
        "--master-port", str(port if nodes > 1 else free_port()),
    ]  # fmt: skip
    command += ["--max-restarts", str(max_restarts), "--monitor-interval", "0.5"]
    return [*command, "-m", "tasks.training.ddp", "--config", config_uri]


def parameter_server_argv(
    role: str,
    config_uri: str,
    *,
    server: str = "",
    port: int = SERVER_PORT,
    workers: int = 0,
    wall_time_s: float = DEFAULT_WALL_TIME_S,
) -> list[str]:
    """The command of the parameter server (``role="server"``) or of one worker.

    Each exits by itself after ``wall_time_s`` seconds, whatever it is doing.
    """
    command = [
        sys.executable,
        "-m",
        "tasks.training.parameter_server",
        role,
        "--config",
        config_uri,
        "--wall-time-s",
        f"{wall_time_s:g}",
    ]
    if role == "server":
        return [*command, "--port", str(port), "--workers", str(workers)]
    return [*command, "--server", server]


def local_parameter_server(
    config_uri: str, workers: int, wall_time_s: float = DEFAULT_WALL_TIME_S
) -> dict[str, list[str]]:
    """The server and ``workers`` workers on 127.0.0.1, by name, for ``run_processes``.

    Each process exits by itself after ``wall_time_s`` seconds.
    """
    port = free_port()
    server = parameter_server_argv(
        "server", config_uri, port=port, workers=workers, wall_time_s=wall_time_s
    )
    worker = parameter_server_argv(
        "worker", config_uri, server=f"{LOOPBACK}:{port}", wall_time_s=wall_time_s
    )
    return {
        "server": [*server, "--host", LOOPBACK],
        **{f"worker-{i}": list(worker) for i in range(1, workers + 1)},
    }


@dataclass
class _Process:
    name: str
    proc: subprocess.Popen[bytes]
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=ERROR_TAIL_LINES))
    reported: list[str] = field(default_factory=list)  # what the program's error events said


def run_processes(
    commands: Mapping[str, Sequence[str]],
    *,
    on_event: EventHandler | None = None,
    on_line: LineHandler | None = None,
    env: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
    timeout_s: float | None = None,
) -> None:
    """Run named commands together until all exit; stop them all when one fails.

    Args:
        commands: Name (``torchrun``, ``server``, ``worker-1`` ...) to argv.
        on_event: Called with (name, event) for each event line.
        on_line: Called with (name, line) for every other output line.
        env: Variables on top of this process's environment. The processes share a fresh
            run token (``SCIFLOW_RUN_TOKEN``, ``tasks.compute.channel``) unless ``env``
            gives one: the parameter server admits only peers that hold it.
        cancel: Set it to stop every process; ``run_processes`` then raises.
        timeout_s: Stop everything after this long.

    Raises:
        TrainingFailed: A process exited non-zero or the run was cancelled.
        TrainingTimedOut: The processes ran past ``timeout_s``; all were stopped.
    """
    proc_env = {**os.environ, "PYTHONUNBUFFERED": "1", TOKEN_VARIABLE: new_token(), **(env or {})}
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    running: dict[str, _Process] = {}
    record = current_record()  # the flow run's stop hook kills what is recorded there
    recorded: list[Launch] = []
    try:
        for name, argv in commands.items():
            proc = subprocess.Popen(  # noqa: S603 - argv is built by this module
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=proc_env,
                start_new_session=True,  # its own group: stopping it stops its children
                preexec_fn=kill_with_parent,
            )
            running[name] = _Process(name, proc)
            if record is not None:
                recorded.append(record.add(process_launch(proc.pid, name)))
            reader = threading.Thread(target=read_lines, args=(proc.stdout, name, lines))
            reader.daemon = True
            reader.start()
        _follow(running, lines, on_event, on_line, cancel, timeout_s)
    finally:
        for process in running.values():
            stop_group(process.proc, KILL_GRACE_S)
        for launch in recorded:
            record.done(launch)  # type: ignore[union-attr]  # recorded only with a record


def _follow(
    running: dict[str, _Process],
    lines: queue.Queue[tuple[str, str | None]],
    on_event: EventHandler | None,
    on_line: LineHandler | None,
    cancel: threading.Event | None,
    timeout_s: float | None,
) -> None:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    open_streams = len(running)
    while open_streams or any(p.proc.poll() is None for p in running.values()):
        if cancel is not None and cancel.is_set():
            raise TrainingFailed(f"training was cancelled; stopped {', '.join(running)}")
        if deadline is not None and time.monotonic() > deadline:
            raise TrainingTimedOut(f"training ran past its {timeout_s:g} s limit; stopped it")
        _raise_if_failed(running, lines, on_event, on_line)
        try:
            name, line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            open_streams -= 1
            continue
        _dispatch(name, line, running, on_event, on_line)
    _raise_if_failed(running, lines, on_event, on_line)  # the last to exit may have failed
    _drain(lines, running, on_event, on_line)


def _raise_if_failed(
    running: dict[str, _Process],
    lines: queue.Queue[tuple[str, str | None]],
    on_event: EventHandler | None,
    on_line: LineHandler | None,
) -> None:
    """Raise for the first process that exited non-zero, after handing on its last lines."""
    failed = [p for p in running.values() if p.proc.poll() not in (None, 0)]
    if failed:
        _drain(lines, running, on_event, on_line)
        raise TrainingFailed(_failure(failed[0]))


def _dispatch(
    name: str,
    line: str,
    running: dict[str, _Process],
    on_event: EventHandler | None,
    on_line: LineHandler | None,
) -> None:
    event = events.parse_event(line)
    if event is None:
        running[name].errors.append(line)
        if on_line is not None:
            on_line(name, line)
        return
    if event["event"] == "error":
        running[name].reported.append(str(event.get("message")))
    if on_event is not None:
        on_event(name, event)


def _drain(
    lines: queue.Queue[tuple[str, str | None]],
    running: dict[str, _Process],
    on_event: EventHandler | None,
    on_line: LineHandler | None,
) -> None:
    while True:
        try:
            name, line = lines.get_nowait()
        except queue.Empty:
            return
        if line is not None:
            _dispatch(name, line, running, on_event, on_line)


def _failure(process: _Process) -> str:
    code = process.proc.returncode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
    if process.reported:  # the program said what went wrong; the launcher's traceback won't
        return f"training process {process.name!r} {how}: " + "; ".join(
            dict.fromkeys(process.reported)
        )
    tail = "\n".join(process.errors) or "(no output)"
    return f"training process {process.name!r} {how}; its last lines:\n{tail}"


def node_main(config_uri: str, procs_per_node: int, max_restarts: int, port: int) -> int:
    """One node of an AWS Batch job: ``torchrun`` at this node's place in the job."""
    node = NodeContext.from_process()
    argv = torchrun_argv(
        config_uri,
        procs_per_node=procs_per_node,
        nodes=node.count,
        node_rank=node.index,
        main_addr=node.main_addr,
        port=port,
        max_restarts=max_restarts,
    )
    # The container's only job: hand the process over so Batch's signals reach torchrun.
    os.execv(argv[0], argv)  # noqa: S606
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasks.training.launch node --config URI --procs-per-node P``."""
    parser = argparse.ArgumentParser(description="Start DDP on this node of a Batch job.")
    sub = parser.add_subparsers(dest="command", required=True)
    node = sub.add_parser("node", help="run torchrun for this node of the job")
    node.add_argument("--config", required=True, help="URI of the run's config.json")
    node.add_argument("--procs-per-node", type=int, required=True, help="ranks on this node")
    node.add_argument("--max-restarts", type=int, default=0, help="torchrun --max-restarts")
    node.add_argument(
        "--port", type=int, default=RENDEZVOUS_PORT, help="rendezvous port on the main node"
    )
    args = parser.parse_args(argv)
    if args.procs_per_node < 1:
        raise InputError(f"--procs-per-node={args.procs_per_node}; expected >= 1")
    return node_main(args.config, args.procs_per_node, args.max_restarts, args.port)


if __name__ == "__main__":
    sys.exit(main())
