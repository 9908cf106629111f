"""The distributed_training flow for real: torchrun ranks and a parameter server on 127.0.0.1.

Every test runs the flow under the session's Prefect harness and starts real processes;
the kill tests send a real SIGKILL to a DDP rank found through /proc. Images are tiny (a
U-Net of width 8 on 16x16) so the module stays well under a minute and a half on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.exceptions import ParameterTypeError

from flows.distributed_training import TrainingResult, distributed_training
from tasks.errors import InputError
from tasks.settings import get_settings
from tasks.training.checkpoint import CheckpointStore
from tasks.training.data import write_synthetic_set

# On the CPU everywhere: under device="auto" one GPU could not serve two ranks.
TINY_UNET = {"model": "unet", "model_options": {"width": 8, "depth": 2}, "device": "cpu"}
OUTPUT_FILES = (
    "config.json",
    "metrics.json",
    "loss.png",
    "model/model.pt",
    "model/state_dict.pt",
    "model/config.json",
)
# The kill test: 2 epochs of 128 32x32 pairs at batch 8 (32 steps) on a width-16 U-Net
# outlast the kill at the step-4 checkpoint by seconds (~0.15 s a step on 2 cores).
LONG = {
    "model": "unet",
    "model_options": {"width": 16, "depth": 2},
    "epochs": 2,
    "batch_size": 8,
    "lr": 3e-3,
    "checkpoint_every": 4,
    "max_restarts": 0,
    "device": "cpu",
}
LONG_STEPS = 32
DEADLINE_S = 120.0


def _train(
    dataset: str, *, output: str | None = None, return_state: bool = False, **settings: Any
) -> Any:
    """The flow, with ``settings`` a dict of TrainingSettings fields as the CLI sends them."""
    return distributed_training(
        dataset, settings=settings, output=output, return_state=return_state
    )


def _isolated_run(root: Path, **kwargs: Any) -> TrainingResult:
    """A flow run outside the per-test directories (for module-scoped fixtures)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SCIFLOW_STORAGE_ROOT", str(root / "runs"))
        patch.setenv("SCIFLOW_SCRATCH_ROOT", str(root / "scratch"))
        get_settings.cache_clear()
        try:
            return _train(**kwargs)
        finally:
            get_settings.cache_clear()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """32 training and 8 validation pairs of 16x16 images."""
    root = tmp_path_factory.mktemp("set")
    write_synthetic_set(str(root), train=32, validation=8, size=16, seed=2)
    return str(root)


@pytest.fixture(scope="module")
def long_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """128 training pairs of 32x32 images, for a run long enough to be killed mid-way."""
    root = tmp_path_factory.mktemp("long-set")
    write_synthetic_set(str(root), train=128, validation=16, size=32, seed=4)
    return str(root)


@pytest.fixture(scope="module")
def linear_output(tmp_path_factory: pytest.TempPathFactory, dataset: str) -> Path:
    """An output holding checkpoints of a trained linear model (one process, 4 steps)."""
    root = tmp_path_factory.mktemp("linear")
    _isolated_run(
        root,
        dataset=dataset,
        model="linear",
        procs_per_node=1,
        batch_size=8,
        max_steps=4,
        checkpoint_every=2,
        device="cpu",
        output=str(root / "out"),
    )
    return root / "out"


def _checkpoint_bytes(output: Path) -> dict[str, bytes]:
    files = sorted((output / "checkpoints").iterdir())
    assert files, f"no checkpoints in {output}"
    return {p.name: p.read_bytes() for p in files}


def _artifacts(flow_run_id: Any) -> list[Any]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def _run(**kwargs: Any) -> tuple[TrainingResult, Any]:
    """Run the flow; its result and flow run id."""
    state = _train(**kwargs, return_state=True)
    assert state.is_completed(), state.message
    return state.result(), state.state_details.flow_run_id


def _check_outputs(result: TrainingResult, output: Path, processes: int) -> dict[str, Any]:
    assert result.output == str(output)
    for name in OUTPUT_FILES:
        assert (output / name).is_file(), name
    assert result.model == str(output / "model" / "model.pt")
    assert result.curves == str(output / "loss.png")
    assert (output / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.samples_per_s > 0
    assert 0 <= result.data_wait_fraction < 1
    assert math.isfinite(result.val_loss)
    assert result.val_loss > 0
    assert math.isfinite(result.final_loss)
    assert result.resumed_from == 0

    with warnings.catch_warnings():  # torch 2.9+ steers to torch.export; model.pt is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.load(str(output / "model" / "model.pt"))
    with torch.no_grad():
        image = torch.rand(1, 1, 16, 16)
        mapped = scripted(image)
    assert mapped.shape == (1, 1, 16, 16)
    assert torch.isfinite(mapped).all()

    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["steps"] == result.steps
    assert metrics["val_loss"] == pytest.approx(result.val_loss)
    rates = metrics["samples_per_s_per_process"]
    assert len(rates) == processes
    assert all(rate > 0 for rate in rates)
    return metrics


def _check_artifacts(flow_run_id: Any) -> None:
    artifacts = _artifacts(flow_run_id)
    summaries = [a for a in artifacts if a.type == "markdown" and a.key.startswith("training-")]
    assert summaries, [(a.type, a.key) for a in artifacts]
    assert "samples/s" in summaries[0].data
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress, [(a.type, a.key) for a in artifacts]
    assert progress[0].data == 100.0


# --- end to end -------------------------------------------------------------------------------


def test_ddp_with_two_ranks_writes_a_scripted_model_metrics_and_artifacts(tmp_path, dataset):
    output = tmp_path / "ddp"
    result, run_id = _run(
        dataset=dataset, **TINY_UNET, procs_per_node=2, batch_size=8, epochs=2, lr=3e-3,
        output=str(output),
    )  # fmt: skip

    assert result.steps == 8  # 2 epochs x 32 samples / global batch 8
    metrics = _check_outputs(result, output, processes=2)
    assert metrics["strategy"] == "ddp"
    store = CheckpointStore(str(output / "checkpoints"))
    assert store.steps()[-1] == result.steps  # the final model is checkpointed
    _check_artifacts(run_id)


def test_parameter_server_with_two_workers_writes_the_same_outputs(tmp_path, dataset):
    output = tmp_path / "ps"
    result, run_id = _run(
        dataset=dataset, **TINY_UNET, strategy="parameter_server", procs_per_node=2,
        batch_size=8, max_steps=6, output=str(output),
    )  # fmt: skip

    assert result.steps == 6
    metrics = _check_outputs(result, output, processes=2)
    assert metrics["strategy"] == "parameter_server"
    _check_artifacts(run_id)


# --- kill and resume --------------------------------------------------------------------------


def _wait_for(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:  # gone meanwhile
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _reading(config: Path) -> list[int]:
    """Pids of the processes whose command line names ``config``."""
    return sorted(
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and str(config) in _cmdline(int(entry.name))
    )


def _ddp_ranks(config: Path) -> list[int]:
    """Pids of the DDP ranks reading ``config`` (torchrun's children, not loader workers)."""
    return [
        pid
        for pid in _reading(config)
        if "tasks.training.ddp" in _cmdline(pid)
        and "torch.distributed.run" in _cmdline(_parent(pid))
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, long_dataset: str) -> TrainingResult:
    """The long run, never killed: what a killed and resumed run must end at."""
    root = tmp_path_factory.mktemp("whole")
    return _isolated_run(root, dataset=long_dataset, output=str(root / "out"), **LONG)


def _kill_a_rank_after_step_4(output: Path, **kwargs: Any) -> tuple[Any, int]:
    """Run the flow in a thread, SIGKILL one DDP rank once step 4 is checkpointed.

    Returns the flow run's final state and the killed pid.
    """
    states: list[Any] = []

    def run_in_background() -> None:
        states.append(_train(output=str(output), **kwargs, return_state=True))

    runner = threading.Thread(target=run_in_background, daemon=True)
    runner.start()
    step_4 = output / "checkpoints" / "step-000000004.json"
    _wait_for(step_4.is_file, "the step-4 checkpoint")
    ranks = _wait_for(lambda: _ddp_ranks(output / "config.json"), "the DDP ranks in /proc")
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    runner.join(DEADLINE_S)
    assert not runner.is_alive(), "the flow did not end after its rank was killed"
    (state,) = states
    return state, ranks[-1]


def test_a_killed_rank_fails_the_flow_and_a_rerun_resumes_to_the_uninterrupted_result(
    tmp_path, long_dataset, uninterrupted
):
    output = tmp_path / "broken"
    checkpoints = CheckpointStore(str(output / "checkpoints"))

    state, victim = _kill_a_rank_after_step_4(output, dataset=long_dataset, **LONG)
    saved = checkpoints.latest()

    # torchrun and the surviving rank are stopped with the flow; the killed rank's DataLoader
    # worker (its own process group, orphaned) notices its parent is gone and exits.
    left = _reading(output / "config.json")
    assert all(_comm(pid) in ("pt_data_worker", "") for pid in left), left
    _wait_for(lambda: not _reading(output / "config.json"), "orphaned loader workers to exit")
    assert state.is_failed(), state
    assert "SIGKILL" in state.message, state.message
    assert str(victim) in state.message, state.message
    assert saved is not None
    assert 4 <= saved.step < LONG_STEPS
    assert not (output / "metrics.json").exists()

    resumed, _ = _run(dataset=long_dataset, output=str(output), resume=True, **LONG)

    assert resumed.resumed_from == saved.step
    assert resumed.steps == uninterrupted.steps == LONG_STEPS
    assert uninterrupted.resumed_from == 0
    assert resumed.val_loss == pytest.approx(uninterrupted.val_loss, rel=1e-4)


def test_with_a_restart_left_torchrun_resumes_within_the_same_flow_run(
    tmp_path, long_dataset, uninterrupted
):
    output = tmp_path / "restarted"

    state, _ = _kill_a_rank_after_step_4(
        output, dataset=long_dataset, **{**LONG, "max_restarts": 1}
    )

    assert state.is_completed(), state.message
    result = state.result()
    assert result.resumed_from >= 4
    assert result.steps == LONG_STEPS
    assert result.val_loss == pytest.approx(uninterrupted.val_loss, rel=1e-4)
    progress = [a for a in _artifacts(state.state_details.flow_run_id) if a.type == "progress"]
    assert [a.data for a in progress] == [100.0]


# --- bad input --------------------------------------------------------------------------------


def _refused(output: Path, match: str, **kwargs: Any) -> InputError:
    """The flow raises InputError matching ``match`` without writing config.json."""
    with pytest.raises(InputError, match=match) as caught:
        _train(output=str(output), **kwargs)
    assert not (output / "config.json").exists()  # no process was given a config to read
    return caught.value


def test_an_empty_data_set_is_refused(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    manifest = {
        "format": "sciflow-training-set",
        "version": 1,
        "channels": 1,
        "shape": [16, 16],
        "train": [],
        "validation": [],
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    _refused(tmp_path / "out", "empty data set.*no train samples", dataset=str(root), **TINY_UNET)


def test_images_the_unet_cannot_halve_twice_are_refused_naming_the_shape(tmp_path):
    root = tmp_path / "odd"
    write_synthetic_set(str(root), train=8, validation=2, size=18)
    _refused(tmp_path / "out", r"\(1, 18, 18\).*divisible by 4", dataset=str(root), **TINY_UNET)


def test_an_unknown_model_is_refused_listing_the_known_ones(tmp_path, dataset):
    error = _refused(tmp_path / "out", "unknown model 'resnet9000'", dataset=dataset,
                     model="resnet9000")  # fmt: skip
    assert all(name in str(error) for name in ("unet", "convnet", "linear"))


def test_checkpoints_of_another_model_are_refused_and_left_untouched(linear_output, dataset):
    before = _checkpoint_bytes(linear_output)
    with pytest.raises(InputError) as caught:
        _train(dataset, output=str(linear_output), **TINY_UNET)
    message = str(caught.value)
    assert "linear" in message, message
    assert "unet" in message, message
    assert _checkpoint_bytes(linear_output) == before


def test_resume_false_over_existing_checkpoints_is_refused_and_leaves_them(linear_output, dataset):
    before = _checkpoint_bytes(linear_output)
    with pytest.raises(InputError, match=r"resume=False"):
        _train(
            dataset,
            model="linear",
            procs_per_node=1,
            resume=False,
            device="cpu",
            output=str(linear_output),
        )
    assert _checkpoint_bytes(linear_output) == before


def test_more_processes_than_training_samples_is_refused(tmp_path):
    root = tmp_path / "small"
    write_synthetic_set(str(root), train=2, validation=1, size=16)
    _refused(
        tmp_path / "out", "more processes than data shards", dataset=str(root), **TINY_UNET,
        procs_per_node=4, batch_size=4,
    )  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="NCCL is refused only without a CUDA GPU")
def test_nccl_without_a_gpu_is_refused(tmp_path, dataset):
    options = {**TINY_UNET, "device": "auto"}  # device="cpu" with NCCL is refused sooner
    _refused(tmp_path / "out", "backend='nccl'.*no CUDA GPU", dataset=dataset, **options,
             backend="nccl")  # fmt: skip


def _refused_settings(output: Path, match: str, **kwargs: Any) -> None:
    """Prefect refuses the settings before the flow starts: no config.json is written."""
    with pytest.raises(ParameterTypeError, match=match):
        _train(output=str(output), **kwargs)
    assert not (output / "config.json").exists()


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, dataset):
    _refused_settings(tmp_path / "out", "batch_size=7 does not split over 2 processes",
                      dataset=dataset, **TINY_UNET, batch_size=7)  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"epochs": 0}, r"settings.epochs: Input should be greater than or equal to 1"),
        ({"epoch": 2}, r"settings.epoch: Extra inputs are not permitted"),
        ({"strategy": "allreduce"}, r"settings.strategy: Input should be 'ddp' or 'parameter_s"),
    ],
)
def test_settings_given_as_a_dict_are_refused_naming_the_field(tmp_path, dataset, settings, match):
    _refused_settings(tmp_path / "out", match, dataset=dataset, **TINY_UNET, **settings)


def test_more_than_one_node_on_the_local_unit_is_refused(tmp_path, dataset):
    _refused(tmp_path / "out", r"nodes=2 on the local unit 'local'; expected 1", dataset=dataset,
             **TINY_UNET, nodes=2, procs_per_node=1)  # fmt: skip


def test_a_sample_file_of_the_wrong_shape_fails_the_run_naming_the_file(tmp_path):
    """Not caught before the processes start (check_inputs reads the first sample only): the
    rank that loads the file fails with an InputError, which the flow raises as such."""
    root = tmp_path / "mixed"
    write_synthetic_set(str(root), train=8, validation=2, size=16)
    manifest = json.loads((root / "manifest.json").read_text())
    bad = root / manifest["train"][3]["input"]
    np.save(bad, np.zeros((1, 8, 8), dtype=np.float32))
    with pytest.raises(InputError, match=rf"mismatched data set: .*{bad.name}.*\(1, 16, 16\)"):
        _train(str(root), output=str(tmp_path / "out"), **TINY_UNET, max_restarts=0)


def test_publish_as_puts_the_final_model_in_the_registry(tmp_path, dataset):
    from blocks.compute_unit import local_unit

    result = distributed_training(
        dataset,
        settings={"model": "linear", "procs_per_node": 1, "batch_size": 8, "max_steps": 2},
        output=str(tmp_path / "out"),
        publish_as="tiny-linear",
    )
    assert result.published_version == "1"
    manifest = local_unit().registry().get("tiny-linear", "1")
    assert "model/state_dict.pt" in {f.path for f in manifest.files}
    assert manifest.metrics["steps"] == 2


def test_a_bad_publish_name_is_refused_before_training(tmp_path, dataset):
    with pytest.raises(InputError, match="model name 'tiny linear' is invalid"):
        distributed_training(dataset, output=str(tmp_path / "out"), publish_as="tiny linear")
    assert not (tmp_path / "out" / "config.json").exists()
