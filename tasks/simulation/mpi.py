"""Run MPI programs with the MPICH wheel's process managers, on this machine or across hosts.

On this machine (no hosts given) a job runs under MPICH's ``mpiexec.gforker``: it starts
the ranks itself and talks to them over socket pairs, and the ranks' UCX network devices
are limited to ``lo``, so nothing listens beyond loopback. Hydra (``mpiexec``) cannot do
that: its control port is bound to every interface, whatever ``-iface`` or ``-localhost``
say. Across hosts the job runs under Hydra with a host file, started over ssh or, with the
manual launcher, by whoever runs the ``hydra_pmi_proxy`` command lines Hydra prints (the
multi-node entrypoint ``tasks.simulation.multinode`` does that over its control channel).

Each output line reaches ``on_line`` with the rank that wrote it (``None`` for the process
manager's own lines). A rank that fails makes the job fail, with that rank's last error lines
in the ``MpiError``; a job that outlives ``timeout_s`` is killed, never left hanging.

Python ranks should run under ``python -m mpi4py`` (``mpi4py_argv``): an unhandled exception
then calls ``MPI_Abort``, so the other ranks are killed instead of waiting in a collective.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from tasks.compute.launches import current_record, process_launch
from tasks.compute.processes import kill_with_parent, read_lines, stop_group
from tasks.errors import InputError, SciflowError

logger = logging.getLogger(__name__)

Launcher = Literal["default", "manual", "ssh"]
LAUNCHERS: tuple[Launcher, ...] = ("default", "manual", "ssh")
LineHandler = Callable[[int | None, str], None]
ProxyHandler = Callable[[list[list[str]]], None]

MPIEXEC = "mpiexec"
GFORKER = "mpiexec.gforker"
PROXY = "hydra_pmi_proxy"
INSTALL_HINT = "install the MPICH wheel into this environment: `pip install mpich==5.0.2`"
# What a local job's ranks get unless the caller's env says otherwise: UCX (MPICH's netmod in
# the wheel) and libfabric's TCP provider on loopback only; Python writes whole lines (Hydra
# labels every write(), so unbuffered Python would split lines between labels).
LOOPBACK_ENV = {"UCX_NET_DEVICES": "lo", "FI_TCP_IFACE": "lo"}
RANK_ENV = {"PYTHONUNBUFFERED": ""}
# Seconds between SIGTERM and SIGKILL when a job is stopped.
KILL_GRACE_S = 5.0
# Seconds between checks of a job's deadline and cancel event.
POLL_S = 0.2
# Error lines kept per rank for the exception.
ERROR_TAIL_LINES = 30

_HYDRA_LINE = re.compile(r"^\[(\d+)\] ?(.*)$", re.DOTALL)
_GFORKER_LINE = re.compile(r"^(\d+)(\(err\))?>(.*)$", re.DOTALL)
_LAUNCH_PREFIX = "HYDRA_LAUNCH: "
_LAUNCH_END = "HYDRA_LAUNCH_END"


class MpiError(SciflowError):
    """An MPI job failed or timed out.

    Attributes:
        returncode: The process manager's exit status (negative: killed by that signal).
        rank_errors: The last error lines of each rank that wrote any; ``None`` holds the
            process manager's own lines.
    """

    def __init__(
        self, message: str, returncode: int, rank_errors: Mapping[int | None, list[str]]
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.rank_errors = dict(rank_errors)


class MpiTimeout(MpiError):
    """An MPI job ran past its ``timeout_s`` and was stopped (its whole process group)."""


def mpiexec_path() -> Path:
    """MPICH's Hydra ``mpiexec``: the one beside this Python (its venv), else on ``PATH``.

    Raises:
        InputError: No ``mpiexec`` is installed; the message says how to install one.
    """
    beside = Path(sys.executable).parent / MPIEXEC
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which(MPIEXEC)
    if found:
        return Path(found)
    raise InputError(
        f"no {MPIEXEC} beside {sys.executable} or on PATH; {INSTALL_HINT} (`make install` does)"
    )


def mpi4py_argv(module: str, *args: str) -> list[str]:
    """The command line that runs a Python module as MPI ranks under mpi4py's runner.

    ``python -m mpi4py -m module`` calls ``MPI_Abort`` on an unhandled exception, so one
    failing rank ends the job instead of leaving the others waiting.
    """
    return [sys.executable, "-m", "mpi4py", "-m", module, *args]


def parse_rank_line(
    line: str, style: Literal["hydra", "gforker"] = "hydra"
) -> tuple[int | None, str]:
    """Split a labelled output line into its rank and text (``None``: not a rank's line).

    Args:
        line: One line without its newline: ``[3] text`` from Hydra's ``-prepend-rank``,
            ``3>text`` or ``3(err)>text`` from gforker's ``-l``.
        style: Which process manager labelled it.
    """
    if style == "gforker":
        match = _GFORKER_LINE.match(line)
        return (int(match.group(1)), match.group(3)) if match else (None, line)
    match = _HYDRA_LINE.match(line)
    if not match:
        return None, line
    rank, text = int(match.group(1)), match.group(2)
    # Hydra labels every write(): a newline written on its own leaves a bare label behind.
    return rank, text.removesuffix(f"[{rank}] ")


def run_mpi(
    argv: Sequence[str],
    ranks: int,
    *,
    hosts: Sequence[str] | None = None,
    hostfile: Path | None = None,
    env: Mapping[str, str] | None = None,
    on_line: LineHandler | None = None,
    timeout_s: float | None = None,
    launcher: Launcher = "default",
    on_proxies: ProxyHandler | None = None,
    cancel: threading.Event | None = None,
) -> int:
    """Run ``argv`` as ``ranks`` MPI processes and wait for it.

    Args:
        argv: The program and its arguments, e.g. ``mpi4py_argv("tasks.simulation.bloch")``.
        ranks: Number of MPI processes, at least 1.
        hosts: Hosts to spread ranks over (``host`` or ``host:slots``); ``None`` with no
            ``hostfile`` runs on this machine, on loopback only.
        hostfile: A Hydra host file (``host:slots`` per line) instead of ``hosts``.
        env: Variables for the ranks, on top of this process's environment (with the
            manual launcher, on top of each host's own environment).
        on_line: Called with ``(rank, line)`` for each output line, ``rank`` ``None`` for
            the process manager's own lines; default: logged at INFO.
        timeout_s: Kill the job after this many seconds (``None``: no limit).
        launcher: How Hydra starts its proxies on other hosts: ``"default"`` (ssh when
            hosts are given), ``"ssh"``, or ``"manual"`` (``on_proxies`` runs them).
        on_proxies: With ``launcher="manual"``: called once with each host's
            ``hydra_pmi_proxy`` command line, in host order; it must start each on its host
            (the first host is this machine, where Hydra's control port is announced).
        cancel: Set it (from any thread) to stop the job; ``run_mpi`` then raises.

    Returns:
        The exit status, 0 (a failure raises).

    Raises:
        InputError: Bad arguments, or no ``mpiexec``.
        MpiError: A rank failed (its error lines are in the message).
        MpiTimeout: The job ran past ``timeout_s``; its process group was stopped.
    """
    command, proc_env, style = _command(argv, ranks, hosts, hostfile, env, launcher, on_proxies)
    handler = on_line or _log_line
    logger.debug("starting %s", shlex.join(command))
    proc = subprocess.Popen(  # noqa: S603 - the command is built from checked parts above
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=proc_env,
        start_new_session=True,  # its own process group, so a timeout can stop all of it
        preexec_fn=kill_with_parent,
    )
    record = current_record()  # the flow run's stop hook kills what is recorded there
    recorded = record.add(process_launch(proc.pid, "mpiexec")) if record is not None else None
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=read_lines, args=(stream, name, lines), daemon=True)
        for stream, name in ((proc.stdout, "out"), (proc.stderr, "err"))
    ]
    for reader in readers:
        reader.start()
    errors: dict[int | None, deque[str]] = {}
    proxies: list[list[str]] | None = [] if launcher == "manual" else None
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    open_streams = len(readers)
    try:
        while open_streams:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _timed_out(proc, argv, ranks, timeout_s, errors)
            if cancel is not None and cancel.is_set():
                raise _stopped(proc, f"{_describe(argv, ranks)} was cancelled", errors)
            try:
                stream, line = lines.get(timeout=min(remaining or POLL_S, POLL_S))
            except queue.Empty:
                continue
            if line is None:
                open_streams -= 1
                continue
            if proxies is not None and stream == "out":
                if line.startswith(_LAUNCH_PREFIX):
                    proxies.append(shlex.split(line.removeprefix(_LAUNCH_PREFIX)))
                    continue
                if line.strip() == _LAUNCH_END:
                    if on_proxies is not None:  # _command insists on it
                        on_proxies(proxies)
                    proxies = None
                    continue
            rank, text = parse_rank_line(line, style)
            if stream == "err" or (style == "gforker" and line.startswith(f"{rank}(err)>")):
                errors.setdefault(rank, deque(maxlen=ERROR_TAIL_LINES)).append(text)
            handler(rank, text)
        while (returncode := proc.poll()) is None:  # output closed; the exit is near
            if deadline is not None and time.monotonic() > deadline:
                raise _timed_out(proc, argv, ranks, timeout_s, errors)
            if cancel is not None and cancel.is_set():
                raise _stopped(proc, f"{_describe(argv, ranks)} was cancelled", errors)
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            _stop(proc)
        if record is not None and recorded is not None:
            record.done(recorded)
    if returncode != 0:
        raise MpiError(
            _failure_message(argv, ranks, returncode, errors), returncode, _lists(errors)
        )
    return returncode


def _command(
    argv: Sequence[str],
    ranks: int,
    hosts: Sequence[str] | None,
    hostfile: Path | None,
    env: Mapping[str, str] | None,
    launcher: str,
    on_proxies: ProxyHandler | None,
) -> tuple[list[str], dict[str, str], Literal["hydra", "gforker"]]:
    """The process manager's command line, its environment and its output labelling."""
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise InputError(f"ranks={ranks!r}; expected an integer >= 1")
    if not argv or not all(isinstance(arg, str) for arg in argv):
        raise InputError(f"argv={argv!r}; expected a program and its arguments as strings")
    if launcher not in LAUNCHERS:
        raise InputError(f"launcher={launcher!r}; expected one of {', '.join(LAUNCHERS)}")
    if hosts is not None and hostfile is not None:
        raise InputError("give hosts or hostfile, not both")
    if hosts is not None and not hosts:
        raise InputError("hosts=[]; expected at least one host, or None for this machine")
    if hostfile is not None and not Path(hostfile).is_file():
        raise InputError(f"hostfile {hostfile} does not exist; expected a Hydra host file")
    if launcher == "manual" and on_proxies is None:
        raise InputError("launcher='manual' needs on_proxies to start the proxies on each host")
    mpiexec = mpiexec_path()
    extra = dict(env or {})
    proc_env = {**os.environ, **RANK_ENV}
    if hosts is None and hostfile is None and launcher == "default":
        proc_env.update(LOOPBACK_ENV)
        proc_env.update(extra)
        gforker = mpiexec.with_name(GFORKER)
        if gforker.is_file():
            return [str(gforker), "-n", str(ranks), "-l", *argv], proc_env, "gforker"
        # Another MPICH without gforker: Hydra on loopback (its control port still listens
        # on every interface; Hydra has no option against that).
        logger.warning("%s is missing; Hydra's control port will listen on all interfaces", gforker)
        local = ["-hosts", "127.0.0.1", "-localhost", "127.0.0.1", "-launcher", "fork"]
        command = [str(mpiexec), "-n", str(ranks), "-prepend-rank", *local, *argv]
        return command, proc_env, "hydra"
    command = [str(mpiexec), "-n", str(ranks), "-prepend-rank"]
    if hosts is not None:
        command += ["-hosts", ",".join(hosts)]
    else:
        command += ["-f", str(hostfile)]
    if launcher != "default":
        command += ["-launcher", launcher]
    if launcher == "manual":
        # Each host's ranks keep that host's own environment (a Batch node's job id,
        # credentials endpoint, ...); only what the caller asks for is sent along.
        command += ["-localhost", _first_host(hosts, hostfile), "-genvnone"]
        for name, value in {**RANK_ENV, **extra}.items():
            command += ["-genv", name, value]
    else:
        proc_env.update(extra)
    return [*command, *argv], proc_env, "hydra"


def _first_host(hosts: Sequence[str] | None, hostfile: Path | None) -> str:
    entries = list(hosts) if hosts is not None else Path(hostfile or "").read_text().split()
    for entry in entries:
        if entry and not entry.startswith("#"):
            return entry.split(":", 1)[0]
    raise InputError(f"hostfile {hostfile} names no host; expected `host:slots` lines")


def _log_line(rank: int | None, line: str) -> None:
    logger.info("[%s] %s", "mpiexec" if rank is None else rank, line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the job's process group (Hydra passes it on to its proxies), then SIGKILL."""
    stop_group(proc, KILL_GRACE_S)


def _describe(argv: Sequence[str], ranks: int) -> str:
    return f"MPI job `{shlex.join(argv)}` on {ranks} ranks"


def _stopped(
    proc: subprocess.Popen[bytes],
    message: str,
    errors: Mapping[int | None, deque[str]],
    kind: type[MpiError] = MpiError,
) -> MpiError:
    """Stop the job and say why, with the error lines so far."""
    _stop(proc)
    return kind(_with_errors(message, errors), proc.returncode or 1, _lists(errors))


def _timed_out(
    proc: subprocess.Popen[bytes],
    argv: Sequence[str],
    ranks: int,
    timeout_s: float | None,
    errors: Mapping[int | None, deque[str]],
) -> MpiError:
    message = f"{_describe(argv, ranks)} timed out after {timeout_s:g} s"
    return _stopped(proc, message, errors, MpiTimeout)


def _failure_message(
    argv: Sequence[str], ranks: int, returncode: int, errors: Mapping[int | None, deque[str]]
) -> str:
    status = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    return _with_errors(f"{_describe(argv, ranks)} failed with {status}", errors)


def _with_errors(message: str, errors: Mapping[int | None, deque[str]]) -> str:
    ranked = sorted(rank for rank in errors if rank is not None)
    parts = [message]
    for rank in [*ranked, None]:
        if errors.get(rank):
            who = "mpiexec" if rank is None else f"rank {rank}"
            parts.append(f"{who}:\n" + "\n".join(f"  {line}" for line in errors[rank]))
    if len(parts) == 1:
        parts.append("no rank wrote to stderr")
    return "\n".join(parts)


def _lists(errors: Mapping[int | None, deque[str]]) -> dict[int | None, list[str]]:
    return {rank: list(lines) for rank, lines in errors.items()}
