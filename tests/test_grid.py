"""score_grid: dense equals crops where it must, and geometry/ordering of cells is right."""

from __future__ import annotations

import pytest
import torch
from nets import ALL_NETS, NATIVE_STRIDE, NUM_CLASSES, WINDOW, VolumeHeadNet, seeded

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.errors import GeometryError


@pytest.mark.parametrize("net_class", ALL_NETS)
def test_dense_equals_crops_on_a_padding_free_net(net_class, head_form):
    model = seeded(net_class)
    rows, cols = 4, 6  # non-square, so a transposed or mis-ordered grid cannot pass
    x = torch.randn(
        2, 3, WINDOW[0] + NATIVE_STRIDE * (rows - 1), WINDOW[1] + NATIVE_STRIDE * (cols - 1)
    )
    dense = score_grid(model, x, method="dense", input_size=WINDOW)
    crops = score_grid(model, x, method="crops", input_size=WINDOW, batch_size=5)
    assert dense.shape == crops.shape == (2, NUM_CLASSES, rows, cols)
    assert (dense - crops).abs().max().item() < 1e-5


def test_cell_i_j_is_the_window_at_i_stride_j_stride():
    model = seeded(VolumeHeadNet)
    x = torch.randn(1, 3, WINDOW[0] + 3 * NATIVE_STRIDE, WINDOW[1] + 5 * NATIVE_STRIDE)
    grid = score_grid(model, x, input_size=WINDOW)
    with torch.no_grad():
        for i, j in [(0, 0), (3, 5), (1, 4), (2, 0)]:
            top, left = i * NATIVE_STRIDE, j * NATIVE_STRIDE
            window = x[:, :, top : top + WINDOW[0], left : left + WINDOW[1]]
            assert torch.allclose(grid[0, :, i, j], model(window)[0], atol=1e-5)


def test_a_converted_net_can_be_passed_instead_of_the_model():
    model = seeded(VolumeHeadNet)
    net = convolutionalize(model, WINDOW)
    x = torch.randn(1, 3, WINDOW[0] + 16, WINDOW[1] + 16)
    assert torch.equal(
        score_grid(net, x, input_size=WINDOW), score_grid(model, x, input_size=WINDOW)
    )
    crops = score_grid(net, x, method="crops", input_size=WINDOW)
    assert (crops - score_grid(model, x, method="crops", input_size=WINDOW)).abs().max() == 0


def test_unsnapped_input_ignores_the_uncovered_border():
    model = seeded(VolumeHeadNet)
    x = torch.randn(1, 3, WINDOW[0] + 2 * NATIVE_STRIDE + 5, WINDOW[1] + NATIVE_STRIDE + 7)
    dense = score_grid(model, x, input_size=WINDOW)
    crops = score_grid(model, x, method="crops", input_size=WINDOW)
    assert dense.shape[2:] == crops.shape[2:] == (3, 2)
    assert (dense - crops).abs().max().item() < 1e-5


def test_crops_at_any_stride():
    model = seeded(VolumeHeadNet)
    x = torch.randn(1, 3, WINDOW[0] + 6, WINDOW[1] + 9)
    grid = score_grid(model, x, stride=3, method="crops", input_size=WINDOW)
    assert grid.shape == (1, NUM_CLASSES, 3, 4)
    with torch.no_grad():
        assert torch.allclose(
            grid[0, :, 2, 3], model(x[:, :, 6 : 6 + 44, 9 : 9 + 44])[0], atol=1e-5
        )


def test_dense_with_a_finer_stride_points_to_the_finer_methods():
    x = torch.randn(1, 3, 60, 60)
    with pytest.raises(GeometryError, match="dilate"):
        score_grid(seeded(VolumeHeadNet), x, stride=4, method="dense", input_size=WINDOW)


def test_stride_that_does_not_divide_lists_valid_strides():
    x = torch.randn(1, 3, 60, 60)
    with pytest.raises(GeometryError, match="valid strides: 8, 4, 2, 1"):
        score_grid(seeded(VolumeHeadNet), x, stride=3, method="dense", input_size=WINDOW)


def test_input_smaller_than_window():
    with pytest.raises(GeometryError, match="smaller than the 44x44 window"):
        score_grid(seeded(VolumeHeadNet), torch.randn(1, 3, 40, 60), input_size=WINDOW)


def test_unknown_method():
    with pytest.raises(GeometryError, match="unknown method 'magic'"):
        score_grid(
            seeded(VolumeHeadNet), torch.randn(1, 3, 44, 44), method="magic", input_size=WINDOW
        )


def test_padded_real_net_dense_and_crops_agree_in_shape_and_mostly_in_top1():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224 + 64, 224 + 32)
    dense = score_grid(model, x)
    crops = score_grid(model, x, method="crops")
    assert dense.shape == crops.shape == (1, 1000, 3, 2)
    # zero padding: the dense pass sees real neighbours where a crop sees zeros
    assert (dense - crops).abs().max().item() > 1e-3
