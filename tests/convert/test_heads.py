"""Custom heads and exported programs convert: every head form equals crops on a padding-free net.

A classifier fine-tuned elsewhere often has a head of its own after the pooling: a softmax or a
sigmoid at the end, norms between several Linears, squeezes and reshapes spelled many ways.
Each form below is checked against the unmodified model on every window (``crops``), which is
exact on a network without zero padding. ``torch.export`` programs (fx graphs of ATen operators,
before and after ``run_decompositions``) convert too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.errors import ConversionError
from heatmap_cli.models.archives import exported_module
from tests.helpers.nets import NATIVE_STRIDE, WINDOW, padding_free_body, seeded

CLASSES = 5
HeadFunction = Callable[["HeadNet", torch.Tensor], torch.Tensor]


class HeadNet(nn.Module):
    """The padding-free body (16 x 3 x 3 features at 44 x 44) and a head given as a function."""

    def __init__(self, head: HeadFunction) -> None:
        super().__init__()
        self.features = padding_free_body()
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, CLASSES)
        self.one = nn.Linear(24, 1)
        self.volume_fc = nn.Linear(16 * 3 * 3, CLASSES)
        self.bn = nn.BatchNorm1d(24)
        self.norm = nn.LayerNorm(24)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.3)
        self.softmax = nn.Softmax(dim=1)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self, self.features(x))


def _pooled(f: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(f, 1)


HEADS: dict[str, HeadFunction] = {
    "torch.softmax over the last dim": lambda m, f: torch.softmax(
        m.fc2(F.relu(m.fc1(f.mean((2, 3))))), -1
    ),
    "nn.Softmax after nn.Flatten and dropout": lambda m, f: m.softmax(
        m.fc2(m.dropout(m.fc1(m.flatten(_pooled(f)))))
    ),
    "log_softmax method": lambda m, f: m.fc2(m.fc1(_pooled(f).flatten(1))).log_softmax(dim=1),
    "sigmoid of one output, squeezed": lambda m, f: torch.sigmoid(
        m.one(F.hardswish(m.fc1(f.mean((2, 3)))))
    ).squeeze(1),
    "BatchNorm1d and LayerNorm between Linears": lambda m, f: m.fc2(
        m.norm(F.gelu(m.bn(m.fc1(torch.flatten(f.mean((2, 3), keepdim=True), 1)))))
    ),
    "F.batch_norm and a reshape by the input's batch": lambda m, f: F.log_softmax(
        m.fc2(
            F.batch_norm(
                m.fc1(f.mean((2, 3))).reshape(f.shape[0], -1),
                m.bn.running_mean,
                m.bn.running_var,
                m.bn.weight,
                m.bn.bias,
            )
        ),
        -1,
    ),
    "a view of the whole volume, then softmax": lambda m, f: F.softmax(
        m.volume_fc(f.view(f.size(0), -1)), dim=1
    ),
    "F.layer_norm with its weights by keyword": lambda m, f: m.fc2(
        F.layer_norm(m.fc1(f.amax((2, 3))), (24,), weight=m.norm.weight, bias=m.norm.bias)
    ),
    "torch.squeeze and Tensor.squeeze of an adaptive pool": lambda m, f: F.softmax(
        m.fc2(F.relu6(m.fc1(torch.squeeze(_pooled(f), -1).squeeze(-1)))), 1
    ),
}


def head_net(head: HeadFunction, seed: int = 0) -> HeadNet:
    net = seeded(lambda: HeadNet(head), seed)
    for norm in (net.norm,):
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.2)
    return net


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def grid_input() -> torch.Tensor:
    """Two images of 3 x 4 windows at the native stride."""
    size = (WINDOW[0] + 2 * NATIVE_STRIDE, WINDOW[1] + 3 * NATIVE_STRIDE)
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("form", list(HEADS))
def test_every_head_form_equals_crops(form: str) -> None:
    net = head_net(HEADS[form])
    x = grid_input()
    with torch.inference_mode():
        dense = score_grid(net, x, input_size=WINDOW)
        crops = score_grid(net, x, method="crops", stride=NATIVE_STRIDE, input_size=WINDOW)
        original = net(x[:, :, : WINDOW[0], : WINDOW[1]])
    classes = 1 if "one output" in form else CLASSES
    assert dense.shape == crops.shape == (2, classes, 3, 4)
    assert relative_error(crops, dense) < 1e-5
    assert torch.allclose(dense[:, :, 0, 0], original.reshape(2, classes), atol=1e-6)


@pytest.mark.parametrize("form", [f for f in HEADS if "softmax" in f and "log" not in f])
def test_a_softmax_ending_head_gives_probabilities_per_cell(form: str) -> None:
    net = head_net(HEADS[form])
    with torch.inference_mode():
        dense = score_grid(net, grid_input(), input_size=WINDOW)
    assert (dense >= 0).all()
    assert torch.allclose(dense.sum(1), torch.ones(2, 3, 4), atol=1e-6)


@pytest.mark.parametrize(
    ("head", "match"),
    [
        (lambda m, f: torch.softmax(m.fc2(m.fc1(f.mean((2, 3)))), 0), "other than the classes"),
        (lambda m, f: torch.softmax(_pooled(f), -1).flatten(1), "other than the classes"),
        (lambda m, f: m.volume_fc(torch.softmax(f.flatten(1), 1)), "other than the classes"),
    ],
    ids=["over the batch", "over a pooled map's width", "over a flattened volume"],
)
def test_a_softmax_over_something_else_is_refused(head: HeadFunction, match: str) -> None:
    with pytest.raises(ConversionError, match=match):
        convolutionalize(head_net(head), WINDOW)


# --- torch.export programs ------------------------------------------------------------------


def exported(model: nn.Module, path: Path, size: tuple[int, int], decompose: bool) -> nn.Module:
    """``model`` exported at batch 1, saved and loaded back as the archive source loads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(1, 3, *size),))
        if decompose:
            program = program.run_decompositions()
        torch.export.save(program, path)
    module, window = exported_module(path)
    assert window == size
    return module


@pytest.mark.parametrize("decompose", [False, True], ids=["training IR", "core ATen IR"])
@pytest.mark.parametrize("form", [next(iter(HEADS)), "BatchNorm1d and LayerNorm between Linears"])
def test_an_exported_head_converts_and_equals_crops(form: str, decompose: bool, tmp_path) -> None:
    net = head_net(HEADS[form])
    module = exported(net, tmp_path / "net.pt2", WINDOW, decompose)
    x = grid_input()
    with torch.inference_mode():
        dense = score_grid(module, x, input_size=WINDOW)
        crops = score_grid(net, x, method="crops", stride=NATIVE_STRIDE, input_size=WINDOW)
    assert relative_error(crops, dense) < 1e-5


@pytest.mark.parametrize("decompose", [False, True], ids=["training IR", "core ATen IR"])
def test_an_exported_resnet_converts_like_the_model(decompose: bool, tmp_path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    module = exported(model, tmp_path / "resnet18.pt2", (64, 64), decompose)
    x = torch.randn(2, 3, 64 + 2 * 32, 64 + 32)
    with torch.inference_mode():
        converted = convolutionalize(module, (64, 64))
        reference = convolutionalize(model, (64, 64))
        assert converted.stride == reference.stride == 32
        assert relative_error(reference(x), converted(x)) < 1e-5


def test_an_exported_program_dilates_and_tiles_exactly(tmp_path) -> None:
    from heatmap_cli.grid.pixels import normalize
    from heatmap_cli.grid.tiling import tiled_score_grid

    net = head_net(HEADS["BatchNorm1d and LayerNorm between Linears"])
    module = exported(net, tmp_path / "net.pt2", WINDOW, decompose=False)
    x = grid_input()
    with torch.inference_mode():
        dilated = score_grid(
            module, x, stride=NATIVE_STRIDE // 2, method="dilate", input_size=WINDOW
        )
        crops = score_grid(net, x, method="crops", stride=NATIVE_STRIDE // 2, input_size=WINDOW)
        assert relative_error(crops, dilated) < 1e-5  # padding-free: dilation is exact
        converted = convolutionalize(module, WINDOW)
        pixels = np.random.default_rng(0).integers(0, 256, (44 + 8 * 30, 44 + 8 * 20, 3), np.uint8)
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        whole = converted(normalize(pixels, mean, std))
        tiled = tiled_score_grid(converted, pixels, mean=mean, std=std, tile=120)
    assert relative_error(whole, tiled) < 1e-5
