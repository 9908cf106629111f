"""Distributed training: a model trained on reconstructed images, from a laptop to GPU nodes.

check inputs → config.json → processes (``torchrun`` ranks for DDP, or a parameter server
and its workers) → model, metrics.json and loss curves in ``output`` → summary artifact.

Here the processes run on this machine; on an AWS unit DDP runs as an AWS Batch
(multi-node) job and the parameter server as ECS Fargate tasks. Every process reads the
same config.json and reports event lines (``tasks.training.events``): they move the
progress artifact and the log here, and reach CloudWatch on AWS. Checkpoints go to
``output/checkpoints`` every ``checkpoint_every`` steps; with ``resume`` (the default) a
re-run with the same ``output`` continues from the newest complete one.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import task
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.compute_unit import SizeClass, load_unit
from flows.model_upload import model_upload
from tasks.compute.batch_run import batch_size_class, check_batch_unit, run_batch_job
from tasks.compute.hooks import sciflow_flow
from tasks.compute.run_context import RunContext
from tasks.compute.run_token import token_secret
from tasks.compute.spending import check_spending
from tasks.compute.timeouts import local_timeout_s, timed_out
from tasks.errors import InputError, SciflowError
from tasks.progress import Progress, markdown_table, publish_summary, run_logger
from tasks.storage.access import Access
from tasks.storage.objects import join_uri
from tasks.storage.registry import check_model_name
from tasks.training.config import (
    CONFIG_NAME,
    CURVES_NAME,
    METRICS_NAME,
    TrainConfig,
    TrainingSettings,
)
from tasks.training.ecs import WALL_CLOCK_GRACE_S, ParameterServerLaunch, plan_from_unit
from tasks.training.events import parse_event
from tasks.training.launch import (
    TrainingTimedOut,
    local_parameter_server,
    run_processes,
    torchrun_argv,
)

# The unit's `batch_job_definitions` entry whose image has torch and sciflow.
BATCH_RUNTIME = "training"
# Times Batch restarts a DDP job whose instance was reclaimed (it resumes from a checkpoint).
LOST_HOST_RETRIES = 3
# Seconds between polls of a Batch job or ECS tasks.
BATCH_POLL_S = 10.0
ECS_POLL_S = 10.0
# The settings form's defaults: 2 DDP ranks of a U-Net, one epoch.
DEFAULT_SETTINGS = TrainingSettings()


class TrainingResult(BaseModel):
    """Where the trained model is and how training went."""

    output: str = Field(description="URI of the directory with model, metrics and curves.")
    model: str = Field(description="URI of the TorchScript model (model/model.pt).")
    metrics: str = Field(description="URI of metrics.json.")
    curves: str = Field(description="URI of the loss and validation curves (PNG).")
    steps: int = Field(description="Optimizer steps (parameter-server updates) done in all.")
    resumed_from: int = Field(description="Step this run continued from (0: a fresh start).")
    final_loss: float = Field(description="Training loss at the last logged step.")
    val_loss: float = Field(description="Validation loss at the end.")
    samples_per_s: float = Field(description="Training samples per second, all processes.")
    data_wait_fraction: float = Field(description="Share of step time spent waiting for data.")
    published_version: str | None = Field(
        None, description="Registry version of the model, when published (`publish_as`)."
    )


@task
def check_inputs(run: RunContext, cfg: TrainConfig, access: Access | None = None) -> dict[str, int]:
    """Everything that can be checked before a process starts, so bad input fails here.

    Data set (with ``access``: every sample file within the unit's reach, so a symlink in the
    set cannot lead out), model against it, the memory of one node's processes against the
    unit's class for the run (``models.memory_estimate`` for each of ``procs_per_node``),
    processes against shards, GPU for NCCL, and checkpoints that ``resume=False`` would
    overwrite; read through the unit's store (in Mode 2 the user's account, never this
    process's ambient credentials).
    """
    from tasks.training.checkpoint import CheckpointStore
    from tasks.training.data import ImageDataset, load_manifest, set_root
    from tasks.training.loop import check_resumable, plan_steps, select_device
    from tasks.training.models import check_input_shape, memory_estimate

    manifest = load_manifest(cfg.dataset, run.store)
    if access is not None and access.confined:
        root = set_root(cfg.dataset)
        for name in sorted(manifest.files()):
            access.check_read(join_uri(root, name), "dataset")
    image = (manifest.channels, *manifest.shape)
    check_input_shape(cfg.model, cfg.model_options, image)
    batch = (cfg.per_process_batch, *image)
    process = memory_estimate(cfg.model, cfg.model_options, batch, cfg.loader_workers)
    run.unit.check_fits(
        cfg.procs_per_node * process,
        f"training of model {cfg.model!r} with model_options={dict(cfg.model_options)} on "
        f"batches of {batch}, procs_per_node={cfg.procs_per_node}",
        sizes=(_size_class(cfg),),
    )
    ImageDataset(cfg.dataset, "train", run.store, manifest)[0]  # files that match the manifest
    _, steps = plan_steps(cfg, len(manifest.train), cfg.processes)
    select_device(cfg)
    check_resumable(cfg, CheckpointStore(cfg.checkpoints, run.store).latest())
    return {"train": len(manifest.train), "validation": len(manifest.validation), "steps": steps}


def check_aws_unit(run: RunContext, cfg: TrainConfig) -> None:
    """Refuse a unit that cannot run the strategy before anything is read or written."""
    unit = run.unit
    if cfg.strategy == "parameter_server":
        # Fargate tasks mount nothing of this machine's: a path here is not there.
        for name, uri in (("dataset", cfg.dataset), ("output", cfg.output)):
            if not uri.startswith("s3://"):
                raise InputError(
                    f"{name}={uri!r} on the AWS unit {unit.name!r}: the parameter server's "
                    "tasks run on Fargate and read by URI; expected s3://bucket/prefix"
                )
        plan_from_unit(unit, run.run_id, run.tags, cfg.uri(CONFIG_NAME), cfg.processes)
        return
    check_batch_unit(unit, BATCH_RUNTIME)


@task
def write_config(run: RunContext, cfg: TrainConfig) -> str:
    """config.json beside the outputs, where every process reads it."""
    return run.store.write_text(cfg.uri(CONFIG_NAME), cfg.model_dump_json(indent=2))


class _Follower:
    """Turns the processes' event lines into log lines and a progress artifact."""

    def __init__(self, key: str) -> None:
        self.logger = run_logger()
        self.key = key
        self.progress: Progress | None = None
        self.done_step = 0
        self.summary: dict[str, Any] = {}
        self.errors: dict[str, str] = {}  # message -> error type the process raised

    def on_event(self, name: str, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.done_step = int(event["step"])
            total = int(event["total_steps"])
            self.logger.info(
                "training %s from step %d of %d on %s (%d process(es))",
                "resumes" if event.get("resumed") else "starts",
                self.done_step,
                total,
                event.get("device"),
                event.get("world"),
            )
            if self.progress is None:  # torchrun's restart sends "start" again: one artifact
                self.progress = Progress(total=total, what="steps", key=self.key).__enter__()
            self.progress.advance(self.done_step - self.progress.done)
        elif kind == "step":
            self.logger.info(
                "step %d epoch %d: loss %.4g, %.1f samples/s (%.1f per process), data wait %.1f%%",
                event["step"],
                event["epoch"],
                event["loss"],
                event["samples_per_s"],
                event["samples_per_s_per_process"],
                100 * event["data_wait"],
            )
            if self.progress is not None:
                self.progress.advance(int(event["step"]) - self.done_step)
            self.done_step = int(event["step"])
        elif kind == "validation":
            self.logger.info("validation at step %d: loss %.4g", event["step"], event["val_loss"])
        elif kind == "checkpoint":
            self.logger.info("checkpoint at step %d: %s", event["step"], event["uri"])
        elif kind == "done":
            self.summary = event
        elif kind == "error":
            self.errors[str(event.get("message"))] = str(event.get("kind"))
            self.logger.error("[%s] %s", name, event.get("message"))
        elif kind == "refused":
            self.logger.warning(
                "[%s] refused worker %s's gradient at step %s: %s (%s refused so far)",
                name,
                *map(event.get, ("worker", "step", "reason", "refused_gradients")),
            )
        elif kind == "rank":
            self.logger.info(
                "[%s] rank %s is pid %s on %s", name, *map(event.get, ("rank", "pid", "device"))
            )

    def on_line(self, name: str, line: str) -> None:
        self.logger.info("[%s] %s", name, line)

    def on_output(self, name: str, line: str) -> None:
        """A line a remote process wrote (CloudWatch): an event, or a line to log."""
        event = parse_event(line)
        if event is None:
            self.on_line(name, line)
        else:
            self.on_event(name, event)

    def failure(self, exc: SciflowError) -> SciflowError:
        """The error to raise for ``exc``: what the processes said was wrong, if they did."""
        if not self.errors:
            return exc
        kind = InputError if "InputError" in self.errors.values() else SciflowError
        return kind("; ".join(self.errors))

    def close(self) -> None:
        """Finish the progress artifact."""
        if self.progress is not None:
            self.progress.__exit__(None, None, None)


@task
def train_locally(cfg: TrainConfig, config_uri: str, run_id: str, wall_time_s: float) -> None:
    """The processes on this machine, followed to their end or their wall-clock limit.

    torchrun is stopped (its process group) at ``wall_time_s``; the parameter server and its
    workers exit by themselves then, and are stopped ``WALL_CLOCK_GRACE_S`` later.
    """
    follower = _Follower(f"training-{run_id[:8]}")
    if cfg.strategy == "ddp":
        commands = {
            "torchrun": torchrun_argv(
                config_uri, procs_per_node=cfg.procs_per_node, max_restarts=cfg.max_restarts
            )
        }
    else:
        commands = local_parameter_server(config_uri, cfg.processes, wall_time_s)
    try:
        run_processes(
            commands,
            on_event=follower.on_event,
            on_line=follower.on_line,
            timeout_s=wall_time_s if cfg.strategy == "ddp" else wall_time_s + WALL_CLOCK_GRACE_S,
        )
    except TrainingTimedOut:
        raise  # what the stopped processes said last is not why they stopped
    except SciflowError as exc:
        error = follower.failure(exc)  # the processes said what was wrong: that is the error
        if error is exc:
            raise
        raise error from exc
    finally:
        follower.close()
    if not follower.summary:
        raise SciflowError("training ended without its 'done' event: no summary")


@task
def train_on_batch(run: RunContext, cfg: TrainConfig, config_uri: str) -> None:
    """DDP as one AWS Batch job: every node runs torchrun, meeting at the main node.

    One node (a GPU instance, say) is a plain job; more make a multi-node parallel job. The
    ranks' event lines come back through CloudWatch into this run's log and progress.
    """
    follower = _Follower(f"training-{run.run_id[:8]}")
    command = [
        "python", "-m", "tasks.training.launch", "node",
        "--config", config_uri,
        "--procs-per-node", str(cfg.procs_per_node),
        "--max-restarts", str(cfg.max_restarts),
    ]  # fmt: skip
    try:
        run_batch_job(
            run,
            runtime=BATCH_RUNTIME,
            name="sciflow-training",
            command=command,
            nodes=cfg.nodes,
            size=_size_class(cfg),
            poll_s=BATCH_POLL_S,
            on_line=follower.on_output,
            # A reclaimed Spot node: Batch starts the job again and it resumes from the
            # newest checkpoint, losing at most one interval.
            lost_host_retries=LOST_HOST_RETRIES,
        )
    finally:
        follower.close()


@task
def train_on_ecs(run: RunContext, cfg: TrainConfig, config_uri: str) -> None:
    """The parameter server and its workers as ECS Fargate tasks, followed to their end.

    Their event lines come back through CloudWatch into this run's log and progress, as
    from the local processes. Leaving (done, failed or cancelled) stops every task and
    removes the Cloud Map service and the run token's secret.
    """
    size = batch_size_class(cfg.nodes)  # Fargate has no GPUs
    account = run.unit.aws_account()
    follower = _Follower(f"training-{run.run_id[:8]}")
    try:
        with token_secret(account, run.run_id, run.tags, run.unit.region) as token_arn:
            plan = plan_from_unit(
                run.unit, run.run_id, run.tags, config_uri, cfg.processes, size=size,
                token_secret_arn=token_arn,
            )  # fmt: skip
            # The launch's record is what the run's stop hook stops.
            launch = ParameterServerLaunch(plan, account, poll_s=ECS_POLL_S, record=run.launches)
            with launch:
                launch.start()
                follower.logger.info(
                    "parameter server %s at %s:%d with %d worker task(s)",
                    launch.server_task,
                    plan.server_host,
                    plan.port,
                    len(launch.worker_tasks),
                )
                outcome = launch.wait(on_line=follower.on_output)
    finally:
        follower.close()
    if not outcome.succeeded:
        server = outcome.server
        error = SciflowError(
            f"parameter server task {server.task_arn} exited {server.exit_code}: {server.reason}"
        )
        if (reported := follower.failure(error)) is not error:
            raise reported from error
        raise error


@sciflow_flow(name="distributed-training")
def distributed_training(
    dataset: str,
    settings: TrainingSettings = DEFAULT_SETTINGS,
    output: str | SkipJsonSchema[None] = "",
    unit: str = "local",
    publish_as: str | SkipJsonSchema[None] = "",
    timeout_s: float = 0,
) -> TrainingResult:
    """Train a model on a training set with DDP or a parameter server.

    Args:
        dataset: Directory or S3 prefix with manifest.json (``tasks.training.data``).
        settings: What to train and how: model, strategy, processes, schedule, checkpoints,
            device (``TrainingSettings``; a dict of its fields from the CLI or
            ``run_deployment``).
        output: Directory for checkpoints, model, metrics and curves; the run directory's
            ``training/`` if omitted (a retry of the flow run resumes there).
        unit: Compute unit to run on.
        publish_as: Model name to publish the trained model under in the unit's registry
            (its next version, through the model-upload flow); not published if omitted.
        timeout_s: Seconds training on this machine may run before its processes are
            stopped; the unit's size-class wall time if 0, never more. An AWS job stops
            at its class's wall time, so leave it at 0 there.
    """
    # "", 0: an empty form field, not given.
    output, publish_as, timeout_s = output or None, publish_as or None, timeout_s or None
    logger = run_logger()
    if publish_as is not None:
        check_model_name(publish_as)
    compute_unit = load_unit(unit)
    access = compute_unit.access()
    access.check_read(dataset, "dataset")
    if output:
        access.check_write(output, "output")
    if compute_unit.is_local and settings.nodes > 1:
        raise InputError(
            f"nodes={settings.nodes} on the local unit {unit!r}; expected 1 (or an AWS unit)"
        )
    run = RunContext.current(compute_unit)
    cfg = TrainConfig.from_settings(settings, dataset=dataset, output=output or run.uri("training"))
    size = _size_class(cfg)
    limit_s = local_timeout_s(compute_unit, size, timeout_s)
    check_spending(compute_unit, size, limit_s, cfg.nodes)
    if not compute_unit.is_local:
        check_aws_unit(run, cfg)
    sizes = check_inputs(run, cfg, access)
    logger.info(
        "%s on %d training / %d validation samples; %s with %d process(es), global batch %d, "
        "%d steps",
        cfg.model,
        sizes["train"],
        sizes["validation"],
        cfg.strategy,
        cfg.processes,
        cfg.batch_size,
        sizes["steps"],
    )
    # About 50 points on the loss curve, however long the run.
    cfg = cfg.model_copy(update={"log_every": max(1, min(100, sizes["steps"] // 50))})
    config_uri = write_config(run, cfg)
    if compute_unit.is_local:
        try:
            train_locally(cfg, config_uri, run.run_id, limit_s)
        except TrainingTimedOut as exc:
            raise timed_out(f"{cfg.strategy} training", limit_s, size, timeout_s) from exc
    elif cfg.strategy == "ddp":
        train_on_batch(run, cfg, config_uri)
    else:
        train_on_ecs(run, cfg, config_uri)
    result = _publish(run, cfg)
    if publish_as is not None:
        uploaded = model_upload(source=cfg.output, model_name=publish_as, unit=unit)
        result = result.model_copy(update={"published_version": uploaded.version})
    return result


def _size_class(cfg: TrainConfig) -> SizeClass:
    """The class whose limits bound the training: multinode, gpu unless on CPU, else large."""
    return batch_size_class(cfg.nodes, gpu=cfg.device != "cpu")


def _publish(run: RunContext, cfg: TrainConfig) -> TrainingResult:
    metrics = json.loads(run.store.read_bytes(cfg.uri(METRICS_NAME)))
    result = TrainingResult(
        output=cfg.output,
        model=cfg.uri("model", "model.pt"),
        metrics=cfg.uri(METRICS_NAME),
        curves=cfg.uri(CURVES_NAME),
        steps=int(metrics["steps"]),
        resumed_from=int(metrics["resumed_from"]),
        final_loss=float(metrics["final_loss"]),
        val_loss=float(metrics["val_loss"]),
        samples_per_s=float(metrics["samples_per_s"]),
        data_wait_fraction=float(metrics["data_wait_fraction"]),
    )
    per_process = metrics.get("samples_per_s_per_process", [])
    throughput = markdown_table(
        [{"process": i, "samples/s": f"{rate:.1f}"} for i, rate in enumerate(per_process)]
        + [{"process": "total", "samples/s": f"{result.samples_per_s:.1f}"}]
    )
    publish_summary(
        "Distributed training",
        [
            {"output": "model (TorchScript)", "uri": result.model},
            {"output": "metrics", "uri": result.metrics},
            {"output": "loss and validation curves", "uri": result.curves},
        ],
        key=f"training-{run.unit.name}",
        notes=(
            f"{cfg.model} with {cfg.strategy} on {cfg.processes} process(es): "
            f"{result.steps} steps (resumed from {result.resumed_from}), final loss "
            f"**{result.final_loss:.4g}**, validation loss **{result.val_loss:.4g}**, "
            f"data wait {100 * result.data_wait_fraction:.1f}% of step time.\n\n"
            f"Throughput:\n\n{throughput}"
        ),
        images={"loss and validation curves": run.store.read_bytes(result.curves)},
    )
    return result
