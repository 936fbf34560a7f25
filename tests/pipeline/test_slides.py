"""Scoring slides: physical scale, seamless resampling, exact tiles, tissue, resume, summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from heatmap_cli.errors import SlideReadError
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from tests.helpers.slides import padded_net, require_slides, slide_pixels, write_slide
from tests.helpers.toys import as_loaded

require_slides()

from heatmap_cli.io.slide_tables import write_tile_csv, write_tile_geojson  # noqa: E402
from heatmap_cli.io.slides import open_slide  # noqa: E402
from heatmap_cli.pipeline.slides import SlideSettings, plan_slide, score_slide  # noqa: E402
from heatmap_cli.pipeline.slides.regions import read_model_region  # noqa: E402
from heatmap_cli.pipeline.slides.summary import (  # noqa: E402
    aggregate_tiles,
    cell_boxes,
    masked_scores,
    rank_slide,
)
from heatmap_cli.pipeline.slides.tissue import otsu_threshold, tissue_mask  # noqa: E402

SIZE = (480, 640)
WINDOW = (32, 32)


def engine_for(method: str = "auto", stride: int | None = None) -> GridEngine:
    loaded = as_loaded(padded_net(), window=WINDOW, categories=["a", "b", "c"])
    settings = GridSettings(device="cpu", method=method, stride=stride, batch_size=4)
    return GridEngine(loaded, settings, figures=None)


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    return write_slide(folder / "s.svs", SIZE, compression="zlib", downsamples=(1, 2, 8))


@pytest.mark.parametrize(
    ("model_mpp", "level", "scale"),
    [
        (None, 0, 1.0),
        (0.5, 0, 1.0),
        (1.0, 1, 1.0),
        (1.5, 1, 1.5),
        (0.25, 0, 0.5),
        (4.0, 2, 1.0),
        (6.0, 2, 1.5),
    ],
)
def test_the_level_read_is_at_or_finer_than_the_models_mpp(svs, model_mpp, level, scale):
    with open_slide(svs) as slide:
        geometry = plan_slide(slide, WINDOW, 8, model_mpp=model_mpp)
    assert (geometry.level, geometry.scale) == (level, pytest.approx(scale))
    assert geometry.downsample == pytest.approx(1.0 if model_mpp is None else model_mpp / 0.5)
    assert geometry.size == (int(SIZE[0] / geometry.downsample), int(SIZE[1] / geometry.downsample))


def test_a_slide_without_mpp_names_the_option_that_gives_it(tmp_path):
    path = write_slide(tmp_path / "g.tif", SIZE, layout="generic")
    with open_slide(path) as slide:
        assert plan_slide(slide, WINDOW, 8).slide_mpp is None  # its own pixels need no mpp
        with pytest.raises(SlideReadError, match="slide_mpp") as caught:
            plan_slide(slide, WINDOW, 8, model_mpp=0.5)
        assert str(path) in str(caught.value)
        assert plan_slide(slide, WINDOW, 8, model_mpp=1.0, slide_mpp=0.25).downsample == 4.0


@pytest.mark.parametrize("model_mpp", [0.8, 0.3])
def test_resampled_regions_join_without_seams(svs, model_mpp):
    with open_slide(svs) as slide:
        geometry = plan_slide(slide, WINDOW, 8, model_mpp=model_mpp)
        rows, cols = slide.levels[geometry.level].size
        level = slide.read(geometry.level, 0, 0, rows, cols)
        height, width = geometry.size
        box = (0, 0, width * geometry.scale, height * geometry.scale)
        whole = np.asarray(Image.fromarray(level).resize((width, height), Image.BILINEAR, box=box))
        for region in [(0, 0, 50, 70), (37, 101, 64, 90), (height - 40, width - 33, 40, 33)]:
            top, left, h, w = region
            part = read_model_region(slide, geometry, region).astype(int)
            difference = np.abs(part - whole[top : top + h, left : left + w])
            assert difference.max() <= 1 and (difference > 0).mean() < 0.02  # float rounding


@pytest.mark.parametrize(("model_mpp", "stride"), [(0.5, None), (0.7, None), (0.5, 4)])
def test_tiles_give_the_grid_of_one_pass_over_the_whole_slide(svs, model_mpp, stride):
    engine = engine_for(stride=stride)
    settings = SlideSettings(model_mpp=model_mpp, tissue="off", tile=96)
    with open_slide(svs) as slide:
        scores = score_slide(slide, engine, settings)
        geometry = scores.geometry
        whole = read_model_region(slide, geometry, (0, 0, *geometry.covered))
    assert scores.tiles > 4  # really tiled
    # auto's dense grid: slides are not refined (a refinement per tile would depend on the cut)
    reference = engine.score_batch(whole[None], refine=False).grid[0].numpy()
    # resampled tiles may differ from the whole resize by one grey level here and there
    np.testing.assert_allclose(scores.logits, reference, atol=2e-5 if model_mpp == 0.5 else 5e-4)


def test_crops_score_each_tissue_cell_on_its_own_window(svs):
    engine = engine_for(method="crops")
    with open_slide(svs) as slide:
        scores = score_slide(slide, engine, SlideSettings(model_mpp=0.5))
        rows, cols = np.nonzero(scores.tissue)
        picks = list(
            zip(rows[:: max(1, len(rows) // 5)], cols[:: max(1, len(rows) // 5)], strict=True)
        )
        pixels = slide_pixels(SIZE)
    model = engine.loaded.model
    mean = torch.tensor(engine.loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(engine.loaded.std).view(1, 3, 1, 1)
    for row, col in picks:
        crop = pixels[row * 8 : row * 8 + 32, col * 8 : col * 8 + 32]
        x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255 - mean) / std
        with torch.no_grad():
            expected = model(x)[0].numpy()
        np.testing.assert_allclose(scores.logits[:, row, col], expected, atol=1e-5)


def test_background_tiles_are_not_scored(svs):
    engine = engine_for()
    calls = []
    original = engine.score_batch
    engine.score_batch = lambda pixels, **how: calls.append(pixels.shape) or original(pixels, **how)  # type: ignore[method-assign]
    with open_slide(svs) as slide:
        everything = score_slide(slide, engine, SlideSettings(tissue="off", tile=64))
        off = len(calls)
        calls.clear()
        tissue = score_slide(slide, engine, SlideSettings(tissue="auto", tile=64))
    assert 0 < len(calls) < off
    assert 0.2 < tissue.tissue.mean() < 0.9
    np.testing.assert_allclose(
        tissue.logits[:, tissue.tissue], everything.logits[:, tissue.tissue], atol=2e-5
    )


def test_otsu_splits_two_populations_and_the_mask_finds_the_stain():
    values = np.concatenate([np.full(100, 10), np.full(50, 200)]).astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 200
    picture = slide_pixels((240, 320), seed=3)
    mask = tissue_mask(picture)
    stained = picture[..., 1] < 200  # the blobs' green is low, glass's high
    assert (mask == stained).mean() > 0.97
    assert not tissue_mask(np.full((50, 50, 3), 240, np.uint8)).any()  # all glass: no tissue


def test_a_mask_file_chooses_the_cells(svs, tmp_path):
    mask = np.zeros((60, 80), np.uint8)
    mask[:, :40] = 255  # the left half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    with open_slide(svs) as slide:
        scores = score_slide(slide, engine_for(), SlideSettings(tissue=str(tmp_path / "mask.png")))
    centres = scores.geometry.centers()[..., 0]
    assert scores.tissue[centres < 300].all() and not scores.tissue[centres > 340].any()


def test_an_interrupted_slide_resumes_from_its_kept_tiles(svs, tmp_path):
    engine = engine_for()
    settings = SlideSettings(tissue="off", tile=64)
    seen = []

    def stop_after_three(done, total):
        seen.append(done)
        if done >= 3 and len(seen) > 1:
            raise KeyboardInterrupt

    folder = tmp_path / "tiles"
    with open_slide(svs) as slide:
        with pytest.raises(KeyboardInterrupt):
            score_slide(slide, engine, settings, store_folder=folder, progress=stop_after_three)
        state = json.loads((folder / "state.json").read_text())
        assert len(state["done"]) == 3
        resumed = score_slide(slide, engine, settings, store_folder=folder)
        fresh = score_slide(slide, engine, settings)
        changed = score_slide(slide, engine, settings, store_folder=folder, key={"other": 1})
    assert resumed.resumed == 3 and changed.resumed == 0
    np.testing.assert_array_equal(np.asarray(resumed.logits), fresh.logits)
    resumed.store.discard()
    assert not folder.exists()


def test_summaries_tables_and_tiles(tmp_path, svs):
    with open_slide(svs) as slide:
        scores = score_slide(slide, engine_for(), SlideSettings(model_mpp=0.5))
    _, probs = masked_scores(scores.logits, scores.tissue, "softmax")
    assert np.isnan(probs[:, ~scores.tissue]).all()
    np.testing.assert_allclose(probs[:, scores.tissue].sum(axis=0), 1, atol=1e-5)
    ranking = rank_slide(probs, 2)
    assert ranking[0][1] == pytest.approx(np.nanmax(probs[ranking[0][0]]))
    boxes = cell_boxes(scores.geometry, scores.tissue)
    assert len(boxes) == scores.tissue.sum() and (boxes[:, 2:] == 32).all()
    tiles = aggregate_tiles(probs, scores.geometry)
    assert tiles.side == 4 and tiles.cells.sum() == scores.tissue.sum()
    assert (tiles.boxes[:, 2:] == 32).all()  # one window per tile at stride 8
    first = np.isfinite(probs[0, :4, :4])
    if first.any():
        index = np.flatnonzero((tiles.boxes[:, 0] < 32) & (tiles.boxes[:, 1] < 32))[0]
        np.testing.assert_allclose(
            tiles.values[index], np.nanmean(probs[:, :4, :4], axis=(1, 2)), rtol=1e-5
        )
    write_tile_csv(tmp_path / "t.csv", boxes, probs[:, scores.tissue].T, ["a", "b", "c"])
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "minx,miny,width,height,prob_a,prob_b,prob_c"
    assert len(lines) == len(boxes) + 1
    minx, miny, width, height, *values = lines[1].split(",")
    assert [int(minx), int(miny), int(width), int(height)] == boxes[0].tolist()
    np.testing.assert_allclose([float(v) for v in values], probs[:, scores.tissue][:, 0], rtol=1e-6)
    write_tile_geojson(tmp_path / "t.geojson", tiles.boxes, tiles.values, ["a", "b", "c"], name="s")
    collection = json.loads((tmp_path / "t.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "tile"
    assert set(feature["properties"]["measurements"]) == {"prob_a", "prob_b", "prob_c"}
    assert feature["geometry"]["coordinates"][0][0] == [
        int(tiles.boxes[0][0] + tiles.boxes[0][2]),
        int(tiles.boxes[0][1]),
    ]


@pytest.mark.parametrize("context", [None, 0, 16])
def test_tiles_shrunk_to_the_tissue_keep_every_tissue_cell_once(svs, context):
    from heatmap_cli.pipeline.slides.scoring import (
        plan_slide_tiles,
        shrink_to_tissue,
        tile_margins,
    )

    engine = engine_for()
    with open_slide(svs) as slide:
        geometry = plan_slide(slide, WINDOW, 8, model_mpp=0.5)
    rng = np.random.default_rng(0)
    tissue = rng.random(geometry.shape) < 0.1
    tiles, _ = plan_slide_tiles(engine, geometry, 128, context)
    kept = np.zeros(geometry.shape, dtype=int)
    margins = tile_margins(engine, geometry, context)
    for tile in (shrink_to_tissue(t, tissue, geometry, margins) for t in tiles):
        kept[tile.out_rows, tile.out_cols] += 1
        assert tile.height == WINDOW[0] + 8 * ((tile.height - WINDOW[0]) // 8)
        assert tile.rows.stop - tile.rows.start == tile.out_rows.stop - tile.out_rows.start
    assert (kept[tissue] == 1).all()


def test_a_context_as_wide_as_the_receptive_field_gives_the_exact_grid(svs):
    engine = engine_for()
    with open_slide(svs) as slide:
        exact = score_slide(slide, engine, SlideSettings(tissue="off", tile=96))
        wide = score_slide(slide, engine, SlideSettings(tissue="off", tile=96, context=48))
        narrow = score_slide(slide, engine, SlideSettings(tissue="off", tile=96, context=0))
    np.testing.assert_allclose(wide.logits, exact.logits, atol=2e-5)
    assert np.abs(narrow.logits - exact.logits).max() > 1e-3  # zeros seen at tile edges


@pytest.mark.parametrize(("context", "cut"), [(0, True), (8, False)])  # the field: 7 pixels out
def test_the_cells_said_to_have_their_whole_field_equal_one_pass(svs, context, cut):
    engine = engine_for()
    with open_slide(svs) as slide:
        exact = score_slide(slide, engine, SlideSettings(model_mpp=0.5, tile=96))
        other = score_slide(slide, engine, SlideSettings(model_mpp=0.5, tile=96, context=context))
    assert exact.tiles > 4 and (exact.full_context == exact.tissue).all()
    full, tissue = other.full_context, other.tissue
    assert not full[~tissue].any() and full[tissue].any()
    np.testing.assert_allclose(other.logits[:, full], exact.logits[:, full], atol=2e-5)
    departed = np.abs(other.logits - exact.logits).max(axis=0) > 1e-4
    assert not (departed & full).any()
    assert (departed[tissue].any() and not full[tissue].all()) == cut


def test_crops_cells_all_have_their_whole_field(svs):
    with open_slide(svs) as slide:
        scores = score_slide(slide, engine_for(method="crops"), SlideSettings(model_mpp=0.5))
    assert (scores.full_context == scores.tissue).all()


def test_dense_grids_are_averaged_down_for_drawing():
    from heatmap_cli.pipeline.slides.geometry import SlideGeometry
    from heatmap_cli.pipeline.slides.summary import display_grid

    geometry = SlideGeometry((1000, 1000), 0, 1.0, 1.0, (1000, 1000), (32, 32), 8, 0.5, 0.5)
    rows, cols = geometry.shape
    values = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    values[:, :10] = np.nan  # off the tissue
    reduced, centres = display_grid(values, geometry, downsample=4.0)  # 2 pixels per cell
    assert reduced.shape == (-(-rows // 2), -(-cols // 2))
    assert np.isnan(reduced[:, :5]).all()
    assert reduced[0, 5] == pytest.approx(np.mean(values[:2, 10:12]))
    # the centre of cells (0..1, 10..11) in thumbnail pixels: level-0 (16 + 8.5 * 8... ) / 4
    assert centres[0, 5].tolist() == pytest.approx([(16 + 10.5 * 8) / 4, (16 + 0.5 * 8) / 4])
    same, _ = display_grid(values, geometry, downsample=1.0)  # 8 pixels per cell: as is
    np.testing.assert_array_equal(same, values)
