"""Exact tiled evaluation of huge images (heatmap_cli.grid.tiling)."""

from __future__ import annotations

import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import Conv2dSame
from torch import nn

from heatmap_cli.convert.folding import tile_network
from heatmap_cli.convert.network import convolutionalize
from heatmap_cli.convert.tf_same import BandedSameConv2d
from heatmap_cli.errors import GeometryError
from heatmap_cli.grid import score_grid
from heatmap_cli.grid.dilate import dilate
from heatmap_cli.grid.geometry import covered_input, grid_shape
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.grid.tiling import (
    ReceptiveField,
    choose_tile,
    estimate_activation_bytes,
    minimum_tile,
    plan_tiles,
    receptive_field,
    tiled_score_grid,
)
from tests.helpers.nets import WINDOW, VolumeHeadNet, seeded

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
PADDED_WINDOW = (48, 48)


class PaddedNet(nn.Module):
    """Every kind of padding that moves a receptive field, on a 48x48 window at stride 8.

    Symmetric zero padding, TF "same" padding (timm ``Conv2dSame``: (0, 1) for 3x3 and (1, 2)
    for 5x5 at stride 2 on even sizes), a padded max pool, and a residual whose branches have
    different fields (a dilated 3x3 and a 1x1), then a global-average-pool head.
    """

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down1 = Conv2dSame(8, 8, 3, stride=2)  # 48 -> 24
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # 24 -> 12
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.down2 = Conv2dSame(8, 12, 5, stride=2)  # 12 -> 6
        self.last = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.down1(self.stem(x))))
        x = F.relu(self.dilated(x) + self.pointwise(x))
        x = self.last(F.relu(self.down2(x)))
        return self.fc(x.mean((2, 3)))


class AbsNet(PaddedNet):
    """PaddedNet with an operation the graph analysis does not know (``torch.abs``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.abs(x))


class SqueezeExciteNet(PaddedNet):
    """PaddedNet with a squeeze-and-excitation gate: every cell sees the whole image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.down1(self.stem(x))))
        x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
        x = self.last(F.relu(self.down2(x)))
        return self.fc(x.mean((2, 3)))


class ResidualDropoutNet(PaddedNet):
    """PaddedNet whose residual branch passes torchvision's StochasticDepth (ConvNeXt, ...): fx
    records its ``stochastic_depth`` as a call, the identity in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.drop_path = torchvision.ops.StochasticDepth(0.2, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.down1(self.stem(x))))
        x = F.relu(self.drop_path(self.dilated(x)) + self.pointwise(x))
        x = self.last(F.relu(self.down2(x)))
        return self.fc(x.mean((2, 3)))


def convert(net_class: type[nn.Module], window: tuple[int, int] = PADDED_WINDOW) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convolutionalize(seeded(net_class), window)


@pytest.fixture(scope="module")
def padded() -> nn.Module:
    return convert(PaddedNet)


def random_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def untiled(net: nn.Module, pixels: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return net(normalize(pixels, MEAN, STD))


def assert_same_grid(tiled: torch.Tensor, reference: torch.Tensor, of_range: float) -> None:
    assert tiled.shape == reference.shape
    logit_range = (reference.max() - reference.min()).item()
    difference = (tiled - reference).abs().max().item()
    assert difference <= of_range * logit_range, f"{difference} > {of_range} x {logit_range}"


# --- Receptive field ---------------------------------------------------------------------------


def brute_force_field(net: nn.Module, cells: int = 8) -> tuple[int, int, int, int]:
    """Perturbs single pixels on the lines through one cell's window; returns the hull.

    Returns:
        ``(top, left, height, width)`` relative to the cell's window, like ReceptiveField.
    """
    stride, window = net.stride, net.window
    size = (window[0] + stride * cells, window[1] + stride * cells)
    cell = (cells // 2, cells // 2)
    origin = (cell[0] * stride, cell[1] * stride)
    centre = (origin[0] + window[0] // 2, origin[1] + window[1] // 2)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = net(x)[0, :, cell[0], cell[1]]
        hull = []
        for axis in (0, 1):
            batch = x.repeat(size[axis], 1, 1, 1)
            for position in range(size[axis]):
                pixel = (position, centre[1]) if axis == 0 else (centre[0], position)
                batch[position, :, pixel[0], pixel[1]] += 100.0
            changed = [
                (net(chunk)[:, :, cell[0], cell[1]] - reference).abs().amax(1) > 1e-4
                for chunk in batch.split(32)
            ]
            where = torch.nonzero(torch.cat(changed)).flatten()
            assert where[0] > 0 and where[-1] < size[axis] - 1, "field reaches the image edge"
            hull.append((int(where[0]) - origin[axis], int(where[-1]) - int(where[0]) + 1))
    (top, height), (left, width) = hull
    return top, left, height, width


@pytest.mark.parametrize("net_class", [PaddedNet, VolumeHeadNet])
def test_receptive_field_matches_brute_force(net_class: type[nn.Module]) -> None:
    window = PADDED_WINDOW if net_class is PaddedNet else WINDOW
    net = convert(net_class, window)
    field = receptive_field(net, method="analytic")
    assert (field.top, field.left, field.height, field.width) == brute_force_field(net)
    assert field.stride == net.stride


def test_padded_field_exceeds_window_asymmetrically(padded: nn.Module) -> None:
    field = receptive_field(padded)
    (above, below), (before, after) = field.margins(padded.window)
    assert above == before > 0
    # TF "same" padding puts the extra zero at the end: the field reaches further after.
    assert below == after > above


@pytest.mark.parametrize("net_class", [PaddedNet, VolumeHeadNet])
def test_probe_agrees_with_analysis(net_class: type[nn.Module]) -> None:
    window = PADDED_WINDOW if net_class is PaddedNet else WINDOW
    net = convert(net_class, window)
    assert receptive_field(net, method="probe") == receptive_field(net, method="analytic")


def test_unknown_operation_falls_back_to_the_probe(padded: nn.Module) -> None:
    net = convert(AbsNet)
    with pytest.raises(GeometryError, match="unknown function abs"):
        receptive_field(net, method="analytic")
    assert receptive_field(net) == receptive_field(padded)


def test_residual_dropout_is_analysed_not_probed(padded: nn.Module) -> None:
    # the analysis reads stochastic_depth's training flag (its 4th argument, not its mode)
    net = convert(ResidualDropoutNet)
    assert any(
        getattr(node.target, "__name__", "") == "stochastic_depth"
        for node in net.graph_module.graph.nodes
    )
    field = receptive_field(net, method="analytic")
    assert field == receptive_field(padded) == receptive_field(net, method="probe")


def test_global_context_cannot_be_tiled() -> None:
    net = convert(SqueezeExciteNet)
    with pytest.raises(GeometryError, match="depends on the whole image"):
        receptive_field(net)


def test_tf_same_padding_needs_sizes_of_the_grid_form(padded: nn.Module) -> None:
    """Why tiles are window + stride*k long: one pixel more moves every TF "same" pad."""
    x = normalize(random_pixels(48 + 8 * 10, 48 + 8 * 10), MEAN, STD)
    with torch.inference_mode():
        snapped = padded(x[:, :, :, : 48 + 8 * 6])
        longer = padded(x[:, :, :, : 48 + 8 * 6 + 1])
    interior = (slice(None), slice(None), slice(2, 8), slice(2, 5))
    assert not torch.allclose(snapped[interior], longer[interior], atol=1e-3)


# --- Planning ----------------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [8, 4, 2])  # 4 and 2: finer strides, native lattice 8
@pytest.mark.parametrize("tile", [200, 232, 300, 520])
@pytest.mark.parametrize(("rows", "cols"), [(90, 37), (0, 60), (121, 75)])
def test_plan_covers_every_cell_once(stride: int, tile: int, rows: int, cols: int) -> None:
    height, width = 48 + stride * rows, 48 + stride * cols
    net = types.SimpleNamespace(stride=stride, window=(48, 48), native_stride=8)
    field = ReceptiveField(stride=stride, top=-30, left=-21, height=120, width=100)
    plan = plan_tiles(net, (height, width), tile, field=field)
    hits = np.zeros(plan.grid_size, dtype=int)
    for t in plan.tiles:
        assert t.height <= tile or t.height == height
        assert t.width <= tile or t.width == width
        assert t.top % 8 == 0  # on the native lattice
        assert t.left % 8 == 0
        assert (t.height - height) % 8 == 0  # same length modulo 8 as the image: same pads
        assert (t.width - width) % 8 == 0
        assert t.top + t.height <= height
        assert t.left + t.width <= width
        assert (t.out_rows.stop - t.out_rows.start) == (t.rows.stop - t.rows.start) > 0
        hits[t.out_rows, t.out_cols] += 1
        assert t.out_rows.start == t.top // stride + t.rows.start  # tile cell j is cell T/s + j
        assert t.out_cols.start == t.left // stride + t.cols.start
        # The kept cells' fields lie inside the tile, or run over a side of the image.
        first, last = t.rows.start, t.rows.stop - 1
        assert t.top == 0 or first * stride + field.top >= 0
        assert t.top + t.height == height or last * stride + field.top + field.height <= t.height
        first, last = t.cols.start, t.cols.stop - 1
        assert t.left == 0 or first * stride + field.left >= 0
        assert t.left + t.width == width or last * stride + field.left + field.width <= t.width
    assert (hits == 1).all()
    assert plan.overhead >= 1.0


def test_plan_is_one_tile_when_the_image_fits(padded: nn.Module) -> None:
    plan = plan_tiles(padded, (48 + 8 * 5, 48 + 8 * 9), 200)
    assert len(plan.tiles) == 1
    assert plan.overhead == 1.0


def test_too_small_tile_says_the_minimum(padded: nn.Module) -> None:
    smallest = minimum_tile(padded)
    field = receptive_field(padded)
    (top, bottom), _ = field.cells_dropped(padded.window)
    assert smallest == 48 + 8 * (top + bottom)
    with pytest.raises(GeometryError, match=rf"minimum tile for this network is {smallest} pixels"):
        plan_tiles(padded, (48 + 8 * 40, 48 + 8 * 40), smallest - 1)
    plan_tiles(padded, (48 + 8 * 40, 48 + 8 * 40), smallest)


def test_sizes_not_of_the_grid_form_are_refused(padded: nn.Module) -> None:
    with pytest.raises(GeometryError, match="not of the form"):
        plan_tiles(padded, (48 + 8 * 40 + 3, 48 + 8 * 40), 200)


# --- Tiled equals untiled ----------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(
    ("height", "width", "tile"),
    [
        (48 + 8 * 40, 48 + 8 * 23, 208),  # 2D tiling, tile not dividing the image
        (48 + 8 * 40, 48 + 8 * 23, 150),  # close to the minimum: many tiles
        (48 + 8 * 17, 48 + 8 * 60, 333),  # wide image, odd tile size
        (48 + 8 * 40 + 5, 48 + 8 * 23 + 3, 260),  # not snapped: the ragged edge is ignored
        (48 + 8 * 12, 48 + 8 * 12, 10_000),  # fits in one tile
    ],
)
def test_tiled_equals_untiled_padded(
    padded: nn.Module, height: int, width: int, tile: int, channels_last: bool
) -> None:
    pixels = random_pixels(height, width)
    reference = score_grid(padded, normalize(pixels, MEAN, STD), input_size=PADDED_WINDOW)
    grid = tiled_score_grid(
        padded, pixels, mean=MEAN, std=STD, tile=tile, channels_last=channels_last
    )
    assert_same_grid(grid, reference, 1e-5)


def test_tiled_equals_untiled_padding_free() -> None:
    net = convert(VolumeHeadNet, WINDOW)
    pixels = random_pixels(44 + 8 * 50, 44 + 8 * 31)
    grid = tiled_score_grid(net, pixels, mean=MEAN, std=STD, tile=100)
    assert_same_grid(grid, untiled(net, pixels), 1e-5)


class StitchTwice(nn.Module):
    """Shift-and-stitch at half the native stride, as ``method="stitch"`` computes it.

    Each of the four passes sees the input shifted by a multiple of the finer stride and cut to
    ``window + native * k``: its zero border sits at the shift and at the cut, so the network's
    computation repeats every native stride, not every cell.
    """

    def __init__(self, base: nn.Module, *, declare_native: bool = True) -> None:
        super().__init__()
        self.base = base
        self.stride, self.window = base.stride // 2, base.window
        if declare_native:
            self.native_stride = base.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = grid_shape((x.shape[2], x.shape[3]), self.window, self.stride)
        grid = torch.empty(x.shape[0], 5, rows, cols)
        for a in range(min(2, rows)):
            for b in range(min(2, cols)):
                shifted = x[:, :, a * self.stride :, b * self.stride :]
                grid[:, :, a::2, b::2] = self.base(
                    covered_input(shifted, self.window, self.base.stride)
                )
        return grid


@pytest.mark.parametrize("tile", [176, 260])
def test_tiled_equals_untiled_shift_and_stitch(padded: nn.Module, tile: int) -> None:
    net = StitchTwice(padded)
    pixels = random_pixels(48 + 4 * 61, 48 + 4 * 47)
    plan = plan_tiles(net, (48 + 4 * 61, 48 + 4 * 47), tile)
    assert all(t.top % 8 == 0 and t.left % 8 == 0 for t in plan.tiles)  # the native lattice
    assert len(plan.tiles) > 1
    grid = tiled_score_grid(net, pixels, mean=MEAN, std=STD, tile=tile)
    assert_same_grid(grid, untiled(net, pixels), 1e-5)


def test_shift_and_stitch_without_native_stride_is_not_exact(padded: nn.Module) -> None:
    """Why finer-stride networks must declare ``native_stride``: tiles on the fine lattice cut
    the passes differently from the untiled run."""
    net = StitchTwice(padded, declare_native=False)
    pixels = random_pixels(48 + 4 * 61, 48 + 4 * 47)
    reference = untiled(net, pixels)
    grid = tiled_score_grid(net, pixels, mean=MEAN, std=STD, tile=200)
    assert (grid - reference).abs().max() > 1e-4 * (reference.max() - reference.min())


@pytest.mark.parametrize("stride", [4, 2])
def test_tiled_equals_untiled_a_trous(padded: nn.Module, stride: int) -> None:
    """The finer-stride engineer's dilated network: analysed through its own layers, and tiled
    on the native lattice."""
    net = dilate(padded, stride)
    size = (48 + 8 * 30 + stride, 48 + 8 * 21 + stride)  # not congruent to 48 modulo 8
    field = receptive_field(net, size, method="analytic")
    assert field == receptive_field(net, size, method="probe")
    pixels = random_pixels(*size)
    with torch.inference_mode():
        reference = net(normalize(pixels, MEAN, STD))
    grid = tiled_score_grid(net, pixels, mean=MEAN, std=STD, tile=200, field=field)
    assert len(plan_tiles(net, size, 200, field=field).tiles) > 1
    assert_same_grid(grid, reference, 1e-5)


def test_an_overlap_one_stride_short_is_caught(padded: nn.Module) -> None:
    """The equality tests can fail: with the field one stride short, cells go wrong by far more
    than the 1e-5 of the logit range the equality tests allow."""
    field = receptive_field(padded)
    short = ReceptiveField(
        field.stride, field.top + 8, field.left + 8, field.height - 16, field.width - 16
    )
    pixels = random_pixels(48 + 8 * 40, 48 + 8 * 23)
    reference = untiled(padded, pixels)
    grid = tiled_score_grid(padded, pixels, mean=MEAN, std=STD, tile=208, field=short)
    difference = (grid - reference).abs().max().item()
    assert difference > 1e-4 * (reference.max() - reference.min()).item()


def test_tiles_stay_within_the_tile_size(padded: nn.Module) -> None:
    seen: list[tuple[int, ...]] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = padded
            self.stride, self.window = padded.stride, padded.window

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.dtype == torch.float32
            seen.append(tuple(x.shape))
            return self.inner(x)

    progress: list[tuple[int, int]] = []
    tiled_score_grid(
        Recorder(),
        random_pixels(48 + 8 * 40, 48 + 8 * 23),
        mean=MEAN,
        std=STD,
        tile=208,
        field=receptive_field(padded),
        progress=lambda done, total: progress.append((done, total)),
    )
    assert len(seen) > 4
    assert all(shape[2] <= 208 and shape[3] <= 208 for shape in seen)
    assert progress == [(i + 1, len(seen)) for i in range(len(seen))]


def test_pixels_must_be_uint8(padded: nn.Module) -> None:
    pixels = random_pixels(100, 100).astype(np.float32)
    with pytest.raises(GeometryError, match="uint8"):
        tiled_score_grid(padded, pixels, mean=MEAN, std=STD, tile=64)  # type: ignore[arg-type]


def randomize_batch_norm(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return convolutionalize(randomize_batch_norm(torchvision.models.resnet18()), (224, 224))


def test_resnet18_field_is_far_larger_than_its_window(resnet18: nn.Module) -> None:
    # The textbook theoretical field of ResNet-18's last block (435) plus the head's 7x7 pool.
    assert receptive_field(resnet18).size == (435 + 6 * 32, 435 + 6 * 32)


@pytest.mark.parametrize(
    ("height", "width", "tile", "channels_last"),
    [
        (224 + 32 * 16, 224 + 32 * 2, 700, False),  # rows in two tiles, 700 not of the grid form
        (224 + 32 * 1, 224 + 32 * 19, 680, True),  # columns in four tiles
    ],
)
def test_tiled_equals_untiled_resnet18(
    resnet18: nn.Module, height: int, width: int, tile: int, channels_last: bool
) -> None:
    pixels = random_pixels(height, width)
    plan = plan_tiles(resnet18, (height, width), tile)
    assert len(plan.tiles) > 1
    grid = tiled_score_grid(
        resnet18, pixels, mean=MEAN, std=STD, tile=tile, channels_last=channels_last
    )
    assert_same_grid(grid, untiled(resnet18, pixels), 1e-3)


def test_tiled_equals_untiled_default_architecture() -> None:
    """tf_efficientnet_lite0 (the default model's architecture): TF "same" padding, Conv2dSame."""
    import timm

    torch.manual_seed(0)
    model = randomize_batch_norm(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    net = convolutionalize(model, (224, 224))
    field = receptive_field(net)
    (top, bottom), (left, right) = field.cells_dropped(net.window)
    smallest = minimum_tile(net)
    assert smallest == 224 + 32 * max(top + bottom, left + right)  # 1088 with timm 1.0
    # tiles of 4 cells above the minimum over 8 more columns: two tiles, the second keeping
    # the last 4 columns after dropping as many as the first
    tile = smallest + 32 * 3
    pixels = random_pixels(224, tile + 32 * 4)
    grid = tiled_score_grid(net, pixels, mean=(0.5,) * 3, std=(0.5,) * 3, tile=tile, field=field)
    with torch.inference_mode():
        reference = net(normalize(pixels, (0.5,) * 3, (0.5,) * 3))
    assert len(plan_tiles(net, pixels.shape[:2], tile, field=field).tiles) == 2
    assert_same_grid(grid, reference, 1e-3)


# --- Lean copy for tiles -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "groups"),
    [(3, 2, 1, 1), (5, 2, 1, 1), (3, 2, 1, 4), (3, 1, 1, 1), (4, 2, 1, 1), (3, 2, 2, 1)],
)
@pytest.mark.parametrize("band_bytes", [1, 10**9])
def test_banded_same_conv_equals_conv2d_same(
    kernel: int, stride: int, dilation: int, groups: int, band_bytes: int
) -> None:
    """Bands of rows, each padded on its own, give Conv2dSame's output bit for bit."""
    torch.manual_seed(0)
    same = Conv2dSame(
        4, 8 if groups == 1 else 4, kernel, stride=stride, dilation=dilation, groups=groups
    ).eval()
    banded = BandedSameConv2d.sharing(same)
    banded.band_bytes = band_bytes  # 1: a band per output row; 10**9: one padded copy
    assert banded.weight is same.weight
    for height, width in [(7, 9), (8, 16), (15, 31), (16, 16), (33, 9), (64, 31)]:
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(2, 4, height, width).contiguous(memory_format=layout)
            with torch.inference_mode():
                expected, got = same(x), banded(x)
            assert torch.equal(got, expected)
            assert got.is_contiguous(memory_format=layout) or min(got.shape[2:]) == 1


def test_lean_copy_of_the_default_architecture() -> None:
    """Batch norms folded, Conv2dSame banded, the input released; the caller's net untouched."""
    import timm
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    model = randomize_batch_norm(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    net = convolutionalize(model, (224, 224))
    state = {name: value.clone() for name, value in net.state_dict().items()}
    lean = tile_network(net)
    assert lean is not None
    kinds = {type(module) for module in lean.modules()}
    assert BatchNormAct2d not in kinds
    assert Conv2dSame not in kinds
    assert BandedSameConv2d in kinds
    assert all(torch.equal(state[name], value) for name, value in net.state_dict().items())
    assert any(isinstance(module, BatchNormAct2d) for module in net.modules())
    x = torch.randn(1, 3, 224 + 32 * 3, 224 + 32 * 2)
    holder = [x.clone()]
    with torch.inference_mode():
        reference, got = net(x), lean(holder)
    assert holder == []
    assert_same_grid(got, reference, 1e-5)


# --- Memory ------------------------------------------------------------------------------------


def test_estimate_counts_live_tensors() -> None:
    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 4, 3, padding=1)
            self.stride, self.window = 1, (1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu_(self.a(x)))

    chain = Chain()
    pixels = 32 * 32 * 4
    # input (held by the caller) + a's output (relu in place) + b's output
    assert estimate_activation_bytes(chain, (32, 32)) == (3 + 8 + 4) * pixels


def test_estimate_grows_with_the_input(padded: nn.Module) -> None:
    small = estimate_activation_bytes(padded, (48 + 8 * 10, 48 + 8 * 10))
    large = estimate_activation_bytes(padded, (48 + 8 * 30, 48 + 8 * 30))
    assert 5 < large / small < 12  # ~ the area ratio (4.6x), plus fixed small tensors


def test_choose_tile(padded: nn.Module) -> None:
    size = (48 + 8 * 200, 48 + 8 * 200)
    assert choose_tile(padded, size, 2**40) is None
    full = estimate_activation_bytes(padded, size)
    tile = choose_tile(padded, size, full // 4)
    assert tile is not None
    assert minimum_tile(padded) <= tile < size[0]
    assert (tile - 48) % 8 == 0
    assert choose_tile(padded, size, full // 16) < tile
    with pytest.raises(GeometryError, match="too small"):
        choose_tile(padded, size, 10_000)
