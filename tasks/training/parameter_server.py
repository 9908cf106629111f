"""Asynchronous parameter server: one server process and N workers, over gloo point-to-point.

``python -m tasks.training.parameter_server server --config <uri> --port P --workers N``
holds the parameters, Adam and the cosine schedule; each of the N processes
``python -m tasks.training.parameter_server worker --config <uri> --server HOST:P`` trains its
``DistributedSampler`` share. A worker sends its gradient, the server applies it at once (no
waiting for the others) and answers with the fresh parameters, so a worker computes on
parameters at most N - 1 updates old.

Ranks need no launcher (ECS tasks have no index): the server listens on one address
(``--host``: 127.0.0.1 here, the task's private address on ECS; never every interface) and
numbers the workers 1..N as they join. Every connection first proves it holds the run's token
(``SCIFLOW_RUN_TOKEN``, ``tasks.compute.channel``): a peer without it never reaches the
exchange, so it can neither take a worker's place nor push a gradient. Once N workers joined,
a later worker with the token is told the server is full. Messages are bytes, never pickles
(float64 headers, then the flat vector in the parameters' dtype):

- worker -> server: ``[kind, worker step, loss, samples, data wait s, cycle s]``; kind
  ``HELLO`` (first message), ``GRAD`` (followed by the flat gradient) or ``DONE`` (the worker
  ran its share).
- server -> worker: ``[kind, start step, stop step, server step]``; kind ``JOINED`` (start
  step: the worker's rank) or ``FULL`` first, then ``GO`` (followed by the flat parameters)
  or ``STOP`` (the run reached its last update).

A gradient or loss that is not finite is refused: not applied, counted (``refused`` events,
``refused_gradients`` in the summary and metrics.json), and answered with the unchanged
parameters; the worker goes on with its next batch.

The server counts updates: ``checkpoint_every``, ``max_steps`` and ``log_every`` are in
updates, one epoch is ``N * steps_per_epoch`` updates. Only the server writes checkpoints; they
hold each worker's completed steps, so a resumed run starts each worker where it stopped.
Only parameters travel: buffers (e.g. BatchNorm statistics) stay the server's. Events are
those of ``tasks.training.ddp`` with ``strategy="parameter_server"``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection, wait

import torch
from torch import nn

from tasks.compute import channel
from tasks.compute.node_context import own_ip
from tasks.errors import InputError, SciflowError, TransientError
from tasks.training import events
from tasks.training.config import TrainConfig
from tasks.training.launch import DEFAULT_WALL_TIME_S, SERVER_PORT
from tasks.training.loop import (
    History,
    Meter,
    ResumableSampler,
    Setup,
    evaluate,
    finish,
    log_step,
    log_validation,
    prepare,
    read_config,
    resume_state,
    save_checkpoint,
    select_device,
)

# How long processes wait for each other at start-up and for each message before failing.
GROUP_TIMEOUT = timedelta(minutes=10)
# Seconds between the checks of the thread that tells late workers the server is full.
FULL_POLL_S = 0.5
# How long a worker keeps trying to reach the server (ECS may start it first), in seconds.
CONNECT_TIMEOUT_S = 600.0
# Exit status of a process stopped by its wall-clock limit.
WALL_CLOCK_EXIT = 3

# Header kinds.
HELLO, GRAD, DONE = 0.0, 1.0, 2.0
GO, STOP, JOINED, FULL = 0.0, 1.0, 2.0, 3.0
WORKER_HEADER = 6  # kind, step, loss, samples, wait s, cycle s
SERVER_HEADER = 4  # kind, start step, stop step, server step


# --- messages ----------------------------------------------------------------------------------


def send(conn: Connection, header: Sequence[float], vector: torch.Tensor | None = None) -> None:
    """One message: a float64 header, then the raw bytes of ``vector`` if given."""
    data = torch.tensor(list(header), dtype=torch.float64).numpy().tobytes()
    if vector is not None:
        data += vector.contiguous().view(torch.uint8).numpy().tobytes()
    conn.send_bytes(data)


def receive(
    conn: Connection, header_len: int, like: torch.Tensor | None = None
) -> tuple[list[float], torch.Tensor | None]:
    """One message of ``send``: the header, and a vector shaped and typed as ``like`` if it has one.

    Raises:
        EOFError: The peer closed the connection.
        SciflowError: The message has neither length (a header, or a header and a vector).
    """
    head = 8 * header_len
    body = 0 if like is None else like.numel() * like.element_size()
    data = conn.recv_bytes(head + body)
    header = torch.frombuffer(bytearray(data[:head]), dtype=torch.float64).tolist()
    if len(data) == head:
        return header, None
    if like is None or len(data) != head + body:
        raise SciflowError(f"a message of {len(data)} bytes; expected {head} or {head + body}")
    return header, torch.frombuffer(bytearray(data[head:]), dtype=like.dtype)


# --- flat vectors ------------------------------------------------------------------------------


def _check_params(model: nn.Module) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1:
        raise InputError(f"the parameter server needs one parameter dtype; the model has {dtypes}")
    return params


def flat_params(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """The parameters as one contiguous CPU vector."""
    return torch.cat([p.detach().reshape(-1) for p in params]).cpu()


def flat_grads(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """The gradients as one contiguous CPU vector (zeros for parameters without one)."""
    parts = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1) for p in params
    ]
    return torch.cat(parts).cpu()


def _unflatten(vector: torch.Tensor, params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    views, offset = [], 0
    for p in params:
        views.append(vector[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return views


def load_params(vector: torch.Tensor, params: Sequence[nn.Parameter]) -> None:
    """Copy a flat vector into the parameters (on their device)."""
    with torch.no_grad():
        for p, view in zip(params, _unflatten(vector, params), strict=True):
            p.copy_(view)


def set_grads(vector: torch.Tensor, params: Sequence[nn.Parameter]) -> None:
    """Make a flat vector the parameters' gradients."""
    for p, view in zip(params, _unflatten(vector, params), strict=True):
        p.grad = view.to(p.device)


# --- server ------------------------------------------------------------------------------------


@dataclass
class _Interval:
    """What the workers reported since the last progress line."""

    losses: list[float] = field(default_factory=list)
    wait_s: float = 0.0
    cycle_s: float = 0.0

    def add(self, loss: float, wait_s: float, cycle_s: float) -> None:
        """One applied gradient's numbers."""
        self.losses.append(loss)
        self.wait_s += wait_s
        self.cycle_s += cycle_s

    def reset(self) -> None:
        """Start a new interval."""
        self.losses, self.wait_s, self.cycle_s = [], 0.0, 0.0


class Server:
    """Rank 0: applies each worker's gradient as it arrives and answers with the parameters.

    Args:
        cfg: The run.
        workers: Worker processes (must equal ``cfg.processes``).
    """

    def __init__(self, cfg: TrainConfig, workers: int) -> None:
        if workers != cfg.processes:
            raise InputError(
                f"--workers={workers} but the config splits batch_size={cfg.batch_size} over "
                f"{cfg.processes} processes ({cfg.nodes} node(s) x {cfg.procs_per_node}); "
                "pass --workers equal to nodes x procs_per_node"
            )
        self.cfg, self.workers = cfg, workers
        self.setup: Setup = prepare(cfg, torch.device("cpu"), workers)
        setup = self.setup
        self.worker_total = setup.steps_per_epoch * cfg.epochs  # steps of each worker
        total = workers * self.worker_total
        self.total = min(total, cfg.max_steps) if cfg.max_steps else total
        self.updates_per_epoch = workers * setup.steps_per_epoch
        # The schedule spans every update of every worker, not one worker's steps.
        setup.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            setup.optimizer, T_max=max(self.total, 1)
        )
        self.params = _check_params(setup.model)
        state = resume_state(setup)
        self.resumed = state is not None
        self.step, self.history = setup.restore(state) if state is not None else (0, History())
        self.worker_steps = [0] * workers
        self.refused = 0  # gradients refused for not being finite
        self.conns: dict[int, Connection] = {}  # worker rank -> its connection
        if state is not None:
            saved = [int(s) for s in state.get("worker_steps", [])]
            if len(saved) != workers:
                raise InputError(
                    f"the newest checkpoint in {cfg.checkpoints} was written with "
                    f"{len(saved)} worker(s), this run has {workers}; their data shares differ: "
                    "resume with the same workers or choose another output"
                )
            self.worker_steps = saved

    def serve(self, host: str, port: int, key: bytes) -> dict[str, object]:
        """Listen on ``host:port``, take the workers that prove ``key``, train to the end.

        Returns the summary.

        Raises:
            InputError: ``host`` is a wildcard, or the address cannot be bound.
            TransientError: Not every worker joined within ``GROUP_TIMEOUT``.
        """
        cfg = self.cfg
        try:
            listener = channel.Listener(host, port, key, parameter="--host")
        except OSError as exc:  # port taken, address not this host's
            raise InputError(
                f"the parameter server cannot listen on {host}:{port}: {exc.strerror or exc}; "
                "choose another --port or --host"
            ) from exc
        bound, port = listener.address
        events.emit(
            "rank", rank=0, pid=os.getpid(), device="cpu", role="server", address=bound, port=port
        )
        full = threading.Event()
        try:
            self._gather(listener)
            threading.Thread(target=self._refuse_late, args=(listener, full), daemon=True).start()
            events.emit(
                "start",
                step=self.step,
                total_steps=self.total,
                steps_per_epoch=self.updates_per_epoch,
                world=self.workers,
                device="cpu",
                resumed=self.resumed,
            )
            first_step, started = self.step, time.perf_counter()
            applied = [0] * self.workers  # this run's updates per worker
            wait_total, cycle_total = self._loop(applied)
            seconds = time.perf_counter() - started
        finally:
            full.set()
            for conn in self.conns.values():
                conn.close()
            listener.close()
        per_worker = [n * cfg.per_process_batch / seconds if seconds > 0 else 0.0 for n in applied]
        summary: dict[str, object] = {
            "strategy": "parameter_server",
            "world_size": self.workers,
            "steps": self.step,
            "resumed_from": first_step,
            "seconds": seconds,
            "final_loss": self.history.loss[-1] if self.history.loss else float("nan"),
            "val_loss": self.history.val_loss[-1] if self.history.val_loss else float("nan"),
            "samples_per_s": sum(per_worker),
            "samples_per_s_per_process": per_worker,
            "data_wait_fraction": wait_total / cycle_total if cycle_total else 0.0,
            "refused_gradients": self.refused,
            "refused_connections": listener.refused,
            "device": "cpu",
        }
        finish(self.setup, self.setup.model, self.history, summary)
        events.emit("done", **summary)
        return summary

    def _gather(self, listener: channel.Listener) -> None:
        """Accept the workers that prove the token, numbering them 1..N."""
        deadline = time.monotonic() + GROUP_TIMEOUT.total_seconds()
        while len(self.conns) < self.workers:
            conn = listener.accept(max(deadline - time.monotonic(), 0.0))
            if conn is None:
                raise TransientError(
                    f"{len(self.conns)} of {self.workers} workers joined the parameter server "
                    f"within {GROUP_TIMEOUT.total_seconds():g} s; check that they started and "
                    "were given this run's token"
                )
            rank = len(self.conns) + 1
            self.conns[rank] = conn
            send(conn, [JOINED, rank, self.workers, self.step])

    def _refuse_late(self, listener: channel.Listener, full: threading.Event) -> None:
        """Tell a worker with the token that joins after all N that the server is full."""
        while not full.is_set():
            try:
                conn = listener.accept(FULL_POLL_S)
            except (OSError, ValueError):  # closed at the end (its descriptor is -1)
                return
            if conn is not None:
                try:
                    send(conn, [FULL, 0, self.workers, self.step])
                finally:
                    conn.close()

    def _loop(self, applied: list[int]) -> tuple[float, float]:
        """Answer workers until every one is done or stopped; returns (wait s, cycle s)."""
        like = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype)
        active = dict(self.conns)
        ranks = {id(conn): rank for rank, conn in active.items()}
        meter, interval = Meter(), _Interval()
        wait_total = cycle_total = 0.0
        self.validated_at = self.saved_at = -1
        while active:
            for conn in wait(list(active.values())):
                src = ranks[id(conn)]
                try:
                    header, grad = receive(conn, WORKER_HEADER, like)  # type: ignore[arg-type]
                except EOFError:
                    raise SciflowError(
                        f"worker {src} closed its connection before it was done"
                    ) from None
                kind = header[0]
                if kind == DONE:
                    del active[src]
                    continue
                if kind == HELLO:
                    if self.step >= self.total:
                        self._reply(src, STOP)
                        del active[src]
                    else:
                        self._reply(src, GO)
                    continue
                if kind != GRAD or grad is None:
                    raise SciflowError(f"worker {src} sent kind {kind} without a gradient")
                if self.step >= self.total:  # max_steps reached while this one was computing
                    self._reply(src, STOP)
                    del active[src]
                    continue
                _, step, loss, samples, wait_s, cycle_s = header
                self.worker_steps[src - 1] += 1  # its batch is spent either way
                if not (math.isfinite(loss) and bool(torch.isfinite(grad).all())):
                    self.refused += 1
                    events.emit(
                        "refused",
                        worker=src,
                        worker_step=int(step),
                        step=self.step,
                        refused_gradients=self.refused,
                        reason="gradient or loss not finite",
                    )
                    self._reply(src, GO)
                    continue
                self._apply(grad)
                applied[src - 1] += 1
                meter.took(int(samples))
                meter.waited(wait_s)
                interval.add(loss, wait_s, cycle_s)
                wait_total, cycle_total = wait_total + wait_s, cycle_total + cycle_s
                self._reply(src, STOP if self.step >= self.total else GO)
                if self.step >= self.total:
                    del active[src]
                self._report(meter, interval)
        if self.step < self.total:
            # Refused gradients left the run short of its last update: close it here.
            self._report(meter, interval, final=True)
        return wait_total, cycle_total

    def _apply(self, grad: torch.Tensor) -> None:
        setup = self.setup
        setup.optimizer.zero_grad(set_to_none=True)
        set_grads(grad, self.params)
        setup.optimizer.step()
        setup.scheduler.step()
        self.step += 1

    def _reply(self, dst: int, kind: float) -> None:
        header = [kind, self.worker_steps[dst - 1], self.worker_total, self.step]
        send(self.conns[dst], header, flat_params(self.params) if kind == GO else None)

    def _report(self, meter: Meter, interval: _Interval, final: bool = False) -> None:
        """Progress line, validation and checkpoint after an update, as DDP's rank 0 does.

        ``final``: the workers are done short of the last update (refused gradients).
        """
        cfg, setup, step, history = self.cfg, self.setup, self.step, self.history
        epoch = max(step - 1, 0) // self.updates_per_epoch
        last = step >= self.total or final
        if (step % cfg.log_every == 0 or last) and interval.losses:
            rate, _ = meter.read()
            loss = sum(interval.losses) / len(interval.losses)
            wait = interval.wait_s / interval.cycle_s if interval.cycle_s > 0 else 0.0
            log_step(
                setup,
                history,
                step=step,
                epoch=epoch,
                loss=loss,
                samples_per_s=rate,
                per_process=rate / self.workers,
                data_wait=wait,
            )
            meter.reset()
            interval.reset()
        # A final report may follow one at the same step: validate and save once per step.
        if (step % self.updates_per_epoch == 0 or last) and self.validated_at != step:
            total, count = evaluate(setup.model, setup, 0, 1)
            val = total / count if count else float("nan")
            log_validation(history, step=step, epoch=epoch, val_loss=val)
            self.validated_at = step
        if (step % cfg.checkpoint_every == 0 or last) and self.saved_at != step:
            state = {**setup.state(step, history), "worker_steps": list(self.worker_steps)}
            save_checkpoint(setup, step, state)
            self.saved_at = step


# --- worker ------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` as (host, port).

    Raises:
        InputError: Not ``host:port`` with a port in 1..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--server {address!r}; expected HOST:PORT, e.g. 10.0.0.5:29500")
    return host.strip("[]"), int(port)


def connect(address: str, key: bytes, timeout_s: float) -> tuple[Connection, int]:
    """Join the server at ``address`` with the run's ``key``; returns the connection and rank.

    Raises:
        TransientError: Nothing answered at ``address`` within ``timeout_s``.
        InputError: The server refused this worker's token, or has all its workers already.
    """
    host, port = parse_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = channel.connect(host, port, key, timeout_s=max(deadline - time.monotonic(), 1))
            break
        except channel.AuthenticationFailed as exc:
            raise InputError(
                f"the parameter server at {address} refused this worker: {exc}; give every "
                f"process the same run's {channel.TOKEN_VARIABLE}"
            ) from exc
        except OSError as exc:  # not up yet (ECS may start a worker first)
            if time.monotonic() >= deadline:
                raise TransientError(
                    f"cannot reach the parameter server at {host}:{port} within {timeout_s:g} "
                    f"s: {exc.strerror or exc}; check that the server runs and that its port "
                    "is open to this worker"
                ) from exc
            time.sleep(0.5)
    (kind, rank, workers, _), _ = receive(conn, SERVER_HEADER)
    if kind == FULL:
        conn.close()
        raise InputError(
            f"the parameter server at {address} has all its {int(workers)} workers already: "
            f"start at most {int(workers)} workers (nodes x procs_per_node)"
        )
    return conn, int(rank)


def work(cfg: TrainConfig, address: str, key: bytes, timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Train one worker's share until it is done or the server stops it; returns its steps."""
    torch.set_num_threads(cfg.threads_per_proc)
    select_device(cfg)  # no GPU where one is asked for: fail before connecting
    workers = cfg.processes
    setup = prepare(cfg, torch.device("cpu"), workers)  # checks the data before joining
    conn, rank = connect(address, key, timeout_s)
    # Workers of one node spread over its GPUs by rank (they have no local rank).
    setup.place(select_device(cfg, (rank - 1) % max(1, torch.cuda.device_count())))
    device = setup.device
    params = _check_params(setup.model)
    events.emit("rank", rank=rank, pid=os.getpid(), device=str(device), role="worker")
    like = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype)
    reply: list[float] = []

    def answer() -> bool:
        nonlocal reply
        try:
            reply, vector = receive(conn, SERVER_HEADER, like)
        except EOFError:
            raise SciflowError("the parameter server closed the connection") from None
        if reply[0] == STOP:
            return False
        if vector is None:
            raise SciflowError(f"the parameter server answered kind {reply[0]} without parameters")
        load_params(vector, params)
        return True

    send(conn, [HELLO, 0, 0, 0, 0, 0])
    running = answer()
    step, stop = int(reply[1]), int(reply[2])
    batch = cfg.per_process_batch
    sampler = ResumableSampler(setup.train_set, workers, rank - 1, cfg.seed, batch)
    sampler.span(step, stop)
    batches = iter(setup.loader(sampler))
    cycle_start = time.perf_counter()
    while running and step < stop:
        waiting = time.perf_counter()
        inputs, targets = next(batches)
        wait_s = time.perf_counter() - waiting
        inputs, targets = setup.to_device(inputs), setup.to_device(targets)
        with setup.autocast():
            loss = torch.nn.functional.mse_loss(setup.model(inputs).float(), targets.float())
        setup.model.zero_grad(set_to_none=True)
        loss.backward()
        now = time.perf_counter()
        header = [GRAD, step, loss.detach().item(), batch, wait_s, now - cycle_start]
        cycle_start = now
        send(conn, header, flat_grads(params))
        running = answer()
        if running:
            step += 1
    if running:  # ran its share; a stopped worker was already counted out by the server
        send(conn, [DONE, step, 0, 0, 0, 0])
    conn.close()
    return step


# --- wall clock ---------------------------------------------------------------------------------


def exit_after(seconds: float, role: str) -> threading.Timer:
    """End this process after ``seconds``, whatever it is doing; returns the running timer.

    A flow run killed with SIGKILL runs no hook: on ECS nothing else would stop the server,
    which would wait for its workers (and bill) for ever. The timer's thread ends the
    process with ``os._exit`` (exit status ``WALL_CLOCK_EXIT``) after one ``error`` event,
    also while the main thread is blocked in a gloo receive.
    """

    def expire() -> None:
        events.emit(
            "error",
            message=f"the parameter-server {role} ran past its wall-clock limit of "
            f"{seconds:g} s and exits",
            kind="WallClockExceeded",
        )
        os._exit(WALL_CLOCK_EXIT)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


# --- entry point -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = parser.add_subparsers(dest="role", required=True)
    server = roles.add_parser("server", help="hold the parameters and apply the gradients")
    server.add_argument("--config", required=True, help="URI of the run's config.json")
    server.add_argument("--port", type=int, default=SERVER_PORT, help="port workers connect to")
    server.add_argument("--workers", type=int, required=True, help="worker processes (N)")
    server.add_argument(
        "--host",
        default=None,
        help="the one address to listen on (default: this host's private address, from its name)",
    )
    worker = roles.add_parser("worker", help="compute gradients of one share of the data")
    worker.add_argument("--config", required=True, help="URI of the run's config.json")
    worker.add_argument("--server", required=True, help="HOST:PORT of the server")
    worker.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT_S,
        help=f"seconds to keep trying to reach the server (default {CONNECT_TIMEOUT_S:g})",
    )
    for role in (server, worker):
        role.add_argument(
            "--wall-time-s",
            type=float,
            default=DEFAULT_WALL_TIME_S,
            help=f"exit after this many seconds, whatever happens (default {DEFAULT_WALL_TIME_S})",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the server or of one worker."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.wall_time_s > 0:
        parser.error(f"--wall-time-s={args.wall_time_s}; expected seconds > 0")
    exit_after(args.wall_time_s, args.role)

    def program() -> None:
        key = channel.read_token()  # before anything is read: no token, no run
        cfg = read_config(args.config)
        torch.set_num_threads(cfg.threads_per_proc)
        if args.role == "server":
            Server(cfg, args.workers).serve(args.host or own_ip(), args.port, key)
        else:
            work(cfg, args.server, key, args.connect_timeout)

    return events.exit_status(program)


if __name__ == "__main__":
    sys.exit(main())
