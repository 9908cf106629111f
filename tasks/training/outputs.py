"""What a finished training run leaves under its output: model, metrics and loss curves.

``model/`` holds ``model.pt`` (TorchScript: loads with ``torch.jit.load`` and no sciflow),
``state_dict.pt`` (CPU tensors, for ``load_model``) and ``config.json`` (model spec,
parameter count, torch version and which formats were written), written last so that its
presence means the other two are there. ``metrics.json`` and ``loss.png`` sit beside it.

Each is written once (``put_once``): the same bytes again succeed, other content is refused,
so a finished run's model is never replaced by another's. The one exception is a run that
resumed from this output's own checkpoints (``continued``): it carries the same training on,
and its final files replace the earlier ones (each still written atomically).
"""

from __future__ import annotations

import copy
import io
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn

from tasks.storage.objects import ObjectStore, join_uri
from tasks.storage.transfer import put_once
from tasks.training.config import CURVES_NAME, METRICS_NAME, MODEL_DIR

TORCHSCRIPT_NAME = "model.pt"
STATE_DICT_NAME = "state_dict.pt"
MODEL_CONFIG_NAME = "config.json"
PNG_DPI = 100


def save_model(
    model: nn.Module,
    model_spec: Mapping[str, Any],
    output: str,
    store: ObjectStore | None = None,
    tags: Mapping[str, str] | None = None,
    example: torch.Tensor | None = None,
    continued: bool = False,
) -> dict[str, str]:
    """Write the trained model under ``output/model/``.

    TorchScript comes from ``torch.jit.script``, else ``torch.jit.trace`` on ``example``;
    if neither works ``model.pt`` is skipped and ``config.json`` says why. The exported
    model is a CPU copy in eval mode; ``model`` itself is left as it was.

    Args:
        model: The trained module; a DDP / DataParallel / ``torch.compile`` wrapper is unwrapped.
        model_spec: ``{"name": ..., "options": {...}}`` (``TrainConfig.model_spec``).
        output: The run's output directory URI.
        store: Object store; a default one if omitted.
        tags: S3 object tags.
        example: An input batch for tracing when scripting fails.
        continued: The run resumed from this output's checkpoints: replace earlier files.

    Returns:
        ``model`` (TorchScript, when written), ``state_dict`` and ``model_config`` -> URI.
    """
    store = store or ObjectStore()
    root = join_uri(output, MODEL_DIR)
    module = unwrap(model)
    cpu = copy.deepcopy(module).to("cpu").eval()
    written: dict[str, str] = {}

    scripted, how, error = _torchscript(cpu, example)
    if scripted is not None:
        uri = join_uri(root, TORCHSCRIPT_NAME)
        written["model"] = _write(store, uri, scripted, tags, continued)

    buffer = io.BytesIO()
    torch.save(cpu.state_dict(), buffer)
    written["state_dict"] = _write(
        store, join_uri(root, STATE_DICT_NAME), buffer.getvalue(), tags, continued
    )

    config = {
        "model": dict(model_spec),
        "parameters": sum(p.numel() for p in cpu.parameters()),
        "torch": torch.__version__,
        "formats": {
            "state_dict": STATE_DICT_NAME,
            **({"torchscript": TORCHSCRIPT_NAME} if scripted is not None else {}),
        },
        "torchscript": {"written": scripted is not None, "method": how, "error": error},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    text = json.dumps(config, indent=2).encode()
    written["model_config"] = _write(
        store, join_uri(root, MODEL_CONFIG_NAME), text, tags, continued
    )
    return written


def _write(
    store: ObjectStore, uri: str, data: bytes, tags: Mapping[str, str] | None, continued: bool
) -> str:
    """Once (``put_once``), or replacing the earlier file for a ``continued`` run."""
    if continued:
        return store.write_bytes(uri, data, tags)
    return put_once(store, uri, data, tags=tags)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel (``.module``) or ``torch.compile``."""
    # By type, not by attribute: a user's model may well have a submodule named ``module``.
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # OptimizedModule
            model = model._orig_mod
        else:
            return model


def _torchscript(
    model: nn.Module, example: torch.Tensor | None
) -> tuple[bytes | None, str | None, str | None]:
    """``(bytes, "script" | "trace", None)``, or ``(None, None, why)`` when neither works."""
    errors = []
    # torch.jit warns that it is deprecated in favour of torch.export; it still loads
    # everywhere torch does, which is what a finished model is for.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return _jit_bytes(torch.jit.script(model)), "script", None
        except Exception as exc:  # scripting fails in many ways (unsupported Python)
            errors.append(f"script: {_first_line(exc)}")
        if example is not None:
            try:
                with torch.no_grad():
                    traced = torch.jit.trace(model, example.detach().to("cpu"))
                return _jit_bytes(traced), "trace", None
            except Exception as exc:  # data-dependent control flow, wrong example shape
                errors.append(f"trace: {_first_line(exc)}")
        else:
            errors.append("trace: no example input given")
    return None, None, "; ".join(errors)


def _jit_bytes(module: Any) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def load_model(output: str, store: ObjectStore | None = None) -> nn.Module:
    """Rebuild a saved model from ``config.json`` and ``state_dict.pt``, in eval mode on the CPU.

    Args:
        output: The run's output directory URI (the one given to ``save_model``).
        store: Object store; a default one if omitted.
    """
    from tasks.training.models import build_model

    store = store or ObjectStore()
    root = join_uri(output, MODEL_DIR)
    config = json.loads(store.read_bytes(join_uri(root, MODEL_CONFIG_NAME)))
    spec = config["model"]
    model = build_model(spec["name"], **spec.get("options", {}))
    data = store.read_bytes(join_uri(root, STATE_DICT_NAME))
    model.load_state_dict(torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"))
    return model.eval()


def write_metrics(
    output: str,
    metrics: Mapping[str, Any],
    store: ObjectStore | None = None,
    tags: Mapping[str, str] | None = None,
    continued: bool = False,
) -> str:
    """Write ``metrics.json`` (indent 2); tensors and NumPy values become numbers and lists.

    Returns:
        Its URI.
    """
    store = store or ObjectStore()
    text = json.dumps(dict(metrics), indent=2, default=_plain)
    return _write(store, join_uri(output, METRICS_NAME), text.encode(), tags, continued)


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: tensors and NumPy arrays or scalars."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def plot_curves(history: Mapping[str, Sequence[Any]], title: str) -> bytes:
    """A PNG of training and validation loss against step, and throughput if recorded.

    Args:
        history: ``step`` and ``loss`` (one entry per logged step), ``val_step`` and
            ``val_loss`` (per evaluation), optionally ``samples_per_s`` (aligned with
            ``step``). Loss uses a log axis when every value is positive.
        title: Figure title.

    Returns:
        PNG bytes; a figure saying "no steps recorded" when the history is empty.
    """
    from matplotlib.figure import Figure

    train = _pairs(history, "step", "loss")
    val = _pairs(history, "val_step", "val_loss")
    speed = _pairs(history, "step", "samples_per_s")
    panels = 2 if speed else 1
    figure = Figure(figsize=(8, 3.5 + 2.5 * (panels - 1)), dpi=PNG_DPI, layout="constrained")
    figure.suptitle(title)
    if not train and not val:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no steps recorded", ha="center", va="center", fontsize=14)
        axes.set_axis_off()
        return _png(figure)

    axes = figure.add_subplot(panels, 1, 1)
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1)
    if val:
        axes.plot(*zip(*val, strict=True), "o-", label="validation loss", markersize=4)
    losses = [y for _, y in train + val]
    if all(y > 0 for y in losses):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss (MSE)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    if speed:
        lower = figure.add_subplot(panels, 1, 2, sharex=axes)
        lower.plot(*zip(*speed, strict=True), color="tab:green", linewidth=1)
        lower.set_xlabel("step")
        lower.set_ylabel("samples/s")
        lower.grid(True, alpha=0.3)
    return _png(figure)


def _pairs(history: Mapping[str, Sequence[Any]], x: str, y: str) -> list[tuple[float, float]]:
    """Finite ``(x, y)`` points (a NaN loss would blank a log axis)."""
    points = zip(history.get(x) or [], history.get(y) or [], strict=False)
    return [(float(a), float(b)) for a, b in points if math.isfinite(float(b))]


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


def write_curves(
    output: str,
    history: Mapping[str, Sequence[Any]],
    title: str,
    store: ObjectStore | None = None,
    tags: Mapping[str, str] | None = None,
    continued: bool = False,
) -> str:
    """Write ``plot_curves`` as ``loss.png`` under ``output``; returns its URI."""
    store = store or ObjectStore()
    png = plot_curves(history, title)
    return _write(store, join_uri(output, CURVES_NAME), png, tags, continued)
