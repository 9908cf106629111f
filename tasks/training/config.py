"""What a training run is asked to do: one JSON document every process of the run reads.

The flow takes ``TrainingSettings`` (the form a scientist fills in), builds a ``TrainConfig``
from them with the run's data set and output directory, writes it as ``config.json`` beside
the run's outputs and starts the processes (``torchrun`` for DDP, a server and workers for
the parameter server) with its URI. Everything a process needs is in it, so a process
started by hand with the same file behaves the same.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import InputError, describe_validation
from tasks.forms import plain_optional_fields
from tasks.storage.objects import join_uri

Strategy = Literal["ddp", "parameter_server"]
Device = Literal["auto", "cpu", "cuda"]
Backend = Literal["auto", "gloo", "nccl"]

CONFIG_NAME = "config.json"
CHECKPOINTS = "checkpoints"
MODEL_DIR = "model"
METRICS_NAME = "metrics.json"
CURVES_NAME = "loss.png"
# Field caps, fixed when the code loads; the unit's memory bounds the model and batch at run
# time (``flows.distributed_training``). 100,000 epochs and a global batch of 65,536 images are
# far past what these models are trained with; the caps keep a typo from running for weeks.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 65_536


class TrainingSettings(BaseModel):
    """What to train and how: the training flow's settings, one form in the Prefect UI.

    The flow adds where the data is and where outputs go, and builds the run's ``TrainConfig``
    from them (``TrainConfig.from_settings``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=plain_optional_fields)

    model: str = Field(
        "unet", description="Model name from tasks.training.models: unet, convnet or linear."
    )
    model_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword options of the model, e.g. {'width': 16, 'depth': 2}.",
    )
    strategy: Strategy = Field(
        "ddp", description="'ddp' (torchrun) or 'parameter_server' (asynchronous updates)."
    )
    nodes: int = Field(
        1, ge=1, le=256, description="Nodes (hosts) taking part; more than 1 only on AWS."
    )
    procs_per_node: int = Field(
        2, ge=1, le=256, description="Processes per node: DDP ranks, or PS workers."
    )
    epochs: int = Field(
        1, ge=1, le=MAX_EPOCHS, description=f"Passes over the training split, 1 to {MAX_EPOCHS}."
    )
    batch_size: int = Field(
        8,
        ge=1,
        le=MAX_BATCH_SIZE,
        description=(
            f"Samples per optimizer step over all processes (global batch), 1 to {MAX_BATCH_SIZE}."
        ),
    )
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (Adam, cosine decay).")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints.")
    resume: bool = Field(True, description="Continue from the newest complete checkpoint.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many steps (before the epochs end)."
    )
    max_restarts: int = Field(
        1,
        ge=0,
        le=100,
        description="torchrun restarts of all ranks when one dies; they resume from the "
        "newest checkpoint.",
    )
    seed: int = Field(0, description="Seed of parameters, data order and noise.")
    device: Device = Field("auto", description="'cuda' when a GPU is there under 'auto'.")
    backend: Backend = Field("auto", description="Process group: gloo on CPU, nccl on CUDA.")
    amp: bool = Field(False, description="bf16 autocast on CUDA.")
    channels_last: bool = Field(False, description="channels-last memory format on CUDA.")
    loader_workers: int = Field(
        1, ge=0, le=32, description="DataLoader worker processes per training process."
    )
    threads_per_proc: int = Field(1, ge=1, le=256, description="torch threads per process.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.batch_size % self.processes:
            raise InputError(
                f"batch_size={self.batch_size} does not split over {self.processes} "
                f"processes ({self.nodes} node(s) x {self.procs_per_node}); expected a "
                f"multiple of {self.processes}"
            )
        if self.backend == "nccl" and self.device == "cpu":
            raise InputError("backend='nccl' with device='cpu'; NCCL needs CUDA: use 'gloo'")
        return self

    @property
    def processes(self) -> int:
        """Processes that compute gradients (DDP ranks, or PS workers)."""
        return self.nodes * self.procs_per_node


class TrainConfig(TrainingSettings):
    """One training run: its settings, its data and where its outputs go."""

    dataset: str = Field(description="Directory or S3 prefix holding manifest.json.")
    output: str = Field(description="Directory for checkpoints, model, metrics and curves.")
    log_every: int = Field(10, ge=1, description="Steps between progress lines.")

    @classmethod
    def from_settings(
        cls, settings: TrainingSettings, *, dataset: str, output: str, log_every: int = 10
    ) -> Self:
        """The run config of ``settings`` for ``dataset``; bad values become one InputError."""
        fields = settings.model_dump() | {
            "dataset": dataset,
            "output": output,
            "log_every": log_every,
        }
        try:
            return cls(**fields)
        except ValidationError as exc:
            raise InputError(f"training parameters: {describe_validation(exc)}") from None

    @property
    def per_process_batch(self) -> int:
        """Samples each process takes per step."""
        return self.batch_size // self.processes

    def uri(self, *parts: str) -> str:
        """URI of a file under ``output``."""
        return join_uri(self.output, *parts)

    @property
    def checkpoints(self) -> str:
        """URI of the checkpoint directory."""
        return self.uri(CHECKPOINTS)

    @property
    def model_spec(self) -> dict[str, Any]:
        """Model name and options: what a checkpoint must have been written by."""
        return {"name": self.model, "options": dict(self.model_options)}
