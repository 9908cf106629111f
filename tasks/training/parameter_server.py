"""Asynchronous parameter server: one server process and N workers, over gloo point-to-point.

``python -m tasks.training.parameter_server server --config <uri> --port P --workers N``
holds the parameters, Adam and the cosine schedule; each of the N processes
``python -m tasks.training.parameter_server worker --config <uri> --server HOST:P`` trains its
``DistributedSampler`` share. A worker sends its gradient, the server applies it at once (no
waiting for the others) and answers with the fresh parameters, so a worker computes on
parameters at most N - 1 updates old.

Ranks need no launcher (ECS tasks have no index): the server hosts a ``TCPStore`` and each
worker takes the next rank from a counter in it; then all join one gloo process group
(server rank 0, workers 1..N). Messages (float64 headers, then float32 vectors):

- worker -> server, tag 1: ``[kind, worker step, loss, samples, data wait s, cycle s]``;
  kind ``HELLO`` (first message), ``GRAD`` (followed by the flat gradient, tag 2) or
  ``DONE`` (the worker ran its share).
- server -> worker, tag 3: ``[kind, start step, stop step, server step]``; kind ``GO``
  (followed by the flat parameters, tag 4) or ``STOP`` (the run reached its last update).

The server counts updates: ``checkpoint_every``, ``max_steps`` and ``log_every`` are in
updates, one epoch is ``N * steps_per_epoch`` updates. Only the server writes checkpoints; they
hold each worker's completed steps, so a resumed run starts each worker where it stopped.
Only parameters travel: buffers (e.g. BatchNorm statistics) stay the server's. Events are
those of ``tasks.training.ddp`` with ``strategy="parameter_server"``.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from tasks.errors import InputError, TransientError
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
# How long a worker keeps trying to reach the server (ECS may start it first), in seconds.
CONNECT_TIMEOUT_S = 600.0
# Exit status of a process stopped by its wall-clock limit.
WALL_CLOCK_EXIT = 3
# Store key of the worker-rank counter; process-group keys live under "ps/".
RANK_KEY = "ps/next-rank"

# Header kinds and message tags.
HELLO, GRAD, DONE = 0.0, 1.0, 2.0
GO, STOP = 0.0, 1.0
TAG_HEADER, TAG_GRAD, TAG_REPLY, TAG_PARAMS = 1, 2, 3, 4
WORKER_HEADER = 6  # kind, step, loss, samples, wait s, cycle s
SERVER_HEADER = 4  # kind, start step, stop step, server step


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
        if state is not None:
            saved = [int(s) for s in state.get("worker_steps", [])]
            if len(saved) != workers:
                raise InputError(
                    f"the newest checkpoint in {cfg.checkpoints} was written with "
                    f"{len(saved)} worker(s), this run has {workers}; their data shares differ: "
                    "resume with the same workers or choose another output"
                )
            self.worker_steps = saved

    def serve(self, host: str, port: int) -> dict[str, object]:
        """Host the store, wait for the workers, train to the end; returns the summary."""
        cfg = self.cfg
        try:
            store = dist.TCPStore(
                host, port, is_master=True, wait_for_workers=False, timeout=GROUP_TIMEOUT
            )
        except (RuntimeError, OSError) as exc:  # DistNetworkError: port taken, bad address
            raise InputError(
                f"the parameter server cannot listen on {host}:{port}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                "choose another --port or --host"
            ) from exc
        events.emit("rank", rank=0, pid=os.getpid(), device="cpu", role="server", port=port)
        dist.init_process_group(
            "gloo",
            store=dist.PrefixStore("ps", store),
            rank=0,
            world_size=self.workers + 1,
            timeout=GROUP_TIMEOUT,
        )
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
        dist.barrier()  # workers exit only now: none closes a link the server still reads
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
            "device": "cpu",
        }
        finish(self.setup, self.setup.model, self.history, summary)
        events.emit("done", **summary)
        dist.destroy_process_group()
        del store
        return summary

    def _loop(self, applied: list[int]) -> tuple[float, float]:
        """Answer workers until every one is done or stopped; returns (wait s, cycle s)."""
        header = torch.zeros(WORKER_HEADER, dtype=torch.float64)
        grad = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype)
        active = set(range(1, self.workers + 1))
        meter, interval = Meter(), _Interval()
        wait_total = cycle_total = 0.0
        while active:
            src = dist.recv(header, tag=TAG_HEADER)
            kind = float(header[0])
            if kind == DONE:
                active.discard(src)
                continue
            if kind == HELLO:
                if self.step >= self.total:
                    self._reply(src, STOP)
                    active.discard(src)
                else:
                    self._reply(src, GO, send_params=True)
                continue
            dist.recv(grad, src=src, tag=TAG_GRAD)
            if self.step >= self.total:  # max_steps reached while this one was computing
                self._reply(src, STOP)
                active.discard(src)
                continue
            _, _, loss, samples, wait_s, cycle_s = header.tolist()
            self._apply(grad)
            self.worker_steps[src - 1] += 1
            applied[src - 1] += 1
            meter.took(int(samples))
            meter.waited(wait_s)
            interval.add(loss, wait_s, cycle_s)
            wait_total, cycle_total = wait_total + wait_s, cycle_total + cycle_s
            self._reply(src, STOP if self.step >= self.total else GO, send_params=True)
            if self.step >= self.total:
                active.discard(src)
            self._report(meter, interval)
        return wait_total, cycle_total

    def _apply(self, grad: torch.Tensor) -> None:
        setup = self.setup
        setup.optimizer.zero_grad(set_to_none=True)
        set_grads(grad, self.params)
        setup.optimizer.step()
        setup.scheduler.step()
        self.step += 1

    def _reply(self, dst: int, kind: float, send_params: bool = False) -> None:
        start = self.worker_steps[dst - 1]
        reply = torch.tensor([kind, start, self.worker_total, self.step], dtype=torch.float64)
        dist.send(reply, dst=dst, tag=TAG_REPLY)
        if send_params and kind == GO:
            dist.send(flat_params(self.params), dst=dst, tag=TAG_PARAMS)

    def _report(self, meter: Meter, interval: _Interval) -> None:
        """Progress line, validation and checkpoint after an update, as DDP's rank 0 does."""
        cfg, setup, step, history = self.cfg, self.setup, self.step, self.history
        epoch = (step - 1) // self.updates_per_epoch
        last = step >= self.total
        if step % cfg.log_every == 0 or last:
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
        if step % self.updates_per_epoch == 0 or last:
            total, count = evaluate(setup.model, setup, 0, 1)
            val = total / count if count else float("nan")
            log_validation(history, step=step, epoch=epoch, val_loss=val)
        if step % cfg.checkpoint_every == 0 or last:
            state = {**setup.state(step, history), "worker_steps": list(self.worker_steps)}
            save_checkpoint(setup, step, state)


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


def connect(address: str, timeout_s: float) -> tuple[dist.TCPStore, int]:
    """Reach the server's store and take the next worker rank (1, 2, ...).

    Raises:
        TransientError: Nothing answered at ``address`` within ``timeout_s``.
    """
    host, port = parse_address(address)
    try:
        store = dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, OSError) as exc:  # DistNetworkError / DistStoreError
        raise TransientError(
            f"cannot reach the parameter server at {host}:{port} within {timeout_s:g} s: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; check that the "
            "server runs and that its port is open to this worker"
        ) from exc
    store.set_timeout(GROUP_TIMEOUT)
    return store, int(store.add(RANK_KEY, 1))


def work(cfg: TrainConfig, address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Train one worker's share until it is done or the server stops it; returns its steps."""
    torch.set_num_threads(cfg.threads_per_proc)
    select_device(cfg)  # no GPU where one is asked for: fail before connecting
    workers = cfg.processes
    setup = prepare(cfg, torch.device("cpu"), workers)  # checks the data before taking a rank
    store, rank = connect(address, timeout_s)
    if rank > workers:
        raise InputError(
            f"the parameter server at {address} has all its {workers} workers already; this "
            f"would be worker {rank}: start at most {workers} workers (nodes x procs_per_node)"
        )
    # Workers of one node spread over its GPUs by rank (they have no local rank).
    setup.place(select_device(cfg, (rank - 1) % max(1, torch.cuda.device_count())))
    device = setup.device
    params = _check_params(setup.model)
    dist.init_process_group(
        "gloo",
        store=dist.PrefixStore("ps", store),
        rank=rank,
        world_size=workers + 1,
        timeout=GROUP_TIMEOUT,
    )
    events.emit("rank", rank=rank, pid=os.getpid(), device=str(device), role="worker")
    reply = torch.zeros(SERVER_HEADER, dtype=torch.float64)
    vector = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype)
    header = torch.zeros(WORKER_HEADER, dtype=torch.float64)

    def receive() -> bool:
        dist.recv(reply, src=0, tag=TAG_REPLY)
        if float(reply[0]) == STOP:
            return False
        dist.recv(vector, src=0, tag=TAG_PARAMS)
        load_params(vector, params)
        return True

    header[0] = HELLO
    dist.send(header, dst=0, tag=TAG_HEADER)
    running = receive()
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
        grad = flat_grads(params)
        now = time.perf_counter()
        header.copy_(
            torch.tensor(
                [GRAD, step, loss.detach().item(), batch, wait_s, now - cycle_start],
                dtype=torch.float64,
            )
        )
        cycle_start = now
        dist.send(header, dst=0, tag=TAG_HEADER)
        dist.send(grad, dst=0, tag=TAG_GRAD)
        running = receive()
        if running:
            step += 1
    if running:  # ran its share; a stopped worker was already counted out by the server
        header.zero_()
        header[0], header[1] = DONE, step
        dist.send(header, dst=0, tag=TAG_HEADER)
    dist.barrier()
    dist.destroy_process_group()
    del store
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
    server.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104
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
        cfg = read_config(args.config)
        torch.set_num_threads(cfg.threads_per_proc)
        if args.role == "server":
            Server(cfg, args.workers).serve(args.host, args.port)
        else:
            work(cfg, args.server, args.connect_timeout)

    return events.exit_status(program)


if __name__ == "__main__":
    sys.exit(main())
