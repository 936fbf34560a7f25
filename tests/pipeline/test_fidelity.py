"""Fidelity: every image's map checked against the classifier on its windows, exactly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from heatmap_cli.grid import score_grid
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.io import ImageInput
from heatmap_cli.pipeline.activations import softmax
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.fidelity import (
    AGREEMENT_THRESHOLD,
    DIFFERENCE_THRESHOLD,
    image_fidelity,
    spread_cells,
)
from heatmap_cli.pipeline.scoring import ImageResult, score_images
from tests.helpers.nets import WINDOW, EdgeSensitiveNet, PooledHeadNet, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded


class PaddedNet(torch.nn.Module):
    """Zero padding in every convolution: dense and crops differ, by how much is measured."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=4, padding=1),
        )
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean([2, 3]))


def photo(folder: Path, size: tuple[int, int] = (70, 90), name: str = "p.png") -> ImageInput:
    pixels = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / name)
    return ImageInput(folder / name, Path(name).with_suffix(""))


def score_one(
    engine: GridEngine, item: ImageInput, scales=(1.0,), flip: bool = False
) -> ImageResult:
    (outcome,) = score_images([item], engine, scales=scales, flip=flip, keep_inputs=True)
    return outcome.unwrap()


def padded_engine(method: str = "dense", stride: int | None = None, **kwargs) -> GridEngine:
    torch.manual_seed(3)
    loaded = as_loaded(seeded(PaddedNet), window=(32, 32), categories=[f"c{i}" for i in range(5)])
    return GridEngine(loaded, GridSettings(size=70, method=method, stride=stride, **kwargs))


@pytest.mark.parametrize("stride", [None, 4])
def test_fidelity_figures_equal_an_explicit_crops_computation(tmp_path, stride) -> None:
    engine = padded_engine("dense" if stride is None else "dilate", stride)
    result = score_one(engine, photo(tmp_path))
    peaks = [(0, 1), (2, 3)]

    fidelity = image_fidelity(result, engine, peaks, count=5)

    assert fidelity is not None and len(fidelity.cells) == 7
    assert list(fidelity.cells[:2]) == peaks
    (spec,) = result.inputs
    x = normalize(spec.pixels, engine.loaded.mean, engine.loaded.std)
    crops = score_grid(engine.loaded.model, x, engine.stride, "crops", engine.window)[0]
    rows, cols = zip(*fidelity.cells, strict=True)
    exact = crops[:, list(rows), list(cols)].T.numpy()
    np.testing.assert_allclose(fidelity.exact_logits, exact, atol=1e-4, rtol=1e-4)
    dense = softmax(result.grid.logits[:, list(rows), list(cols)][:, :, None])[:, :, 0].T
    exact_probs = softmax(exact.T[:, :, None])[:, :, 0].T
    differences = np.abs(dense - exact_probs).max(axis=1)
    agreement = np.mean(dense.argmax(1) == exact_probs.argmax(1))
    assert fidelity.top1_agreement == pytest.approx(agreement)
    assert fidelity.max_abs_diff == pytest.approx(differences.max(), abs=1e-5)
    assert fidelity.mean_abs_diff == pytest.approx(differences.mean(), abs=1e-5)
    assert fidelity.max_abs_diff > 1e-3  # padding: the two do differ here
    document = fidelity.to_json()
    assert document["cells"] == [list(cell) for cell in fidelity.cells]
    assert set(document) == {"cells", "top1_agreement", "max_abs_diff", "mean_abs_diff"}


def test_with_scales_and_flip_exact_is_what_crops_give_with_the_same_options(tmp_path) -> None:
    item = photo(tmp_path, (64, 100))
    dense = padded_engine()
    result = score_one(dense, item, scales=(1.0, 1.4), flip=True)
    crops = score_one(padded_engine("crops", stride=8), item, scales=(1.0, 1.4), flip=True)

    fidelity = image_fidelity(result, dense, [(1, 2)], count=6)

    assert fidelity is not None
    rows, cols = zip(*fidelity.cells, strict=True)
    expected = crops.grid.logits[:, list(rows), list(cols)].T
    np.testing.assert_allclose(fidelity.exact_logits, expected, atol=1e-4, rtol=1e-4)
    assert crops.grid.exact is not None and crops.grid.exact.all()
    assert result.grid.exact is not None and not result.grid.exact.any()


def test_a_padding_free_net_is_exact_and_a_net_built_to_disagree_is_not(tmp_path) -> None:
    dense = GridSettings(size=70, method="dense")
    free = GridEngine(as_loaded(seeded(VolumeHeadNet), window=WINDOW), dense)
    result = score_one(free, photo(tmp_path))
    fidelity = image_fidelity(result, free, [(0, 0)], count=8)
    assert fidelity is not None
    assert fidelity.top1_agreement == 1.0 and fidelity.max_abs_diff < 1e-4
    assert fidelity.note() is None

    loaded = as_loaded(EdgeSensitiveNet(), window=EdgeSensitiveNet.WINDOW, categories=["b", "d"])
    edgy = GridEngine(loaded, GridSettings(size=64, method="dense"))
    white = tmp_path / "white.png"
    Image.new("RGB", (96, 64), "white").save(white)
    result = score_one(edgy, ImageInput(white, Path("white")))
    fidelity = image_fidelity(result, edgy, [(0, 0)], count=8)
    assert fidelity is not None
    assert fidelity.top1_agreement < AGREEMENT_THRESHOLD
    assert fidelity.max_abs_diff > DIFFERENCE_THRESHOLD
    note = fidelity.note()
    assert note is not None and "method crops" in note and "of 9 cells" in note


def test_cells_already_exact_are_not_evaluated_again(tmp_path) -> None:
    engine = padded_engine("crops", stride=8)
    result = score_one(engine, photo(tmp_path))
    before = engine.exact.windows

    fidelity = image_fidelity(result, engine, [(1, 1)], count=4)

    assert fidelity is not None and fidelity.max_abs_diff == 0 and fidelity.top1_agreement == 1
    assert engine.exact.windows == before


def test_no_check_when_off_or_when_no_pixels_were_kept(tmp_path) -> None:
    engine = padded_engine()
    item = photo(tmp_path)
    assert image_fidelity(score_one(engine, item), engine, [(0, 0)], count=0) is None
    (outcome,) = score_images([item], engine)  # pixels let go once scored
    assert not outcome.unwrap().inputs
    assert image_fidelity(outcome.unwrap(), engine, [(0, 0)], count=3) is None


@pytest.mark.parametrize(
    ("shape", "count"),
    [((1, 1), 3), ((5, 9), 8), ((30, 4), 12), ((3, 3), 9), ((7, 7), 0), ((40, 60), 8)],
)
def test_spread_cells_are_distinct_inside_and_spread(shape, count) -> None:
    exclude = [(0, 0)]
    cells = spread_cells(shape, count, exclude)

    assert len(cells) == min(count, shape[0] * shape[1] - 1)
    assert len(set(cells)) == len(cells) and (0, 0) not in cells
    assert all(0 <= r < shape[0] and 0 <= c < shape[1] for r, c in cells)
    if cells:  # every cell near a chosen one: within a block of rows * cols / count cells
        reach = math.sqrt(shape[0] * shape[1] / len(cells)) + 1
        for row, col in np.ndindex(shape):
            assert min(math.hypot(row - r, col - c) for r, c in cells) <= reach
    assert spread_cells(shape, count, exclude) == cells  # deterministic


def test_an_image_smaller_than_the_fidelity_count_checks_every_cell(tmp_path) -> None:
    settings = GridSettings(size=44, method="dense")
    engine = GridEngine(as_loaded(seeded(PooledHeadNet), window=WINDOW), settings)
    result = score_one(engine, photo(tmp_path, (44, 60)))
    fidelity = image_fidelity(result, engine, [(0, 1)], count=50)
    assert fidelity is not None
    assert sorted(fidelity.cells) == [(0, c) for c in range(result.grid.logits.shape[2])]


@pytest.mark.parametrize("stride", [None, 8])
def test_a_tiled_map_is_checked_as_the_untiled_one(tmp_path, stride) -> None:
    method = "dense" if stride is None else "dilate"
    item = photo(tmp_path, (96, 128))
    whole = padded_engine(method, stride)
    tiled = padded_engine(method, stride, tile=64)
    results = [score_one(engine, item) for engine in (whole, tiled)]
    assert results[1].grid.passes[0].tiling.tiles > 1 and not results[0].grid.passes[0].tiling.tiled

    checks = [
        image_fidelity(result, engine, [(1, 2)], count=6)
        for result, engine in zip(results, (whole, tiled), strict=True)
    ]

    untiled, in_tiles = checks
    assert untiled is not None and in_tiles is not None
    assert in_tiles.cells == untiled.cells
    np.testing.assert_allclose(in_tiles.exact_logits, untiled.exact_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(in_tiles.map_scores, untiled.map_scores, atol=1e-4)
    assert in_tiles.max_abs_diff == pytest.approx(untiled.max_abs_diff, abs=1e-4)
