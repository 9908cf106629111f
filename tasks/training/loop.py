"""The parts of a training process that DDP and the parameter server share.

Device and process-group choice, model, data order that survives a restart, evaluation,
throughput accounting, checkpoint state and the outputs a finished run leaves. Plain
PyTorch: no Prefect here, these run inside ``torchrun`` ranks and ECS containers.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from tasks.compute.processes import kill_with_parent
from tasks.errors import InputError
from tasks.storage.objects import ObjectStore
from tasks.training import events
from tasks.training.checkpoint import (
    CheckpointInfo,
    CheckpointStore,
    capture_rng,
    check_model,
    restore_rng,
)
from tasks.training.config import TrainConfig
from tasks.training.data import ImageDataset, check_shards, load_manifest
from tasks.training.models import build_model, check_input_shape
from tasks.training.outputs import save_model, write_curves, write_metrics


def read_config(uri: str, store: ObjectStore | None = None) -> TrainConfig:
    """The run's config.json, as every training process reads it."""
    return TrainConfig.model_validate_json((store or ObjectStore()).read_bytes(uri))


def select_device(cfg: TrainConfig, local_index: int = 0) -> torch.device:
    """The device this process trains on: its own GPU under CUDA, else the CPU."""
    wants_cuda = cfg.device == "cuda" or cfg.backend == "nccl"
    if wants_cuda and not torch.cuda.is_available():
        asked = "backend='nccl'" if cfg.backend == "nccl" else "device='cuda'"
        raise InputError(f"{asked} but this machine has no CUDA GPU; use device='cpu' (gloo)")
    if wants_cuda or (cfg.device == "auto" and torch.cuda.is_available()):
        if local_index >= torch.cuda.device_count():
            raise InputError(
                f"process {local_index} on this node has no GPU of its own: "
                f"{torch.cuda.device_count()} GPU(s); lower procs_per_node"
            )
        return torch.device("cuda", local_index)
    return torch.device("cpu")


def process_group_backend(cfg: TrainConfig, device: torch.device) -> str:
    """Gloo on the CPU, NCCL on CUDA, unless the config names one."""
    if cfg.backend != "auto":
        return cfg.backend
    return "nccl" if device.type == "cuda" else "gloo"


def _end_with_rank(worker_id: int) -> None:
    """A loader worker ends when its rank does (a SIGKILLed rank leaves no orphans)."""
    kill_with_parent()


class ResumableSampler(DistributedSampler):
    """This rank's indices for every remaining step of the run, epoch after epoch.

    Each epoch is ``DistributedSampler``'s order for that epoch (it depends only on seed and
    epoch), cut to whole steps, so a run restarted at step k takes exactly the batches an
    uninterrupted run takes from step k. One iterator spans all epochs: the loader's workers
    never drain and refill at an epoch boundary (which stalled a GPU for whole steps).
    """

    def __init__(self, dataset: Any, replicas: int, rank: int, seed: int, batch: int) -> None:
        super().__init__(
            dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch = batch
        self.steps_per_epoch = self.num_samples // batch
        self.first_step, self.last_step = 0, 0

    def span(self, first_step: int, last_step: int) -> None:
        """Yield the samples of steps ``first_step`` up to (not including) ``last_step``."""
        self.first_step, self.last_step = first_step, last_step

    def __iter__(self) -> Iterator[int]:
        step = self.first_step
        while step < self.last_step:
            epoch, done = divmod(step, self.steps_per_epoch)
            self.set_epoch(epoch)
            take = min(self.steps_per_epoch - done, self.last_step - step)
            order = itertools.islice(super().__iter__(), done * self.batch, None)
            yield from itertools.islice(order, take * self.batch)
            step += take

    def __len__(self) -> int:
        return (self.last_step - self.first_step) * self.batch


@dataclass
class History:
    """What is plotted and kept in metrics.json; lives in each checkpoint."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    samples_per_s: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[Any]]:
        """Plain lists, for checkpoints and JSON."""
        return {name: list(values) for name, values in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, list[Any]]) -> History:
        """The inverse of ``as_dict``."""
        return cls(**{name: list(data.get(name, [])) for name in cls.__dataclass_fields__})


class Meter:
    """Samples/s and the share of step time spent waiting for data, since the last read."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new interval."""
        self.samples, self.wait_s = 0, 0.0
        self.start = time.perf_counter()

    def waited(self, seconds: float) -> None:
        """Record time spent waiting for the next batch."""
        self.wait_s += seconds

    def took(self, samples: int) -> None:
        """Record a step over ``samples`` samples."""
        self.samples += samples

    def exclude(self, seconds: float) -> None:
        """Leave time spent on other work (validation, checkpoints) out of the interval."""
        self.start += seconds

    def read(self) -> tuple[float, float]:
        """(samples/s, data-wait share) over the interval."""
        elapsed = time.perf_counter() - self.start
        if elapsed <= 0:
            return 0.0, 0.0
        return self.samples / elapsed, self.wait_s / elapsed


@dataclass
class Setup:
    """A training process's model, data and optimiser, built the same way everywhere."""

    cfg: TrainConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_set: ImageDataset
    val_set: ImageDataset
    checkpoints: CheckpointStore
    steps_per_epoch: int
    total_steps: int

    def place(self, device: torch.device) -> None:
        """Train on ``device`` from now on (before the first step: optimiser state is empty)."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
            # Shapes are fixed for the whole run: let cuDNN pick its fastest kernels once.
            torch.backends.cudnn.benchmark = True
        self.model.to(device)  # in place: the optimiser keeps the same parameters
        if self.cfg.channels_last and device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.device = device

    def loader(self, sampler: ResumableSampler) -> DataLoader:
        """Batches of this process's share; workers prefetch so compute never waits."""
        workers = self.cfg.loader_workers
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.per_process_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,  # no worker start-up wait each epoch
            prefetch_factor=4 if workers else None,
            worker_init_fn=_end_with_rank,
        )

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch on this process's device, in the model's memory format."""
        batch = batch.to(self.device, non_blocking=True)
        if self.cfg.channels_last and self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def autocast(self) -> Any:
        """bf16 autocast when asked for on CUDA; a no-op elsewhere."""
        enabled = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def state(self, step: int, history: History, model: nn.Module | None = None) -> dict[str, Any]:
        """Everything a restart needs (``model``: the unwrapped module, if wrapped)."""
        return {
            "step": step,
            "model": (model or self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(),
            "history": history.as_dict(),
        }

    def restore(self, state: dict[str, Any]) -> tuple[int, History]:
        """Load a checkpoint's state; returns its step and history."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        return int(state["step"]), History.from_dict(state["history"])


def plan_steps(cfg: TrainConfig, train_samples: int, replicas: int) -> tuple[int, int]:
    """Steps per epoch and in all, for ``replicas`` processes sharing ``train_samples``.

    Raises:
        InputError: More processes than samples, or a batch larger than the set allows.
    """
    check_shards(train_samples, replicas, f"the training split of {cfg.dataset}")
    steps_per_epoch = (train_samples // replicas) // cfg.per_process_batch
    if steps_per_epoch < 1:
        raise InputError(
            f"batch_size={cfg.batch_size} is larger than the {train_samples} training samples "
            f"of {cfg.dataset} allow ({replicas} process(es) x {cfg.per_process_batch}); "
            "lower batch_size"
        )
    total = steps_per_epoch * cfg.epochs
    return steps_per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def check_resumable(cfg: TrainConfig, found: CheckpointInfo | None) -> None:
    """Refuse to start over existing checkpoints, or to resume another model's.

    Raises:
        InputError: ``resume`` is off (starting over would overwrite them), or the newest
            checkpoint was written by another model.
    """
    if found is None:
        return
    if not cfg.resume:
        raise InputError(
            f"{cfg.checkpoints} already holds checkpoints up to step {found.step} and "
            "resume=False; pass resume=True to continue them or choose another output"
        )
    check_model(found, cfg.model_spec)


def prepare(cfg: TrainConfig, device: torch.device, replicas: int, tags: Any = None) -> Setup:
    """Check the data set against the model and build model, optimiser and scheduler.

    Args:
        cfg: The run.
        device: Where the model lives.
        replicas: Processes that share the training data (DDP ranks, or PS workers).
        tags: Tags for checkpoint objects on S3.
    """
    store = ObjectStore()
    manifest = load_manifest(cfg.dataset, store)
    check_input_shape(cfg.model, cfg.model_options, (manifest.channels, *manifest.shape))
    train_set = ImageDataset(cfg.dataset, "train", store, manifest)
    val_set = ImageDataset(cfg.dataset, "validation", store, manifest)
    steps_per_epoch, total = plan_steps(cfg, len(train_set), replicas)
    torch.manual_seed(cfg.seed)  # the same initial parameters in every process
    model = build_model(cfg.model, **cfg.model_options)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    checkpoints = CheckpointStore(cfg.checkpoints, store, tags=tags)
    setup = Setup(
        cfg, torch.device("cpu"), model, optimizer, scheduler, train_set, val_set, checkpoints,
        steps_per_epoch, total,
    )  # fmt: skip
    setup.place(device)
    return setup


def log_step(
    setup: Setup,
    history: History,
    *,
    step: int,
    epoch: int,
    loss: float,
    samples_per_s: float,
    per_process: float,
    data_wait: float,
) -> None:
    """Record a progress point in the history and report it as a ``step`` event."""
    history.step.append(step)
    history.loss.append(loss)
    history.samples_per_s.append(samples_per_s)
    events.emit(
        "step",
        step=step,
        epoch=epoch,
        loss=loss,
        lr=setup.scheduler.get_last_lr()[0],
        samples_per_s=samples_per_s,
        samples_per_s_per_process=per_process,
        data_wait=data_wait,
    )


def log_validation(history: History, *, step: int, epoch: int, val_loss: float) -> None:
    """Record a validation loss and report it as a ``validation`` event."""
    history.val_step.append(step)
    history.val_loss.append(val_loss)
    events.emit("validation", step=step, epoch=epoch, val_loss=val_loss)


def save_checkpoint(setup: Setup, step: int, state: dict[str, Any]) -> None:
    """Write a checkpoint and report it as a ``checkpoint`` event."""
    uri = setup.checkpoints.save(step, state, setup.cfg.model_spec)
    events.emit("checkpoint", step=step, uri=uri)


def resume_state(setup: Setup) -> dict[str, Any] | None:
    """The newest complete checkpoint's state, or ``None`` to start afresh.

    Raises:
        InputError: As ``check_resumable``.
    """
    found = setup.checkpoints.latest()
    check_resumable(setup.cfg, found)
    return None if found is None else setup.checkpoints.load(found, setup.cfg.model_spec)


def evaluate(model: nn.Module, setup: Setup, shard: int = 0, shards: int = 1) -> tuple[float, int]:
    """Sum of per-sample MSE and sample count over this shard of the validation split."""
    model.eval()
    total, count = 0.0, 0
    indices = range(shard, len(setup.val_set), shards)
    with torch.no_grad(), setup.autocast():
        for start in range(0, len(indices), setup.cfg.per_process_batch):
            chosen = indices[start : start + setup.cfg.per_process_batch]
            pairs = [setup.val_set[i] for i in chosen]
            inputs = setup.to_device(torch.stack([p[0] for p in pairs]))
            targets = setup.to_device(torch.stack([p[1] for p in pairs]))
            error = (model(inputs).float() - targets.float()) ** 2
            total += float(error.mean(dim=(1, 2, 3)).sum())
            count += len(pairs)
    model.train()
    return total, count


def finish(
    setup: Setup,
    model: nn.Module,
    history: History,
    summary: dict[str, Any],
    tags: Any = None,
) -> dict[str, str]:
    """Write the final model, metrics.json and the loss curves; returns name -> URI."""
    cfg = setup.cfg
    store = setup.checkpoints.store
    example = torch.zeros(1, setup.train_set.manifest.channels, *setup.train_set.manifest.shape)
    # A run resumed from this output's checkpoints carries that training on: it replaces them.
    continued = bool(summary.get("resumed_from"))
    written = save_model(
        model, cfg.model_spec, cfg.output, store, tags, example=example, continued=continued
    )
    metrics = {**summary, "history": history.as_dict()}
    written["metrics"] = write_metrics(cfg.output, metrics, store, tags, continued)
    title = f"{cfg.model} ({cfg.strategy}, {cfg.processes} process(es))"
    written["curves"] = write_curves(cfg.output, history.as_dict(), title, store, tags, continued)
    events.emit("outputs", **written)
    return written
