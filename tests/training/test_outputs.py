"""Outputs of a finished run: model files, TorchScript, metrics.json and the loss curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tasks.training.outputs import (
    load_model,
    plot_curves,
    save_model,
    unwrap,
    write_curves,
    write_metrics,
)

PNG = b"\x89PNG\r\n\x1a\n"
# torch.jit warns it is deprecated; the exported model.pt is meant for it all the same.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

SPEC = {"name": "convnet", "options": {"channels": 1, "width": 4, "layers": 1}}


def built() -> nn.Module:
    from tasks.training.models import build_model

    torch.manual_seed(0)
    return build_model(SPEC["name"], **SPEC["options"])


class Unscriptable(nn.Module):
    """Python TorchScript cannot compile (a lambda and **kwargs), but tracing can."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.act = lambda x: x * 2

    def forward(self, x: torch.Tensor, **extra: int) -> torch.Tensor:
        return self.act(self.linear(x))


def test_save_model_writes_three_files_and_torchscript_matches(tmp_path: Path) -> None:
    model = built()
    written = save_model(model, SPEC, str(tmp_path))

    assert set(written) == {"model", "state_dict", "model_config"}
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "config.json",
        "model.pt",
        "state_dict.pt",
    ]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model"] == SPEC
    assert config["parameters"] == sum(p.numel() for p in model.parameters())
    assert config["torch"] == torch.__version__
    assert config["torchscript"]["method"] == "script"
    assert set(config["formats"]) == {"state_dict", "torchscript"}

    x = torch.randn(2, 1, 8, 8)
    scripted = torch.jit.load(written["model"])
    with torch.no_grad():
        assert torch.allclose(scripted(x), model.eval()(x))
    state = torch.load(written["state_dict"], weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_load_model_rebuilds_the_same_function(tmp_path: Path) -> None:
    model = built()
    save_model(model, SPEC, str(tmp_path))
    loaded = load_model(str(tmp_path))
    x = torch.randn(1, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert not loaded.training


def test_save_model_unwraps_and_falls_back_to_trace(tmp_path: Path) -> None:
    model = nn.DataParallel(Unscriptable())  # CPU DataParallel just wraps, like DDP does
    assert isinstance(unwrap(model), Unscriptable)
    example = torch.randn(4, 3)
    written = save_model(model, {"name": "custom", "options": {}}, str(tmp_path), example=example)

    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["torchscript"]["method"] == "trace"
    state = torch.load(written["state_dict"], weights_only=True)
    assert set(state) == {"linear.weight", "linear.bias"}  # no "module." prefix
    traced = torch.jit.load(written["model"])
    with torch.no_grad():
        assert torch.allclose(traced(example), model.module(example))


def test_save_model_without_torchscript_says_why(tmp_path: Path) -> None:
    written = save_model(Unscriptable(), {"name": "custom", "options": {}}, str(tmp_path))

    assert set(written) == {"state_dict", "model_config"}
    assert not (tmp_path / "model" / "model.pt").exists()
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["torchscript"]["written"] is False
    assert "no example input" in config["torchscript"]["error"]
    assert set(config["formats"]) == {"state_dict"}


def test_metrics_round_trip(tmp_path: Path) -> None:
    metrics = {
        "steps": 40,
        "final_loss": torch.tensor(0.25),
        "samples_per_s": np.float32(512.0),
        "history": {"step": [1, 2], "loss": [1.0, 0.5]},
    }
    uri = write_metrics(str(tmp_path), metrics)
    assert uri == str(tmp_path / "metrics.json")
    text = Path(uri).read_text()
    assert text.startswith('{\n  "steps": 40')  # indent 2
    assert json.loads(text) == {
        "steps": 40,
        "final_loss": 0.25,
        "samples_per_s": 512.0,
        "history": {"step": [1, 2], "loss": [1.0, 0.5]},
    }


def test_metrics_refuse_unknown_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        write_metrics(str(tmp_path), {"model": object()})


def history(steps: int = 30) -> dict[str, list[float]]:
    step = list(range(1, steps + 1))
    return {
        "step": step,
        "loss": [math.exp(-s / 10) for s in step],
        "samples_per_s": [100.0 + s for s in step],
        "val_step": step[9::10],
        "val_loss": [math.exp(-s / 10) * 1.1 for s in step[9::10]],
    }


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_curves_draws_a_png_with_a_throughput_panel() -> None:
    with_speed = plot_curves(history(), "unet (ddp, 2 process(es))")
    without = plot_curves({k: v for k, v in history().items() if k != "samples_per_s"}, "t")
    # The samples/s panel makes the figure taller.
    assert png_size(with_speed)[1] > png_size(without)[1]


def test_plot_curves_handles_empty_and_non_positive_history() -> None:
    empty = plot_curves({}, "nothing")
    also_empty = plot_curves({"step": [], "loss": []}, "nothing")
    assert png_size(empty) == png_size(also_empty)
    assert empty != plot_curves(history(), "nothing")
    zeros = {"step": [1, 2, 3], "loss": [0.0, -1.0, float("nan")]}  # no log axis possible
    assert plot_curves(zeros, "zeros").startswith(PNG)


def test_write_curves(tmp_path: Path) -> None:
    uri = write_curves(str(tmp_path), history(), "run")
    assert uri == str(tmp_path / "loss.png")
    assert Path(uri).read_bytes().startswith(PNG)
