"""Training speed: DDP scaling 1 -> 2 processes, data-loading stalls, and CUDA precision modes.

Workload (issue "Speed (benchmarks/training.py; JSON; ratios in one run)"): our DDP rank
program (``tasks.training.ddp`` under ``torchrun``, started with ``torchrun_argv`` and
followed with ``run_processes``) on a synthetic set written by ``write_synthetic_set``.

- ``ddp_scaling_1_to_2``: samples/s of 2 ranks (gloo, 1 torch thread each, 1 loader worker
  each) against 1 rank (``ddp-1-process``) on the compute-bound ``convnet`` (width 32,
  4 hidden layers) on 64x64 images. Weak scaling: the per-process batch stays 8, so the
  global batch doubles from 8 to 16. Goal: at least 1.7x.
- ``ddp_scaling_1_to_2_workers_0``: the same with ``loader_workers=0`` in both runs: no
  loader processes competing with the ranks for the cores (on 2 cores, 2 ranks plus 2
  loader workers are 4 processes, and a rank that loses its core can stall the other in
  the all-reduce).
- ``data_wait_share``: the share of training time the 2-rank run spends waiting in
  ``next(loader)`` with ``loader_workers=1`` (prefetching), against the same run with
  ``loader_workers=0`` (``loader-workers-0``: synchronous loading in the rank). Goal: under 5%.
- ``cuda_amp``, ``cuda_channels_last``, ``cuda_amp_channels_last``: one process on the GPU
  (``convnet`` width 128, 8 hidden layers, 256x256 images, batch 64) with bf16 autocast,
  channels-last or both, against fp32 (``cuda-fp32``); the GPU utilisation sampled by
  ``nvidia-smi`` during each run is in the JSON under ``cuda``. Skipped without CUDA.

Steady state: every figure comes from rank 0's ``step`` events (one per ``log_every`` steps:
samples/s summed over the ranks and the data-wait share, both over that interval alone),
after the first ``WARMUP_INTERVALS`` intervals. The ``done`` event's rates are not used for
the ratios: they time the whole loop from before the first batch, so they include loader
worker start-up, first-step allocations, and the validation and checkpoint at the end. They
are recorded beside the steady figures all the same. Each CPU configuration runs
``--repeats`` times (3 by default, 1 with ``--quick``) and the best run counts: the machine
is shared, and the fastest run is the one least disturbed by other work (every run is in
the JSON).

``python -m benchmarks.training [--quick] [--repeats N]`` from the repository root;
``python -m benchmarks.training --cuda-only [--out DIR]`` runs only the CUDA part and
writes ``training_cuda.json`` (copied into ``DIR`` too). Nothing here imports Prefect.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import Metric, parse_args, write_results
from tasks.training.config import MAX_EPOCHS, TrainConfig
from tasks.training.data import MANIFEST, write_synthetic_set
from tasks.training.launch import TrainingFailed, run_processes, torchrun_argv

NAME = "training"
CUDA_NAME = "training_cuda"
GOAL_SCALING = 1.7
GOAL_DATA_WAIT_PCT = 5.0
# Step events dropped before the steady state (worker start-up, first allocations).
WARMUP_INTERVALS = 2
# Seconds one training run may take before it is stopped (CPU; one GPU mode).
RUN_TIMEOUT_S = 300.0
CUDA_RUN_TIMEOUT_S = 120.0
CPU_REPEATS, CPU_REPEATS_QUICK = 3, 1
# Variables of every rank: one thread per process, whatever the libraries default to.
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
NVIDIA_SMI = (
    "nvidia-smi",
    "-i",
    (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0],
    "--query-gpu=utilization.gpu,memory.used",
    "--format=csv,noheader,nounits",
    "-lms",
    "200",
)


@dataclass(frozen=True)
class Workload:
    """One training problem: model, image size, per-process batch and schedule."""

    model: str
    model_options: dict[str, int]
    size: int
    per_process_batch: int
    steps: int
    log_every: int
    train_files: int
    train_copies: int = 1  # the train files listed this many times in the manifest
    validation: int = 8

    def describe(self) -> dict[str, Any]:
        """The workload as recorded in the JSON."""
        return {
            "model": self.model,
            "model_options": self.model_options,
            "image": [1, self.size, self.size],
            "per_process_batch": self.per_process_batch,
            "max_steps": self.steps,
            "log_every": self.log_every,
            "warmup_intervals_dropped": WARMUP_INTERVALS,
            "train_samples": self.train_files * self.train_copies,
            "train_files": self.train_files,
            "validation_samples": self.validation,
        }


# CPU: a step of ~80 ms on one core, 38k parameters (150 kB of gradients to all-reduce).
CPU_FULL = Workload("convnet", {"width": 32, "layers": 4}, 64, 8, 70, 5, 1200)
CPU_QUICK = Workload("convnet", {"width": 8, "layers": 1}, 16, 4, 12, 2, 104)
# CUDA: ~30 TFLOP per step; 256 files listed 4 times give 16-step epochs at batch 64
# without writing 1 GB of images.
CUDA_FULL = Workload("convnet", {"width": 128, "layers": 8}, 256, 64, 70, 5, 256, 4)
CUDA_QUICK = Workload("convnet", {"width": 32, "layers": 2}, 64, 16, 20, 2, 64, 2)


@dataclass
class Run:
    """What one training run reported: rank 0's step events and its ``done`` event."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)  # monotonic, when each arrived
    done: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def steady(self) -> list[dict[str, Any]]:
        """Step events after the warm-up (the last one if the run was too short)."""
        return self.steps[WARMUP_INTERVALS:] or self.steps[-1:]

    @property
    def samples_per_s(self) -> float:
        """Samples/s over the steady intervals (all ranks; equal samples per interval)."""
        rates = [float(e["samples_per_s"]) for e in self.steady]
        return len(rates) / sum(1 / r for r in rates) if rates and min(rates) > 0 else 0.0

    @property
    def data_wait_pct(self) -> float:
        """Mean share of steady interval time spent waiting for a batch, in %."""
        return 100 * statistics.fmean(float(e["data_wait"]) for e in self.steady)

    def as_json(self) -> dict[str, Any]:
        """The run's figures for the results file."""
        return {
            "steady_samples_per_s": self.samples_per_s,
            "steady_data_wait_pct": self.data_wait_pct,
            "interval_samples_per_s": [e["samples_per_s"] for e in self.steps],
            "interval_data_wait": [e["data_wait"] for e in self.steps],
            "done": {
                key: self.done.get(key)
                for key in (
                    "samples_per_s",
                    "samples_per_s_per_process",
                    "data_wait_fraction",
                    "seconds",
                    "steps",
                    "device",
                )
            },
            "wall_s": self.wall_s,
        }


def write_dataset(root: Path, work: Workload) -> str:
    """The workload's synthetic set under ``root``; returns its directory.

    With ``train_copies`` > 1 the manifest lists the same train files that many times: longer
    epochs (fewer epoch boundaries in a short run) without the disk or the minutes that as
    many distinct images would take to generate.
    """
    dest = root / f"set-{work.size}"
    write_synthetic_set(
        str(dest), train=work.train_files, validation=work.validation, size=work.size
    )
    if work.train_copies > 1:
        manifest_path = dest / MANIFEST
        manifest = json.loads(manifest_path.read_text())
        manifest["train"] = manifest["train"] * work.train_copies
        manifest_path.write_text(json.dumps(manifest, indent=1))
    return str(dest)


def train_once(
    dataset: str,
    work: Workload,
    root: Path,
    *,
    procs: int,
    loader_workers: int,
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    threads: int = 1,
    on_step: Any = None,
    timeout_s: float = RUN_TIMEOUT_S,
) -> Run:
    """One ``torchrun`` job of ``procs`` ranks on ``work``; its step and done events."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    config = TrainConfig(
        dataset=dataset,
        model=work.model,
        model_options=work.model_options,
        strategy="ddp",
        procs_per_node=procs,
        epochs=MAX_EPOCHS,  # max_steps ends the run
        max_steps=work.steps,
        batch_size=work.per_process_batch * procs,
        checkpoint_every=10**9,  # only the final checkpoint, after the last interval
        resume=False,
        output=str(run_dir / "out"),
        device=device,  # type: ignore[arg-type]
        amp=amp,
        channels_last=channels_last,
        loader_workers=loader_workers,
        threads_per_proc=threads,
        log_every=work.log_every,
    )
    config_path = run_dir / "config.json"
    config_path.write_text(config.model_dump_json())
    run = Run()

    def on_event(name: str, event: dict[str, Any]) -> None:
        if event["event"] == "step":
            run.steps.append(event)
            run.step_times.append(time.monotonic())
            if on_step is not None:
                on_step(event)
        elif event["event"] == "done":
            run.done = event

    env = SINGLE_THREAD_ENV if threads == 1 else {"OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    run_processes(
        {"torchrun": torchrun_argv(str(config_path), procs_per_node=procs)},
        on_event=on_event,
        env={**env, "PYTHONPATH": _pythonpath()},
        timeout_s=timeout_s,
    )
    run.wall_s = time.perf_counter() - started
    shutil.rmtree(run_dir, ignore_errors=True)
    if not run.steps or not run.done:
        raise RuntimeError(f"training run printed no step/done events ({len(run.steps)} steps)")
    return run


def _pythonpath() -> str:
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


def interleaved(repeats: int, cases: dict[str, Any]) -> tuple[dict[str, Run], dict[str, list[Run]]]:
    """``repeats`` rounds of every case in turn; each case's fastest run, and all runs.

    Round-robin rather than all repeats of one case then the next: on a shared machine the
    load drifts, and taking turns exposes every case to the same drift.
    """
    runs: dict[str, list[Run]] = {label: [] for label in cases}
    for i in range(repeats):
        for label, fn in cases.items():
            run = fn()
            runs[label].append(run)
            print(
                f"  {label} [{i + 1}/{repeats}]: {run.samples_per_s:.1f} samples/s, "
                f"data wait {run.data_wait_pct:.2f}% (done: {run.done['samples_per_s']:.1f} "
                f"samples/s over {run.done['seconds']:.1f} s; wall {run.wall_s:.1f} s; "
                f"load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    best = {label: max(rs, key=lambda r: r.samples_per_s) for label, rs in runs.items()}
    return best, runs


_PROBE = """
import json, sys, time, torch
from tasks.training.models import build_model
torch.set_num_threads(1)
size, batch, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model = build_model(sys.argv[4], **json.loads(sys.argv[5]))
optimizer = torch.optim.Adam(model.parameters())
x = torch.randn(batch, 1, size, size)
for i in range(steps + 2):
    if i == 2:
        started = time.perf_counter()
    loss = torch.nn.functional.mse_loss(model(x), x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(steps * batch / (time.perf_counter() - started))
"""


def machine_scaling(work: Workload, steps: int) -> dict[str, float]:
    """Samples/s of the same model step in 2 independent processes against 1 (no DDP).

    Context for ``ddp_scaling_1_to_2``: what this machine's cores allow right now, with no
    communication or data loading; on cores shared with other work DDP cannot beat it.
    """
    argv = [str(work.size), str(work.per_process_batch), str(steps), work.model]
    argv.append(json.dumps(work.model_options))

    def rate(count: int) -> float:
        procs = [
            subprocess.Popen(  # noqa: S603 - our own interpreter, a fixed script
                [sys.executable, "-c", _PROBE, *argv],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, **SINGLE_THREAD_ENV, "PYTHONPATH": _pythonpath()},
            )
            for _ in range(count)
        ]
        return sum(float(proc.communicate()[0]) for proc in procs)

    one, two = rate(1), rate(2)
    return {"one_process_samples_per_s": one, "two_processes_samples_per_s": two,
            "ratio": two / one}  # fmt: skip


def cpu_part(work: Workload, repeats: int, root: Path) -> tuple[list[Metric], dict[str, Any]]:
    """DDP scaling 1 -> 2 ranks and the data-wait share, on this machine's CPUs."""
    dataset = write_dataset(root, work)
    configs = {
        "ddp-1-process": {"procs": 1, "loader_workers": 1},
        "ddp-2-processes": {"procs": 2, "loader_workers": 1},
        "loader-workers-0": {"procs": 2, "loader_workers": 0},
        "ddp-1-process-workers-0": {"procs": 1, "loader_workers": 0},
    }
    probe_before = machine_scaling(work, max(4, work.steps // 4))
    print(f"  independent processes 1 -> 2 (no DDP, no data): {probe_before['ratio']:.2f}x")
    best, runs = interleaved(
        repeats,
        {
            label: lambda o=options: train_once(dataset, work, root, **o)
            for label, options in configs.items()
        },
    )
    every = {label: [r.as_json() for r in rs] for label, rs in runs.items()}
    # Each round's 2-rank rate over the 1-rank rate just before it: similar load, paired.
    paired = [
        two_run.samples_per_s / one_run.samples_per_s
        for one_run, two_run in zip(runs["ddp-1-process"], runs["ddp-2-processes"], strict=True)
        if one_run.samples_per_s
    ]
    one, two, sync = best["ddp-1-process"], best["ddp-2-processes"], best["loader-workers-0"]
    one_sync = best["ddp-1-process-workers-0"]
    scaling = two.samples_per_s / one.samples_per_s if one.samples_per_s else 0.0
    scaling_sync = sync.samples_per_s / one_sync.samples_per_s if one_sync.samples_per_s else 0.0
    metrics = [
        Metric(
            "ddp_scaling_1_to_2",
            two.samples_per_s,
            one.samples_per_s,
            "ddp-1-process (same per-process batch, 1 thread)",
            "samples/s",
            f">= {GOAL_SCALING:g}x (weak scaling, gloo, 1 thread per rank)",
            scaling >= GOAL_SCALING,
        ),
        Metric(
            "ddp_scaling_1_to_2_workers_0",
            sync.samples_per_s,
            one_sync.samples_per_s,
            "ddp-1-process-workers-0 (loading in the rank, 1 thread)",
            "samples/s",
            f">= {GOAL_SCALING:g}x (as above, loader_workers=0: no extra processes)",
            scaling_sync >= GOAL_SCALING,
        ),
        Metric(
            "data_wait_share",
            two.data_wait_pct,
            sync.data_wait_pct,
            "loader-workers-0 (synchronous loading, 2 ranks)",
            "%",
            f"< {GOAL_DATA_WAIT_PCT:g}% (2 ranks, 1 loader worker each)",
            two.data_wait_pct < GOAL_DATA_WAIT_PCT,
        ),
    ]
    record = {
        "workload": {
            **work.describe(),
            "scaling": "weak: per-process batch fixed, global batch 1x -> 2x",
            "backend": "gloo",
            "threads_per_process": 1,
            "env": SINGLE_THREAD_ENV,
        },
        "selection": f"best of {repeats} interleaved run(s) by steady samples/s",
        "scaling_ratio": scaling,
        "scaling_ratio_per_round": paired,
        "scaling_ratio_median_of_rounds": statistics.median(paired) if paired else None,
        "scaling_note": "a ratio above 2 on 2 cores means the 1-process runs were slowed by "
        "other work on the machine (see load averages and independent_processes_scaling)",
        "parallel_efficiency_pct": 50 * scaling,
        "data_wait_whole_run_pct": {
            label: 100 * float(run.done["data_wait_fraction"]) for label, run in best.items()
        },
        "independent_processes_scaling": {
            "note": "the same model step in 2 separate processes vs 1, no DDP, no data: "
            "what the cores allow (before and after the DDP runs)",
            "before": probe_before,
            "after": machine_scaling(work, max(4, work.steps // 4)),
        },
        "runs": every,
    }
    return metrics, record


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every 200 ms, with arrival times, in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.error: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv
                list(NVIDIA_SMI), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
        except OSError as exc:
            self.error = f"nvidia-smi did not start ({exc})"
            return self
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        if self._proc is None or self._proc.stdout is None:
            return
        for line in self._proc.stdout:
            try:
                util, memory = (float(v) for v in line.split(","))
            except ValueError:
                continue
            self.samples.append((time.monotonic(), util, memory))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def summary(self, start: float | None, end: float | None) -> dict[str, Any]:
        """Mean utilisation (%) and peak memory (MiB), between ``start`` and ``end`` too."""
        if not self.samples:
            return {"error": self.error or "nvidia-smi printed no samples"}
        window = [s for s in self.samples if (start or 0) <= s[0] <= (end or float("inf"))]
        return {
            "mean_util_pct_steady": statistics.fmean(s[1] for s in window) if window else None,
            "mean_util_pct_whole_run": statistics.fmean(s[1] for s in self.samples),
            "max_memory_mib": max(s[2] for s in self.samples),
            "samples": len(self.samples),
            "steady_samples": len(window),
        }


CUDA_MODES = {
    "cuda-fp32": {"amp": False, "channels_last": False},
    "cuda_amp": {"amp": True, "channels_last": False},
    "cuda_channels_last": {"amp": False, "channels_last": True},
    "cuda_amp_channels_last": {"amp": True, "channels_last": True},
}


def cuda_part(
    work: Workload, root: Path, device: str = "cuda"
) -> tuple[list[Metric], dict[str, Any]]:
    """One process on the GPU in fp32, bf16 autocast, channels-last and both.

    ``device="cpu"`` runs the same plumbing without a GPU (for checking this code only).
    """
    dataset = write_dataset(root, work)
    workers = max(1, min(8, (os.cpu_count() or 2) - 2))
    runs: dict[str, dict[str, Any]] = {}
    rates: dict[str, float] = {}
    for label, options in CUDA_MODES.items():
        try:
            with GpuSampler() as sampler:
                run = train_once(
                    dataset, work, root, procs=1, loader_workers=workers, device=device,
                    threads=4, timeout_s=CUDA_RUN_TIMEOUT_S, **options,
                )  # fmt: skip
        except (TrainingFailed, RuntimeError) as exc:
            # One failing mode (a kernel missing, out of memory) leaves the others measured.
            runs[label] = {**options, "error": str(exc)[-2000:]}
            print(f"  {label}: FAILED: {str(exc)[-500:]}", flush=True)
            continue
        # The steady intervals run from the last warm-up step event to the last one.
        times = run.step_times
        start = times[WARMUP_INTERVALS - 1] if len(times) > WARMUP_INTERVALS else times[0]
        gpu = sampler.summary(start, times[-1])
        rates[label] = run.samples_per_s
        runs[label] = {**options, **run.as_json(), "gpu": gpu}
        print(
            f"  {label}: {run.samples_per_s:.1f} samples/s, data wait {run.data_wait_pct:.2f}%, "
            f"GPU util {gpu.get('mean_util_pct_steady')}% (wall {run.wall_s:.1f} s)",
            flush=True,
        )
    base = rates.get("cuda-fp32", 0.0)
    metrics = [
        Metric(
            label,
            rates[label],
            base,
            "cuda-fp32 (same model, batch and data)",
            "samples/s",
        )
        for label in CUDA_MODES
        if label != "cuda-fp32" and label in rates and base
    ]
    record = {
        "status": "measured" if base else "failed",
        "device": _gpu_name() if device == "cuda" else device,
        "workload": {**work.describe(), "processes": 1, "loader_workers": workers},
        "samples_per_s": rates,
        "runs": runs,
        "gpu_sampling": " ".join(NVIDIA_SMI)
        + "; steady = from the end of the warm-up intervals to the last step event",
    }
    return metrics, record


def _gpu_name() -> str | None:
    import torch

    return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None


def _cuda_available() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, ""
    return False, f"skipped: no CUDA (torch {torch.__version__} sees no CUDA device)"


# What the rank program imports besides the standard library (matplotlib: its loss curves).
RANK_DEPENDENCIES = ("torch", "numpy", "pydantic", "pydantic_settings", "dotenv", "matplotlib")


def missing_dependencies() -> list[str]:
    """Modules the rank program needs that this interpreter cannot import."""
    return [name for name in RANK_DEPENDENCIES if importlib.util.find_spec(name) is None]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The shared options plus ``--cuda-only`` and ``--out DIR``."""
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--cuda-only", action="store_true")
    extra.add_argument("--out", default=None)
    own, rest = extra.parse_known_args(argv)
    if "-h" in rest or "--help" in rest:
        print("extra options: --cuda-only (only the CUDA part), --out DIR (copy the JSON there)")
    args = parse_args(__doc__.splitlines()[0], rest)
    args.cuda_only, args.out = own.cuda_only, own.out
    return args


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = _parse(argv)
    missing = missing_dependencies()
    if missing:
        print(f"cannot run: the training processes need {', '.join(missing)}; pip install them")
        return 2
    repeats = args.repeats or (CPU_REPEATS_QUICK if args.quick else CPU_REPEATS)
    metrics: list[Metric] = []
    extra: dict[str, Any] = {"load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = Path(tmp)
        if not args.cuda_only:
            cpu_metrics, extra["cpu"] = cpu_part(
                CPU_QUICK if args.quick else CPU_FULL, repeats, root
            )
            metrics += cpu_metrics
        has_cuda, reason = _cuda_available()
        if has_cuda:
            cuda_metrics, extra["cuda"] = cuda_part(CUDA_QUICK if args.quick else CUDA_FULL, root)
            metrics += cuda_metrics
        else:
            print(reason)
            extra["cuda"] = {"status": "skipped", "reason": reason}
    name = CUDA_NAME if args.cuda_only else NAME
    path = write_results(
        name,
        metrics,
        args,
        **extra,
        repeats=repeats,
        load_average_at_end=os.getloadavg(),
        wall_s=time.perf_counter() - started,
    )
    if args.out is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)
        print(f"copied to {out / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
