"""The shape pass against torch's own, on converted and a-trous graphs; and without sympy."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from heatmap_cli.convert.network import convolutionalize
from heatmap_cli.convert.shapes import meta_clone, meta_input, shape_pass
from heatmap_cli.grid.dilate import dilate
from heatmap_cli.models.lite0 import Lite0

REPO = Path(__file__).resolve().parents[2]


def _shapes(graph_module: fx.GraphModule) -> dict[str, tuple[object, object]]:
    found = {}
    for node in graph_module.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            found[node.name] = (tuple(meta.shape), meta.dtype)
    return found


def _graph_modules(net: nn.Module) -> list[fx.GraphModule]:
    return [module for module in net.modules() if isinstance(module, fx.GraphModule)]


class _Pools(nn.Module):
    """Pools with ceil mode, padding and dilation, a flatten and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 5, stride=2, padding=2, dilation=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, dilation=2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, stride=2, ceil_mode=True, count_include_pad=False)
        self.same = nn.Conv2d(6, 6, 3, padding="same")
        self.fc = nn.Linear(6 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.same(self.avg(self.pool(torch.relu(self.conv(x)))))
        return self.fc(torch.flatten(y, 1))


NETS = {
    "lite0": lambda: Lite0(1000),
    "resnet18": lambda: torchvision.models.resnet18(),
    "vgg11": lambda: torchvision.models.vgg11(),
    "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(),
    "pools": _Pools,
}


@pytest.mark.parametrize("name", list(NETS), ids=list(NETS))
@pytest.mark.parametrize("stride", [None, 16], ids=["native", "dilated"])
def test_converted_graphs_get_the_shapes_torch_computes(name: str, stride: int | None):
    model = NETS[name]().eval()
    window = (24, 24) if name == "pools" else (224, 224)
    squeeze_excite = pytest.warns(UserWarning, match="global pooling inside its body")
    with squeeze_excite if "mobilenet" in name else contextlib.nullcontext():
        net = convolutionalize(model, window)
    if stride is not None:
        net = dilate(net, net.stride // 2 if name == "pools" else stride)
    for graph_module in _graph_modules(net):
        weights = {name: t.clone() for name, t in graph_module.state_dict().items()}
        for size in [window, (window[0] + 96, window[1] + 160)]:
            plain = meta_clone(graph_module)
            ShapeProp(plain).propagate(meta_input(plain, size, 2))
            storage_less = meta_clone(graph_module)
            shape_pass(storage_less, size)  # type: ignore[arg-type]
            assert _shapes(storage_less) == _shapes(plain)
            shape_pass(graph_module, size)  # the module itself: nothing computed, nothing changed
            assert _shapes(graph_module) == _shapes(plain)
        after = graph_module.state_dict()
        assert all(torch.equal(weights[name], after[name]) for name in weights)


def test_converting_the_default_model_imports_no_sympy():
    script = (
        "import sys\n"
        "from heatmap_cli.models import load_model\n"
        "from heatmap_cli.convert.network import convolutionalize\n"
        "from heatmap_cli.grid.dilate import dilate\n"
        "net = convolutionalize(load_model().model, (224, 224))\n"
        "assert net.stride == 32 and net.grid_size((288, 320)) == (3, 4)\n"
        "dilate(net, 16)\n"
        "print('sympy' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.split() == ["False", "False"]
