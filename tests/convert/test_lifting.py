"""Exported graphs' ATen convolutions and batch norms made modules: same numbers, folded norms."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.convert.folding import fold_batch_norms
from heatmap_cli.convert.fx import trace_model
from heatmap_cli.convert.lifting import lift_modules
from tests.helpers.nets import NATIVE_STRIDE, WINDOW, PooledHeadNet, seeded


def exported_graph(model: nn.Module, window: tuple[int, int]) -> fx.GraphModule:
    """The model through torch.export, as the model sources read a ``.pt2`` archive."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(1, 3, *window),))
    return trace_model(program.module(check_guards=False)).eval()


def calls(graph_module: fx.GraphModule, target: object) -> int:
    return sum(node.target == target for node in graph_module.graph.nodes)


def test_a_padding_free_net_lifts_folds_and_still_equals_its_crops() -> None:
    model = seeded(PooledHeadNet)
    graph_module = exported_graph(model, WINDOW)
    assert calls(graph_module, torch.ops.aten.conv2d.default) == 4
    assert lift_modules(graph_module) == 5  # 4 convolutions, and the batch norm after one
    assert calls(graph_module, torch.ops.aten.conv2d.default) == 0
    # The head's BatchNorm1d reads a Linear, not a convolution: it stays a call.
    assert calls(graph_module, torch.ops.aten.batch_norm.default) == 1
    x = torch.randn(2, 3, *WINDOW)
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x), model(x), rtol=0, atol=0)
    net = convolutionalize(graph_module, WINDOW)
    folded = fold_batch_norms(net)
    assert folded is not None and folded[1] == 1
    photo = torch.randn(1, 3, WINDOW[0] + 3 * NATIVE_STRIDE, WINDOW[1] + 2 * NATIVE_STRIDE)
    crops = score_grid(model, photo, NATIVE_STRIDE, method="crops", input_size=WINDOW)
    with torch.no_grad():
        torch.testing.assert_close(folded[0](photo), crops, rtol=1e-5, atol=1e-5)


def test_an_exported_resnet18_folds_as_the_python_one_does() -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=3).eval()
    graph_module = exported_graph(resnet, (224, 224))
    assert lift_modules(graph_module) == 40  # 20 convolutions, each with its batch norm
    python = fold_batch_norms(convolutionalize(resnet, (224, 224)))
    lifted = fold_batch_norms(convolutionalize(graph_module, (224, 224)))
    assert python is not None and lifted is not None
    assert lifted[1] == python[1] == 20
    x = torch.randn(1, 3, 224 + 64, 224 + 32)
    with torch.no_grad():
        torch.testing.assert_close(lifted[0](x), python[0](x), rtol=0, atol=0)


class ComputedWeights(nn.Module):
    """A convolution whose weight is computed in the graph, and a batch norm after a pool."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("var", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(F.max_pool2d(x, 2), self.mean, self.var)
        return F.conv2d(x, self.weight * 2).mean((2, 3))


def test_calls_on_computed_tensors_or_unknown_inputs_stay_calls() -> None:
    model = ComputedWeights().eval()
    graph_module = exported_graph(model, (16, 16))
    assert lift_modules(graph_module) == 0
    assert calls(graph_module, torch.ops.aten.conv2d.default) == 1
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(graph_module(x), model(x))
