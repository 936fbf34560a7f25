"""TorchScript files made dense: torch.export's converter turns them into graphs that convert.

The reference is always the TorchScript module itself: the converted graph must give its scores
at the window, and on padding-free nets the dense grid must equal the TorchScript module run on
every window (crops). Where the converter fails, the module runs as crops, with one note.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.models import load_model
from heatmap_cli.models.torchscript import torchscript_graph
from heatmap_cli.pipeline.engine import build_grid_network
from tests.helpers.nets import ALL_NETS, NATIVE_STRIDE, WINDOW, PooledHeadNet, seeded


def save_torchscript(model: nn.Module, kind: str, path: Path, window: tuple[int, int]) -> Path:
    """``model`` scripted or traced (at ``window``), saved to ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "script":
            module = torch.jit.script(model)
        else:
            module = torch.jit.trace(model, torch.randn(1, 3, *window))
        torch.jit.save(module, str(path))
    return path


def reload(path: Path) -> nn.Module:
    """The saved TorchScript module, as the reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        return torch.jit.load(str(path)).eval()


@pytest.mark.parametrize("kind", ["script", "trace"])
@pytest.mark.parametrize("net_class", ALL_NETS, ids=lambda c: c.__name__)
def test_padding_free_torchscript_runs_dense_equal_to_its_crops(tmp_path, net_class, kind) -> None:
    path = save_torchscript(seeded(net_class), kind, tmp_path / "net.pt", WINDOW)
    script = reload(path)
    loaded = load_model(str(path), input_size=WINDOW)
    assert isinstance(loaded.model, fx.GraphModule)
    assert loaded.notes == ()
    assert loaded.source.endswith("(torchscript, converted to a graph)")
    x = torch.randn(3, 3, *WINDOW)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), script(x), rtol=0, atol=1e-6)
    # A photo of 3x4 windows at the native stride: every cell is a window the script sees whole.
    photo = torch.randn(1, 3, WINDOW[0] + 2 * NATIVE_STRIDE, WINDOW[1] + 3 * NATIVE_STRIDE)
    dense = score_grid(loaded.model, photo, method="dense", input_size=WINDOW)
    crops = score_grid(script, photo, NATIVE_STRIDE, method="crops", input_size=WINDOW)
    assert dense.shape == crops.shape == (1, 10, 3, 4)
    torch.testing.assert_close(dense, crops, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_a_resnet18_converts_equal_to_the_original_at_its_training_size(tmp_path, kind) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=2).eval()
    path = save_torchscript(resnet, kind, tmp_path / "resnet18.pt", (224, 224))
    script = reload(path)
    loaded = load_model(str(path), input_size=(224, 224))
    assert isinstance(loaded.model, fx.GraphModule)
    x = torch.randn(2, 3, 224, 224)
    net = convolutionalize(loaded.model, (224, 224))
    assert net.stride == 32
    with torch.no_grad():
        expected = script(x)
        torch.testing.assert_close(loaded.model(x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(net(x)[:, :, 0, 0], expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(expected, resnet(x), rtol=0, atol=1e-5)
        # Larger inputs give larger grids (the converted graph is not fixed at 224).
        assert net(torch.randn(1, 3, 224 + 64, 224 + 32)).shape == (1, 2, 3, 2)


class SamePadded(PooledHeadNet):
    """TF-"same" padding computed from the input's size, as Python numbers: traced, the sizes
    become tensors and the pads data-dependent values, which the converter cannot guard on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = x.size(-1)
        pad = max((math.ceil(side / 2) - 1) * 2 + 3 - side, 0)
        x = F.pad(x, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        return super().forward(x)


def test_what_the_converter_cannot_convert_runs_as_crops_with_a_note(tmp_path, capfd) -> None:
    path = save_torchscript(seeded(SamePadded), "trace", tmp_path / "same.pt", WINDOW)
    script = reload(path)
    loaded = load_model(str(path), input_size=WINDOW)
    assert isinstance(loaded.model, torch.jit.ScriptModule)
    assert len(loaded.notes) == 1
    note = loaded.notes[0]
    assert note.startswith(f"{path}: TorchScript not converted to a graph")
    assert "GuardOnDataDependentSymNode" in note
    assert note.endswith("), so it cannot run dense")
    assert len(note) < 400
    # torch.export's own report of the failure (the partial graph) never reaches the terminal.
    captured = capfd.readouterr()
    assert "def forward" not in captured.err + captured.out
    built = build_grid_network(loaded.model, WINDOW, method="auto", stride=None, batch_size=1)
    assert built.method == "crops"
    step = built.stride
    photo = torch.randn(1, 3, WINDOW[0] + step, WINDOW[1] + step)
    grid = score_grid(built.network, photo, step, method="crops", input_size=WINDOW)
    window = photo[:, :, step : step + WINDOW[0], step : step + WINDOW[1]]
    with torch.no_grad():
        torch.testing.assert_close(grid[:, :, 1, 1], script(window))


class Doubled(PooledHeadNet):
    """Returns two tensors: not a classifier the grid can use, and not converted."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = super().forward(x)
        return y, y


def test_a_graph_that_does_not_give_the_scripts_scores_is_not_used() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.trace(seeded(Doubled), torch.randn(1, 3, *WINDOW))
    conversion = torchscript_graph(script, WINDOW, "doubled")
    assert not conversion.converted
    assert conversion.model is script
    assert "doubled: TorchScript not converted" in conversion.notes[0]
