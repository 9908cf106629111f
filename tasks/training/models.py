"""The models a training run can name: small image-to-image networks on (N, C, H, W) float32.

Every model maps a batch to a batch of the same shape, is ``torch.jit.script``-able and works
in ``channels_last``. None has batch statistics (no BatchNorm) or dropout, so a sample's
output does not depend on which other samples share its batch: DDP parity tests compare a
batch against its halves. Parameters come from PyTorch's default init, so they depend only on
``torch.manual_seed`` before ``build_model``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tasks.errors import InputError


def _norm(features: int) -> nn.GroupNorm:
    """GroupNorm over at most 8 groups: per-sample statistics, unlike BatchNorm."""
    return nn.GroupNorm(gcd(8, features), features)


class _Block(nn.Module):
    """Two 3x3 convolutions, each followed by GroupNorm and SiLU."""

    def __init__(self, features_in: int, features_out: int) -> None:
        super().__init__()
        # No conv bias before GroupNorm: the norm cancels it, its gradient is rounding noise,
        # and Adam would turn that noise into full-size steps that differ between runs.
        self.body = nn.Sequential(
            nn.Conv2d(features_in, features_out, 3, padding=1, bias=False),
            _norm(features_out),
            nn.SiLU(),
            nn.Conv2d(features_out, features_out, 3, padding=1, bias=False),
            _norm(features_out),
            nn.SiLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """The stack applied to ``x`` (N, C, H, W); same shape."""
        return self.body(x)


class _Up(nn.Module):
    """Upsample x2, concatenate the encoder's skip, then a block."""

    def __init__(self, features_in: int, features_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(features_in, features_out, 2, stride=2)
        self.block = _Block(2 * features_out, features_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """A small residual 2-D U-Net denoiser: returns ``x + net(x)``.

    Args:
        channels: Image channels in and out.
        width: Features at the top level; doubled at each level down.
        depth: Downsampling steps; H and W must be divisible by ``2**depth``.
    """

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.multiple = 2**depth
        features = [width * 2**level for level in range(depth + 1)]
        self.stem = _Block(channels, width)
        self.down = nn.ModuleList(_Block(features[i], features[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(_Up(features[i + 1], features[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(width, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Denoised ``x``, same shape; H and W must be multiples of ``2**depth``."""
        h, w = x.shape[-2], x.shape[-1]
        if h % self.multiple != 0 or w % self.multiple != 0:
            raise InputError(
                f"unet input has shape {list(x.shape)}; expected H and W divisible by "
                f"{self.multiple} (2**depth)"
            )
        skips: list[Tensor] = []
        y = self.stem(x)
        for block in self.down:
            skips.append(y)
            y = block(F.avg_pool2d(y, 2))
        for up in self.up:
            y = up(y, skips.pop())
        return x + self.head(y)


class ConvNet(nn.Module):
    """A plain stack of 3x3 convolutions and ReLUs: compute-bound, for scaling benchmarks.

    Args:
        channels: Image channels in and out.
        width: Features of the hidden layers.
        layers: Hidden 3x3 convolutions (plus one in and one out).
    """

    def __init__(self, channels: int = 1, width: int = 32, layers: int = 4) -> None:
        super().__init__()
        body: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(layers):
            body += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        body.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*body)

    def forward(self, x: Tensor) -> Tensor:
        """The stack applied to ``x`` (N, C, H, W); same shape."""
        return self.body(x)


class Linear(nn.Module):
    """A per-pixel affine map across channels (a 1x1 convolution), for regression tests.

    Args:
        channels: Image channels in and out.
    """

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """The per-pixel affine map of ``x`` (N, C, H, W); same shape."""
        return self.conv(x)


@dataclass(frozen=True, slots=True)
class _Spec:
    factory: Callable[..., nn.Module]
    # H and W must be multiples of this, given the validated options.
    multiple: Callable[[dict[str, int]], int] = lambda options: 1


# Largest value of each model option, far past the models' useful sizes; what fits is the
# unit's memory check's to say (``memory_estimate``: a UNet of width 1024 and depth 8 would
# hold 10^12 parameters and is refused there, before it is built).
MAX_OPTIONS = {"channels": 1024, "width": 1024, "depth": 8, "layers": 256}

_MODELS: dict[str, _Spec] = {
    "unet": _Spec(UNet, lambda options: 2 ** options["depth"]),
    "convnet": _Spec(ConvNet),
    "linear": _Spec(Linear),
}


def model_names() -> list[str]:
    """Names ``build_model`` knows, sorted."""
    return sorted(_MODELS)


def model_options(name: str, options: dict[str, Any] | None = None) -> dict[str, int]:
    """A model's options with defaults filled in, checked.

    Args:
        name: Model name (``model_names()``).
        options: Keyword options given by the caller.

    Returns:
        Every option of the model, by name.

    Raises:
        InputError: Unknown model, unknown option, or an option that is not an int from 1 to
            its ``MAX_OPTIONS`` value.
    """
    spec = _spec(name)
    defaults = {
        key: param.default for key, param in inspect.signature(spec.factory).parameters.items()
    }
    given = dict(options or {})
    for key, value in given.items():
        if key not in defaults:
            raise InputError(
                f"model {name!r} has no option {key!r}; expected some of {sorted(defaults)}"
            )
        # bool is an int subclass, but depth=True is a mistake, not a 1.
        most = MAX_OPTIONS.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
            raise InputError(
                f"model {name!r} option {key}={value!r} is invalid; expected an integer 1 to {most}"
            )
    return {**defaults, **given}


def build_model(name: str, **options: Any) -> nn.Module:
    """A freshly initialised model (parameters from the current ``torch`` seed).

    Args:
        name: Model name: ``"unet"``, ``"convnet"`` or ``"linear"``.
        **options: The model's keyword options (e.g. ``channels``, ``width``, ``depth``).

    Returns:
        The module, float32, on the CPU, in training mode.

    Raises:
        InputError: Unknown model or option, or an invalid option value.
    """
    return _spec(name).factory(**model_options(name, options))


def check_input_shape(name: str, options: dict[str, Any] | None, shape: Sequence[int]) -> None:
    """Fail fast, before any training, when images cannot go through the model.

    Args:
        name: Model name.
        options: The model's options.
        shape: One image ``(C, H, W)`` or a batch ``(N, C, H, W)``.

    Raises:
        InputError: Names the shape and what the model expects (channels, a multiple of H, W).
    """
    full = model_options(name, options)
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (3, 4):
        raise InputError(f"model {name!r} got shape {shape}; expected (C, H, W) or (N, C, H, W)")
    channels, h, w = shape[-3:]
    if channels != full["channels"]:
        raise InputError(
            f"model {name!r} has channels={full['channels']} but the images have shape {shape} "
            f"({channels} channel(s)); set the model's channels option to {channels}"
        )
    multiple = _MODELS[name].multiple(full)
    if h % multiple or w % multiple:
        raise InputError(
            f"model {name!r} with options {full} cannot take images of shape {shape}: "
            f"H and W must be divisible by {multiple}; resample the set (size=...) or "
            "lower depth"
        )


# Bytes of the memory model (``memory_estimate``).
PROCESS_BASE_BYTES = 512 * 2**20  # Python and torch loaded in a training process
LOADER_BASE_BYTES = 256 * 2**20  # each DataLoader worker process


def memory_estimate(
    name: str, options: dict[str, Any] | None, shape: Sequence[int], loader_workers: int = 0
) -> int:
    """Peak memory of one training process, bytes: a planning model that errs high.

    The model is built on torch's meta device (shapes, no storage) and run once on a meta
    batch, so counting costs no memory whatever the options. float32: weights, gradients,
    Adam's two moments and DDP's gradient buckets (5 per parameter); every leaf module's output
    kept for the backward pass and its gradient (2 per element).

    Args:
        name: Model name.
        options: The model's options.
        shape: One process's batch, (N, C, H, W).
        loader_workers: DataLoader worker processes beside it.
    """
    with torch.device("meta"):
        model = build_model(name, **(options or {}))
        outputs = 0

        def count(module: nn.Module, inputs: Any, output: Any) -> None:
            nonlocal outputs
            outputs += output.numel() if isinstance(output, Tensor) else 0

        for module in model.modules():
            if not any(True for _ in module.children()):
                module.register_forward_hook(count)
        model(torch.empty(*shape))
    params = sum(p.numel() for p in model.parameters())
    return PROCESS_BASE_BYTES + loader_workers * LOADER_BASE_BYTES + 4 * (5 * params + 2 * outputs)


def _spec(name: str) -> _Spec:
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; expected one of {model_names()}")
    return _MODELS[name]
