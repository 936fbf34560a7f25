"""The surgery: converted networks equal the original at the training size, on real models too."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from heatmap_cli import ConvolutionalizedNet, convolutionalize
from heatmap_cli.convert.ops import DEFAULT_MATMUL_MAX_CELLS, LinearAsConv2d, windowed_linear
from heatmap_cli.errors import ConversionError, TrainingModeError
from tests.helpers.nets import (
    ALL_NETS,
    NATIVE_STRIDE,
    NUM_CLASSES,
    WINDOW,
    FlattenOnlyNet,
    PooledHeadNet,
    TokenHead,
    VolumeHeadNet,
    seeded,
)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


@pytest.mark.parametrize("net_class", ALL_NETS)
def test_small_nets_equal_original_at_training_size(net_class):
    model = seeded(net_class)
    net = convolutionalize(model, WINDOW)
    x = torch.randn(2, 3, *WINDOW)
    with torch.no_grad():
        expected = model(x)
        grid = net(x)
    assert grid.shape == (2, NUM_CLASSES, 1, 1)
    assert relative_error(expected, grid[:, :, 0, 0]) < 1e-5
    assert net.stride == NATIVE_STRIDE
    assert net.window == WINDOW


@pytest.mark.parametrize("net_class", ALL_NETS)
def test_grid_shape_follows_window_plus_stride_multiples(net_class):
    net = convolutionalize(seeded(net_class), WINDOW)
    s = net.stride
    for rows, cols in [(1, 1), (3, 4), (5, 2)]:
        size = (WINDOW[0] + s * (rows - 1), WINDOW[1] + s * (cols - 1))
        assert net.grid_size(size) == (rows, cols)
        with torch.no_grad():
            assert net(torch.randn(1, 3, *size)).shape == (1, NUM_CLASSES, rows, cols)


@pytest.mark.parametrize(
    ("batch", "channels", "size", "kernel", "dilation"),
    [
        (1, 6, (5, 8), (3, 2), (1, 1)),  # a few cells: unfold + matmul
        (3, 6, (9, 7), (3, 3), (2, 1)),  # dilated, as in the dilated network's head
        (2, 5, (4, 6), (1, 1), (1, 1)),  # 1x1: a product over the channels, no unfold
        (4, 3, (30, 30), (2, 2), (1, 1)),  # 3,364 cells: over the limit, a convolution
        (2, 4, (3, 3), (3, 3), (1, 1)),  # one cell per image, like the training size
    ],
)
def test_windowed_linear_equals_the_convolution(batch, channels, size, kernel, dilation):
    x = torch.randn(batch, channels, *size)
    weight, bias = torch.randn(7, channels, *kernel), torch.randn(7)
    expected = F.conv2d(x, weight, bias, dilation=dilation)
    result = windowed_linear(x, weight, bias, dilation)
    assert result.shape == expected.shape
    assert torch.allclose(result, expected, rtol=1e-5, atol=1e-5)
    unbiased = windowed_linear(x, weight, None, dilation)
    assert torch.allclose(unbiased, expected - bias[:, None, None], rtol=1e-5, atol=1e-5)


class ConvolutionKernels(TorchFunctionMode):
    """Records the kernel shape of every ``F.conv2d`` call made while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[tuple[int, ...]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.conv2d:
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            self.kernels.append(tuple(weight.shape))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("limit", [DEFAULT_MATMUL_MAX_CELLS, 30])
def test_small_head_grids_skip_the_convolution_and_large_ones_use_it(limit):
    # oneDNN runs a wide head convolution on a few cells at a fraction of the matmul rate and
    # copies its whole weight per call (392 MiB on VGG16); small grids must avoid it
    net = convolutionalize(seeded(VolumeHeadNet), WINDOW, matmul_max_cells=limit)
    head_kernel = (32, 16, 3, 3)
    side = int(limit**0.5)
    small = WINDOW[0] + NATIVE_STRIDE * (side - 1)  # side x side cells: at most the limit
    large = WINDOW[0] + NATIVE_STRIDE * side  # (side + 1)^2 cells: over the limit
    with torch.no_grad(), ConvolutionKernels() as small_pass:
        net(torch.randn(1, 3, small, small))
    with torch.no_grad(), ConvolutionKernels() as large_pass:
        net(torch.randn(1, 3, large, large))
    assert small_pass.kernels and head_kernel not in small_pass.kernels  # the body's were seen
    assert head_kernel in large_pass.kernels


def test_first_linear_becomes_a_view_of_the_same_weights():
    model = seeded(VolumeHeadNet)
    net = convolutionalize(model, WINDOW)
    converted = [m for m in net.modules() if isinstance(m, LinearAsConv2d)]
    assert [c.volume for c in converted] == [(16, 3, 3), (32, 1, 1)]
    fc6 = model.classifier[0]
    assert converted[0].linear is fc6
    kernel = fc6.weight.reshape(32, 16, 3, 3)
    assert kernel.data_ptr() == fc6.weight.data_ptr()  # reshape is a view, no 400 MB copy on VGG


@pytest.mark.parametrize("net_class", ALL_NETS)
def test_the_callers_model_is_not_changed(net_class):
    model = seeded(net_class)
    before_state = copy.deepcopy(model.state_dict())
    before_modules = [(name, type(m)) for name, m in model.named_modules()]
    x = torch.randn(1, 3, *WINDOW)
    with torch.no_grad():
        before_output = model(x)
    net = convolutionalize(model, WINDOW)
    with torch.no_grad():
        net(torch.randn(1, 3, WINDOW[0] + 16, WINDOW[1] + 24))
        after_output = model(x)
    assert [(name, type(m)) for name, m in model.named_modules()] == before_modules
    for key, value in model.state_dict().items():
        assert torch.equal(value, before_state[key]), key
    assert torch.equal(before_output, after_output)
    assert not model.training
    # the original still refuses other sizes exactly as before (e.g. its flatten+Linear)
    assert isinstance(net, ConvolutionalizedNet) and net.source_model is model


def test_identity_adaptive_pool_is_removed():
    net = convolutionalize(seeded(VolumeHeadNet), WINDOW)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in net.modules())


def test_training_mode_model_is_refused():
    model = seeded(PooledHeadNet).train()
    with pytest.raises(TrainingModeError, match="training mode"):
        convolutionalize(model, WINDOW)


def test_wrong_input_size_is_reported():
    # 52x52 gives a 4x4 feature map: the flatten+Linear made for 3x3 cannot run there
    with pytest.raises(ConversionError, match="does not run on a 52x52 input"):
        convolutionalize(seeded(FlattenOnlyNet), (52, 52))
    # and an adaptive pool to 3x3 bins of unequal size has no sliding equivalent
    with pytest.raises(ConversionError, match="unequal size"):
        convolutionalize(seeded(VolumeHeadNet), (52, 52))


def test_attention_is_refused_with_a_pointer_to_crops():
    with pytest.raises(ConversionError, match=r"attention.*method='crops'"):
        convolutionalize(TokenHead().eval(), (32, 32))


def test_squeeze_excitation_pools_stay_global_and_warn():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small().eval()
    blocks = [m for m in model.modules() if isinstance(m, torchvision.ops.SqueezeExcitation)]
    with pytest.warns(UserWarning, match=f"global pooling inside its body \\({len(blocks)} "):
        net = convolutionalize(model, (224, 224))
    assert blocks
    assert len(net.global_context) == len(blocks)  # one global pool per block, head excepted


# --- Every torchvision classifier --------------------------------------------------------------

REFUSED_TORCHVISION = {
    "maxvit_t",
    "swin_b",
    "swin_s",
    "swin_t",
    "swin_v2_b",
    "swin_v2_s",
    "swin_v2_t",
    "vit_b_16",
    "vit_b_32",
    "vit_h_14",
    "vit_l_16",
    "vit_l_32",
}


def _torchvision_models() -> list[str]:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.list_models(module=torchvision.models)


def _training_size(name: str) -> tuple[int, int]:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    crop = weights.transforms().crop_size
    return (crop[0], crop[0]) if len(crop) == 1 else tuple(crop)  # type: ignore[return-value]


def _build_random(name: str) -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchvision.models.get_model(name, weights=None).eval()


def _assert_converts_exactly(model: nn.Module, size: tuple[int, int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # squeeze-and-excitation nets warn; tested above
        net = convolutionalize(model, size)
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        expected = model(x)
        grid = net(x)
    assert grid.shape[2:] == (1, 1)
    assert relative_error(expected, grid[:, :, 0, 0]) <= 1e-4
    s = net.stride
    assert net.grid_size((size[0] + 2 * s, size[1] + 3 * s)) == (3, 4)


@pytest.mark.parametrize("name", _torchvision_models())
def test_every_torchvision_classifier_converts_or_is_refused(name):
    model = _build_random(name)
    size = _training_size(name)
    if name in REFUSED_TORCHVISION:
        with pytest.raises(ConversionError, match="crops"):
            convolutionalize(model, size)
    else:
        _assert_converts_exactly(model, size)


TIMM_MODELS = [
    "vgg16",
    "resnet50",
    "efficientnet_b0",
    "tf_efficientnet_lite0",
    "convnext_tiny",
    "mobilenetv3_large_100",
    "regnety_002",
]


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_classifiers_convert(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = tuple(model.pretrained_cfg["input_size"][1:])
    _assert_converts_exactly(model, size)
