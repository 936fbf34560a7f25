"""A strict library: it never changes the caller's model, takes any float dtype, says clearly what
it refuses, and never points to the method it just refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.errors import GeometryError, TrainingModeError
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from tests.helpers.nets import ALL_NETS, WINDOW, PooledHeadNet, TokenHead, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded


def batch_norm_state(model: nn.Module) -> list[torch.Tensor]:
    return [
        buffer.clone()
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
    ]


# --- training mode ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dense", "dilate", "stitch", "crops"])
def test_a_model_in_training_mode_is_refused_and_left_as_it_was(method: str) -> None:
    model = seeded(PooledHeadNet).train()
    before = batch_norm_state(model)
    x = torch.randn(2, 3, 60, 60)
    stride = None if method == "dense" else 4

    with pytest.raises(TrainingModeError, match=r"training mode.*call model\.eval\(\) first"):
        score_grid(model, x, stride=stride, method=method, input_size=WINDOW)

    after = batch_norm_state(model)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(module.training for module in model.modules())  # its mode is the caller's
    with pytest.raises(TrainingModeError):
        convolutionalize(model, WINDOW)
    assert score_grid(model.eval(), x, stride=stride, method=method, input_size=WINDOW).dim() == 4


def test_a_converted_net_whose_model_was_put_back_in_training_is_refused() -> None:
    model = seeded(VolumeHeadNet)
    net = convolutionalize(model, WINDOW)
    model.classifier[2].train()  # one dropout
    with pytest.raises(TrainingModeError, match=r"'classifier\.2'"):
        score_grid(net, torch.randn(1, 3, 52, 52), input_size=WINDOW)


# --- dtypes ----------------------------------------------------------------------------------


def test_a_float64_resnet18_converts_and_equals_its_own_logits() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval().double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)

    net = convolutionalize(model, 224)
    grid = net(x)

    assert grid.dtype == torch.float64 and grid.shape == (2, 1000, 1, 1)
    torch.testing.assert_close(grid[:, :, 0, 0], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("net_class", ALL_NETS)
def test_every_float_dtype_converts_and_scores(net_class, dtype) -> None:
    model = seeded(net_class).to(dtype)
    x = torch.randn(1, 3, *WINDOW, dtype=dtype)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(convolutionalize(model, WINDOW)(x)[:, :, 0, 0], expected)
    grid = score_grid(model, torch.randn(1, 3, 60, 68, dtype=dtype), 4, "dilate", WINDOW)
    assert grid.dtype == dtype and grid.shape == (1, 10, 5, 7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_the_engine_runs_a_model_in_its_own_dtype(dtype) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 60, 76, 3), dtype=np.uint8)
    reference = GridEngine(as_loaded(seeded(VolumeHeadNet), window=WINDOW), GridSettings(60))
    engine = GridEngine(
        as_loaded(seeded(VolumeHeadNet).to(dtype), window=WINDOW), GridSettings(60, stride=4)
    )
    assert engine.compute_dtype == dtype
    tiled = GridEngine(
        as_loaded(seeded(VolumeHeadNet).to(dtype), window=WINDOW), GridSettings(60, tile=52)
    )
    expected = reference.score(pixels)
    tolerance = 1e-5 if dtype == torch.float64 else 0.1
    torch.testing.assert_close(engine.score(pixels)[:, :, ::2, ::2], expected, atol=tolerance,
                               rtol=tolerance)  # fmt: skip
    torch.testing.assert_close(tiled.score(pixels[:1]), expected[:1], atol=tolerance, rtol=0.1)


# --- arguments -------------------------------------------------------------------------------


def test_input_size_is_an_int_or_a_pair() -> None:
    model = seeded(VolumeHeadNet)
    x = torch.randn(1, 3, 52, 60)
    square = score_grid(model, x, input_size=44)
    assert torch.equal(square, score_grid(model, x, input_size=(44, 44)))
    assert torch.equal(square, score_grid(model, x, input_size=[44, 44]))
    assert convolutionalize(model, 44).window == (44, 44)


@pytest.mark.parametrize("input_size", [44.0, "44", (44,), (44, 44, 3), (44.5, 44), None, True])
def test_an_input_size_of_the_wrong_type_is_a_type_error_naming_it(input_size) -> None:
    with pytest.raises(TypeError, match="input_size must be an int or an \\(h, w\\) pair"):
        convolutionalize(seeded(VolumeHeadNet), input_size)
    if input_size is None:  # score_grid: read from the model (tests/grid/test_conversion_cache)
        return
    with pytest.raises(TypeError, match="input_size"):
        score_grid(seeded(VolumeHeadNet), torch.randn(1, 3, 44, 44), input_size=input_size)


def test_a_model_or_input_of_the_wrong_type_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        score_grid("resnet50", torch.randn(1, 3, 224, 224))
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        convolutionalize("resnet50")
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor, got ndarray"):
        score_grid(seeded(VolumeHeadNet), np.zeros((1, 3, 44, 44)), input_size=WINDOW)
    with pytest.raises(GeometryError, match=r"float tensor of shape \(N, C, H, W\), got"):
        score_grid(seeded(VolumeHeadNet), torch.zeros(3, 44, 44), input_size=WINDOW)


def test_a_converted_net_refuses_an_input_smaller_than_its_window() -> None:
    net = convolutionalize(seeded(PooledHeadNet), WINDOW)
    with pytest.raises(ValueError, match="input 40x60 is smaller than the 44x44 window"):
        net(torch.randn(1, 3, 60, 40))


def test_refusals_never_point_to_the_method_just_refused() -> None:
    model = TokenHead().eval()
    with pytest.raises(GeometryError) as refused:
        score_grid(model, torch.randn(1, 3, 32, 48), method="crops", input_size=(32, 32))
    message = str(refused.value)
    assert "needs an explicit stride for TokenHead" in message and "stride=" in message
    assert "crops'," not in message.replace("method 'crops' needs", "")
    grid = score_grid(model, torch.randn(1, 3, 32, 48), 8, "crops", (32, 32))
    assert grid.shape == (1, 3, 1, 3)
