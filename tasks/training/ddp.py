"""One DDP rank: ``torchrun ... -m tasks.training.ddp --config <uri>``.

Every rank reads the run's config.json, resumes from the newest complete checkpoint, and
trains its ``DistributedSampler`` share; gradients are averaged over the ranks each step,
so N ranks with global batch B take the same steps as one process with batch B. Rank 0
writes checkpoints every ``checkpoint_every`` steps, reports progress as event lines
(``tasks.training.events``) and writes the final model, metrics and curves.

Not authenticated: torchrun's rendezvous store and gloo/NCCL carry no token, and torch's
``TCPStore`` master listens on every interface whatever address it is given (torch 2.13).
The store is dialled at loopback on one node and at the main node's private address on
Batch; only the network keeps strangers out (here: this machine's users; on AWS: the job's
security group, which must admit only the job's own nodes).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tasks.compute.node_context import NodeContext, launcher_env
from tasks.training import events
from tasks.training.config import TrainConfig
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
    process_group_backend,
    read_config,
    resume_state,
    save_checkpoint,
    select_device,
)

# How long ranks wait for each other at start-up and in collectives before failing.
GROUP_TIMEOUT = timedelta(minutes=10)


def _mean(values: Sequence[float], device: torch.device) -> list[float]:
    """Means over the ranks of a few numbers, in one all-reduce."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def _validate(model: torch.nn.Module, setup: Setup, rank: int, world: int) -> float:
    total, count = evaluate(model, setup, rank, world)
    sums = torch.tensor([total, count], dtype=torch.float64, device=setup.device)
    dist.all_reduce(sums)
    return float(sums[0] / sums[1]) if sums[1] else float("nan")


def _attempt_store(node: NodeContext) -> dist.Store:
    """Torchrun's store, under a prefix of its own for each restart of the job.

    After ``--max-restarts`` restarts the ranks, the agent's store still holds the dead
    attempt's gloo addresses; without a fresh prefix the new ranks dial those and fail.
    """
    env = launcher_env()
    store = dist.TCPStore(
        env.get("MASTER_ADDR", node.main_addr),
        int(env["MASTER_PORT"]),
        world_size=node.count,
        is_master=False,
        timeout=GROUP_TIMEOUT,
    )
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"sciflow/attempt-{attempt}", store)


def train(cfg: TrainConfig, node: NodeContext) -> dict[str, float]:
    """Train this rank to the end of the run; returns rank 0's summary numbers."""
    rank, world = node.index, node.count
    torch.set_num_threads(cfg.threads_per_proc)
    device = select_device(cfg, node.local_index)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        process_group_backend(cfg, device),
        store=_attempt_store(node),
        rank=rank,
        world_size=world,
        timeout=GROUP_TIMEOUT,
    )
    events.emit("rank", rank=rank, pid=os.getpid(), device=str(device))
    main = rank == 0

    setup = prepare(cfg, device, world)
    state = resume_state(setup)
    step, history = setup.restore(state) if state is not None else (0, History())
    model = DistributedDataParallel(
        setup.model, device_ids=[device.index] if device.type == "cuda" else None
    )
    sampler = ResumableSampler(setup.train_set, world, rank, cfg.seed, cfg.per_process_batch)
    sampler.span(step, setup.total_steps)
    if main:
        events.emit(
            "start",
            step=step,
            total_steps=setup.total_steps,
            steps_per_epoch=setup.steps_per_epoch,
            world=world,
            device=str(device),
            resumed=state is not None,
        )

    batches = iter(setup.loader(sampler))
    started, meter, first_step = time.perf_counter(), Meter(), step
    # Summed on the device: a .item() per step would stall the GPU queue.
    loss_sum, loss_count = torch.zeros((), device=device), 0
    wait_total, time_total = 0.0, 0.0
    while step < setup.total_steps:
        epoch, done_in_epoch = divmod(step, setup.steps_per_epoch)
        while step < setup.total_steps and done_in_epoch < setup.steps_per_epoch:
            waiting = time.perf_counter()
            inputs, targets = next(batches)
            meter.waited(time.perf_counter() - waiting)
            inputs, targets = setup.to_device(inputs), setup.to_device(targets)
            with setup.autocast():
                loss = torch.nn.functional.mse_loss(model(inputs).float(), targets.float())
            setup.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            setup.optimizer.step()
            setup.scheduler.step()
            step += 1
            done_in_epoch += 1
            meter.took(cfg.per_process_batch)
            loss_sum, loss_count = loss_sum + loss.detach(), loss_count + 1

            if step % cfg.log_every == 0 or step == setup.total_steps:
                # Reading the loss waits for the device: the interval then holds the GPU's
                # time for its steps, not only the host's (which only queues them).
                interval_loss = float(loss_sum) / loss_count
                rate, wait = meter.read()
                wait_total += meter.wait_s
                time_total += time.perf_counter() - meter.start
                mean_loss, mean_wait = _mean([interval_loss, wait], device)
                total_rate = _mean([rate], device)[0] * world
                loss_sum, loss_count = torch.zeros((), device=device), 0
                meter.reset()
                if main:
                    log_step(
                        setup,
                        history,
                        step=step,
                        epoch=epoch,
                        loss=mean_loss,
                        samples_per_s=total_rate,
                        per_process=rate,
                        data_wait=mean_wait,
                    )
            validating = done_in_epoch == setup.steps_per_epoch or step == setup.total_steps
            saving = main and (step % cfg.checkpoint_every == 0 or step == setup.total_steps)
            if (validating or saving) and device.type == "cuda":
                torch.cuda.synchronize()  # the steps still queued belong to the interval
            other_work = time.perf_counter()
            if validating:
                val = _validate(model.module, setup, rank, world)
                if main:
                    log_validation(history, step=step, epoch=epoch, val_loss=val)
            if saving:
                save_checkpoint(setup, step, setup.state(step, history, model.module))
            meter.exclude(time.perf_counter() - other_work)

    seconds = time.perf_counter() - started
    steps_run = step - first_step
    per_process = steps_run * cfg.per_process_batch / seconds if seconds > 0 else 0.0
    rates = torch.tensor([per_process], dtype=torch.float64, device=device)
    everyone = [torch.zeros_like(rates) for _ in range(world)]
    dist.all_gather(everyone, rates)
    summary: dict[str, float] = {}
    if main:
        per_rank = [float(r) for r in everyone]
        summary = {
            "strategy": "ddp",
            "world_size": world,
            "steps": step,
            "resumed_from": first_step,
            "seconds": seconds,
            "final_loss": history.loss[-1] if history.loss else float("nan"),
            "val_loss": history.val_loss[-1] if history.val_loss else float("nan"),
            "samples_per_s": sum(per_rank),
            "samples_per_s_per_process": per_rank,
            "data_wait_fraction": wait_total / time_total if time_total else 0.0,
            "device": str(device),
        }
        finish(setup, model.module, history, summary)
        events.emit("done", **summary)
    dist.barrier()
    dist.destroy_process_group()
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one rank."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="URI of the run's config.json")
    args = parser.parse_args(argv)
    return events.exit_status(lambda: train(read_config(args.config), NodeContext.from_process()))


if __name__ == "__main__":
    sys.exit(main())
