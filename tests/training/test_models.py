"""The model registry: shapes, errors, TorchScript, batch-split independence, seeding."""

from __future__ import annotations

import io

import pytest
import torch

from tasks.errors import InputError
from tasks.training.models import build_model, check_input_shape, model_names

# The brief asks for TorchScript; torch 2.13 marks torch.jit deprecated but it still works.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"
)


def seeded(name: str, seed: int = 0, **options: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, **options).eval()


def test_model_names_lists_the_registry() -> None:
    assert model_names() == ["convnet", "linear", "unet"]


@pytest.mark.parametrize("name", ["unet", "convnet", "linear"])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_keeps_shape_and_dtype(name: str, channels: int) -> None:
    x = torch.randn(2, channels, 16, 24)
    y = seeded(name, channels=channels)(x)
    assert y.shape == x.shape
    assert y.dtype == torch.float32


def test_unknown_model_names_it_and_the_known_ones() -> None:
    with pytest.raises(InputError, match=r"'resnet'.*\['convnet', 'linear', 'unet'\]"):
        build_model("resnet")


def test_unknown_option_names_it_and_the_model() -> None:
    with pytest.raises(InputError, match=r"'linear' has no option 'width'"):
        build_model("linear", width=8)


@pytest.mark.parametrize("value", [0, 2.5, True, "4"])
def test_invalid_option_value_names_the_option(value: object) -> None:
    with pytest.raises(InputError, match=r"'unet' option depth="):
        build_model("unet", depth=value)


@pytest.mark.parametrize("name", ["unet", "convnet", "linear"])
def test_torchscript_round_trip_gives_the_same_output(name: str) -> None:
    model = seeded(name, channels=2)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(3, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["unet", "convnet", "linear"])
def test_channels_last_matches_contiguous(name: str) -> None:
    model = seeded(name, channels=3)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unet_output_does_not_depend_on_how_the_batch_is_split() -> None:
    model = seeded("unet")
    model.train()  # GroupNorm has no running stats: train and eval agree per sample
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        whole = model(x)
        halves = torch.cat([model(x[:2]), model(x[2:])])
    torch.testing.assert_close(whole, halves, rtol=0, atol=1e-6)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_unet_is_residual_and_not_the_identity() -> None:
    model = seeded("unet")
    with torch.no_grad():
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
        x = torch.randn(1, 1, 8, 8)
        torch.testing.assert_close(model(x), x)


@pytest.mark.parametrize("name", ["unet", "convnet", "linear"])
def test_same_seed_same_parameters_other_seed_other(name: str) -> None:
    first, again, other = seeded(name, 0), seeded(name, 0), seeded(name, 1)
    for a, b in zip(first.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(
        torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters(), strict=True)
    )


def test_check_input_shape_rejects_sizes_the_unet_cannot_halve() -> None:
    with pytest.raises(InputError, match=r"\(1, 30, 30\).*divisible by 4"):
        check_input_shape("unet", {"depth": 2}, (1, 30, 30))
    check_input_shape("unet", {"depth": 2}, (1, 32, 28))
    check_input_shape("convnet", {}, (8, 1, 30, 30))  # any size goes through a conv stack


def test_check_input_shape_rejects_other_channel_counts() -> None:
    with pytest.raises(InputError, match=r"channels=1.*\(3, 16, 16\)"):
        check_input_shape("linear", {}, (3, 16, 16))


def test_unet_forward_names_an_indivisible_shape() -> None:
    with pytest.raises(InputError, match=r"\[1, 1, 30, 30\].*divisible by 4"):
        seeded("unet")(torch.randn(1, 1, 30, 30))
    with pytest.raises(torch.jit.Error, match=r"\[1, 1, 30, 30\]"):
        torch.jit.script(seeded("unet"))(torch.randn(1, 1, 30, 30))
