"""A slide's grid read in bands: every figure equals the one of the whole grid in memory."""

from __future__ import annotations

import numpy as np
import pytest

from heatmap_cli.io.slide_tables import write_tile_geojson
from heatmap_cli.pipeline.slides.bands import band_rows, class_statistics, grid_bands
from heatmap_cli.pipeline.slides.geometry import SlideGeometry
from heatmap_cli.pipeline.slides.store import GridStore
from heatmap_cli.pipeline.slides.summary import (
    GEOJSON_BYTES,
    aggregate_tiles,
    block_means,
    cell_boxes,
    display_block,
    display_centres,
    display_grid,
    masked_scores,
    rank_slide,
    slide_peak,
    tile_side,
)

SHAPE = (5, 37, 23)  # classes, rows, cols: no band or block divides the rows evenly


def _geometry() -> SlideGeometry:
    rows, cols = SHAPE[1:]
    size = (32 + 8 * (rows - 1), 32 + 8 * (cols - 1))
    return SlideGeometry((2 * size[0], 2 * size[1]), 0, 1.0, 2.0, size, (32, 32), 8, 0.5, 1.0)


@pytest.fixture(params=["memory", "folder"])
def store(request, tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, SHAPE).astype(np.float32)
    logits[1, 30, 4] = logits[1].max() + 1  # one peak, and a tie the first cell must win
    logits[3, 2, 2] = logits[3, 20, 20] = logits[3].max() + 1
    folder = None if request.param == "memory" else tmp_path / "tiles"
    kept = GridStore(SHAPE, folder, {"k": 1})
    kept.write(slice(0, SHAPE[1]), slice(0, SHAPE[2]), logits)
    kept.close()
    return kept, logits


@pytest.fixture
def tissue():
    tissue = np.random.default_rng(1).random(SHAPE[1:]) < 0.6
    tissue[30, 4] = tissue[2, 2] = tissue[20, 20] = True
    tissue[:, 0] = False
    return tissue


def test_read_rows_gives_the_stored_rows(store):
    kept, logits = store
    np.testing.assert_array_equal(kept.read_rows(0, SHAPE[1]), logits)
    np.testing.assert_array_equal(kept.read_rows(5, 9), logits[:, 5:9])
    assert kept.read_rows(3, 3).shape == (SHAPE[0], 0, SHAPE[2])


@pytest.mark.parametrize("rows", [1, 4, 7, 100])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_bands_and_their_statistics_equal_the_whole_grid(store, tissue, rows, activation):
    kept, logits = store
    whole_logits, whole_probs = masked_scores(logits, tissue, activation)
    bands = list(grid_bands(kept, tissue, activation, rows))
    np.testing.assert_array_equal(np.concatenate([b.logits for b in bands], axis=1), whole_logits)
    np.testing.assert_array_equal(np.concatenate([b.probs for b in bands], axis=1), whole_probs)
    of_logits, of_probs = class_statistics(iter(bands), SHAPE[0])
    geometry = _geometry()
    for stats, whole in ((of_logits, whole_logits), (of_probs, whole_probs)):
        assert stats.cells == tissue.sum()
        assert stats.ranking(3, "max") == rank_slide(whole, 3, "max")
        mean_ranking = stats.ranking(5, "mean")
        expected = rank_slide(whole, 5, "mean")
        assert [i for i, _ in mean_ranking] == [i for i, _ in expected]
        np.testing.assert_allclose(
            [s for _, s in mean_ranking], [s for _, s in expected], 1e-6, 1e-6
        )
        for index in range(SHAPE[0]):
            value, row, col = stats.peak(index, SHAPE[2])
            peak, x, y = slide_peak(whole[index], geometry)
            width, height = geometry.window_level0()
            assert value == peak
            assert (x, y) == (
                geometry.corners(1)[col] + width / 2,
                geometry.corners(0)[row] + height / 2,
            )
            assert stats.minimum[index] == np.nanmin(whole[index])
    assert of_logits.peak(3, SHAPE[2])[1:] == (2, 2)  # of two equal maxima, the first


def test_statistics_without_tissue_rank_nothing(store):
    kept, _ = store
    no_tissue = np.zeros(SHAPE[1:], dtype=bool)
    of_logits, _ = class_statistics(grid_bands(kept, no_tissue, "softmax", 4), SHAPE[0])
    assert of_logits.ranking(3) == [] and of_logits.peak(0, SHAPE[2]) is None


@pytest.mark.parametrize("multiple", [1, 3, 7])
def test_banded_tables_tiles_and_display_blocks_equal_the_whole_grid(store, tissue, multiple):
    kept, logits = store
    geometry = _geometry()
    _, whole = masked_scores(logits, tissue, "softmax")
    rows = band_rows(SHAPE, multiple, budget=4 * SHAPE[0] * SHAPE[2] * 2)
    assert rows % multiple == 0 and rows >= multiple
    bands = list(grid_bands(kept, tissue, "softmax", rows))
    boxes = np.concatenate([cell_boxes(geometry, b.tissue, b.start) for b in bands])
    np.testing.assert_array_equal(boxes, cell_boxes(geometry, tissue))
    values = np.concatenate([b.probs[:, b.tissue].T for b in bands])
    np.testing.assert_array_equal(values, whole[:, tissue].T)
    tiles = [aggregate_tiles(b.probs, geometry, multiple, b.start) for b in bands]
    expected = aggregate_tiles(whole, geometry, multiple)
    np.testing.assert_array_equal(np.concatenate([t.boxes for t in tiles]), expected.boxes)
    np.testing.assert_array_equal(np.concatenate([t.values for t in tiles]), expected.values)
    np.testing.assert_array_equal(np.concatenate([t.cells for t in tiles]), expected.cells)
    downsample = geometry.stride * geometry.downsample * multiple / 4.0  # blocks of `multiple`
    k = display_block(geometry, downsample)
    assert k == multiple
    shown = np.concatenate([block_means(b.probs[2], k) for b in bands])
    reduced, centres = display_grid(whole[2], geometry, downsample)
    np.testing.assert_array_equal(shown, reduced)
    np.testing.assert_array_equal(display_centres(geometry, downsample, k, shown.shape), centres)


def test_the_grid_format_is_one_of_three():
    from heatmap_cli.errors import InvalidOptionError
    from heatmap_cli.pipeline.slides.bands import choose_grid_format

    assert choose_grid_format((2, 10, 10), " ZARR ", 2**30) == "zarr"
    with pytest.raises(InvalidOptionError, match="grid_format must be auto, npz, zarr"):
        choose_grid_format((2, 10, 10), "hdf5", 2**30)


# --- the GeoJSON's size ---------------------------------------------------------------------


def test_geojson_tiles_are_one_window_unless_the_file_would_pass_its_size() -> None:
    size = (100_000, 100_000)
    geometry = SlideGeometry((200_000, 200_000), 0, 1.0, 2.0, size, (32, 32), 8, 0.5, 1.0)
    assert tile_side(geometry) == tile_side(geometry, 10_000, 2) == 4  # one 32-px window
    huge = 12_500**2  # every cell of a 100k x 100k slide at stride 8
    side = tile_side(geometry, huge, 2)
    tiles = huge / side**2
    per_tile = GEOJSON_BYTES / tiles
    assert side > 4 and per_tile >= 270 + 26 * 3  # what a tile with two classes takes, or more
    assert huge / (side - 1) ** 2 * (270 + 26 * 3) > GEOJSON_BYTES  # and no smaller side fits
    assert tile_side(geometry, huge, 20) > side  # more classes, larger tiles


def test_the_size_estimate_holds_for_tiles_as_written(tmp_path) -> None:
    """Features of a 100k-pixel slide with two classes take no more than the estimate."""
    rng = np.random.default_rng(0)
    count = 500
    corners = rng.integers(90_000, 100_000, (count, 2))
    boxes = np.column_stack([corners, np.full((count, 2), 224)]).astype(np.int64)
    values = rng.random((count, 2)).astype(np.float32)
    path = tmp_path / "t.geojson"
    names = ["tumor", "benign"]
    cells = {"cells": rng.integers(1, 50, count).astype(float)}
    write_tile_geojson(path, boxes, values, names, name="slide", extra=cells)
    assert path.stat().st_size / count <= 270 + 26 * 3
