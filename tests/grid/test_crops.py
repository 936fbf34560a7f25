"""Exact windows: the classifier on windows cut from the input, at any cells, in any batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heatmap_cli.convert.folding import fold_classifier_norms
from heatmap_cli.errors import GeometryError
from heatmap_cli.grid import score_grid
from heatmap_cli.grid.crops import (
    NormalizedWindows,
    PixelWindows,
    cell_corners,
    crops_grid_of,
    exact_logits,
)
from heatmap_cli.grid.pixels import normalize
from tests.helpers.nets import WINDOW, PooledHeadNet, VolumeHeadNet, seeded

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def pixels(count: int = 2, size: tuple[int, int] = (68, 84)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, *size, 3), dtype=np.uint8)


def one_by_one(model: torch.nn.Module, x: torch.Tensor, corners: np.ndarray) -> torch.Tensor:
    """The reference: each window sliced by hand and run alone."""
    with torch.inference_mode():
        return torch.cat(
            [
                model(x[i : i + 1, :, top : top + WINDOW[0], left : left + WINDOW[1]])
                for i, top, left in corners.tolist()
            ]
        )


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_exact_logits_at_any_cells_equal_the_model_on_each_window(batch_size: int) -> None:
    model = seeded(VolumeHeadNet)
    images = pixels()
    x = normalize(images, MEAN, STD)
    cells = [(1, 0, 0), (0, 3, 5), (1, 2, 4), (0, 3, 5), (0, 0, 5)]  # repeats and any order
    corners = cell_corners(cells, 8)
    expected = one_by_one(model, x, corners)

    from_pixels = exact_logits(
        model,
        PixelWindows(images, MEAN, STD, torch.device("cpu")),
        corners,
        WINDOW,
        batch_size=batch_size,
    )
    from_tensor = exact_logits(model, NormalizedWindows(x), corners, WINDOW, batch_size=batch_size)

    torch.testing.assert_close(from_pixels, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_tensor, expected, atol=1e-5, rtol=1e-5)


def test_pixel_windows_are_the_normalized_input_cut_and_channels_last() -> None:
    images = pixels(1)
    windows = PixelWindows(images, MEAN, STD, torch.device("cpu")).cut(
        np.array([[0, 5, 7]]), WINDOW
    )
    expected = normalize(images, MEAN, STD)[:, :, 5 : 5 + WINDOW[0], 7 : 7 + WINDOW[1]]

    assert torch.equal(windows, expected)  # the same arithmetic: equal, not close
    assert windows.is_contiguous(memory_format=torch.channels_last)


def test_crops_grid_of_several_images_equals_score_grid_crops() -> None:
    model = seeded(PooledHeadNet)
    images = pixels(3)
    source = PixelWindows(images, MEAN, STD, torch.device("cpu"))
    progress: list[tuple[int, int]] = []

    grid = crops_grid_of(source, 3, model, 12, WINDOW, 7, lambda *done: progress.append(done))
    expected = score_grid(model, normalize(images, MEAN, STD), 12, "crops", WINDOW)

    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=1e-5)
    cells = 3 * expected.shape[2] * expected.shape[3]
    assert progress[-1] == (cells, cells)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)


def test_windows_outside_the_input_are_refused() -> None:
    source = PixelWindows(pixels(1), MEAN, STD, torch.device("cpu"))
    model = seeded(VolumeHeadNet)
    with pytest.raises(GeometryError, match="reach outside"):
        exact_logits(model, source, cell_corners([(0, 6)], 8), WINDOW, batch_size=4)
    with pytest.raises(GeometryError, match="reach outside"):
        exact_logits(model, source, np.array([[0, -1, 0]]), WINDOW, batch_size=4)


def test_folded_classifier_answers_as_the_model_and_leaves_it_alone() -> None:
    model = seeded(VolumeHeadNet)  # one BatchNorm2d after a convolution
    before = {name: value.clone() for name, value in model.state_dict().items()}
    folded, count = fold_classifier_norms(model) or (None, 0)
    x = normalize(pixels(1, WINDOW), MEAN, STD)

    assert count == 1 and folded is not None
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fold_classifier_norms(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3))) is None
