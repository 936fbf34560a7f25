"""The default model without timm: Lite0 against timm's tf_efficientnet_lite0, and cheap imports."""

import operator
import subprocess
import sys

import pytest
import timm
import torch
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from heatmap_cli.convert.fx import trace_model
from heatmap_cli.convert.shapes import meta_clone, meta_input, shape_pass
from heatmap_cli.models import imagenet_categories
from heatmap_cli.models.lite0 import LITE0_CONFIG, Lite0


def _timm_lite0(num_classes: int = 1000) -> nn.Module:
    """timm's model with random weights and batch-norm statistics far from the defaults."""
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.normal_(generator=generator)
            module.bias.data.normal_(generator=generator)
    return model.eval()


@pytest.mark.parametrize("num_classes", [1000, 7])
def test_lite0_computes_timms_model(num_classes):
    reference = _timm_lite0(num_classes)
    ours = Lite0(num_classes).eval()
    theirs = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.items()
    }
    ours.load_state_dict(theirs, strict=True)
    x = torch.randn(2, 3, 251, 300, generator=torch.Generator().manual_seed(2))  # odd sizes: TF pad
    with torch.inference_mode():
        expected, got = reference(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_lite0_has_timms_layer_kinds_where_the_walkers_look():
    reference, ours = _timm_lite0(), Lite0()
    for (name, theirs), (our_name, module) in zip(
        _weighted(reference), _weighted(ours), strict=True
    ):
        assert name == our_name
        ported = {"Conv2dSame": "BandedSameConv2d"}  # the same numbers, in bands when large
        assert ported.get(type(theirs).__name__, type(theirs).__name__) == type(module).__name__
        if isinstance(module, nn.Conv2d):
            assert (module.kernel_size, module.stride, module.padding, module.groups) == (
                theirs.kernel_size,
                theirs.stride,
                theirs.padding,
                theirs.groups,
            )
        if isinstance(module, nn.BatchNorm2d):
            assert module.eps == theirs.eps
            assert type(module.act).__name__ == type(theirs.act).__name__


def _weighted(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))
    ]


def test_lite0_preprocessing_is_timms():
    cfg = timm.create_model("tf_efficientnet_lite0", pretrained=False).pretrained_cfg
    assert {key: cfg[key] for key in LITE0_CONFIG} == LITE0_CONFIG


def test_default_model_is_built_without_timm(pretrained):
    assert isinstance(pretrained.model, Lite0)
    assert pretrained.categories == imagenet_categories()
    assert (pretrained.mean, pretrained.std) == (LITE0_CONFIG["mean"], LITE0_CONFIG["std"])
    assert pretrained.interpolation == LITE0_CONFIG["interpolation"]


def test_imagenet_categories_are_torchvisions():
    expected = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert imagenet_categories() == tuple(expected)


def test_loading_and_converting_the_default_model_imports_no_timm_torchvision_or_dynamo():
    code = (
        "import sys\n"
        "from heatmap_cli.models import load_model\n"
        "from heatmap_cli.convert.network import convolutionalize\n"
        "net = convolutionalize(load_model().model.eval(), input_size=(224, 224))\n"
        "heavy = ('timm', 'torchvision', 'torch._dynamo')\n"
        "print(net.stride, [name for name in heavy if name in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stdout.split() == ["32", "[]"]


class _Mixed(nn.Module):
    """Residual adds, a scaling product, a broadcast, activations, an adaptive pool, a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.SiLU()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Sigmoid())
        self.pool = nn.AdaptiveAvgPool2d((2, None))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.conv(x)))
        y = operator.mul(y, self.gate(y)) + y
        y = torch.sub(y, y.mean((2, 3), keepdim=True)) * 0.5
        return self.fc(self.pool(y).flatten(2).transpose(1, 2))


@pytest.mark.parametrize("make", [Lite0, _Mixed], ids=["lite0", "mixed"])
def test_shape_pass_records_the_shapes_torch_computes(make):
    graph_module = trace_model(make().eval())
    ours = meta_clone(graph_module)
    shape_pass(ours, (67, 45))
    plain = meta_clone(graph_module)
    ShapeProp(plain).propagate(meta_input(plain, (67, 45), 2))
    assert _shapes(ours) == _shapes(plain)


def _shapes(graph_module: fx.GraphModule) -> dict[str, tuple[object, object]]:
    found = {}
    for node in graph_module.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            found[node.name] = (tuple(meta.shape), meta.dtype)
    return found
