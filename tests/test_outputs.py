"""The output record: everything the json says, assembled in one place."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image

from heatmap_cli.engine import UNTILED, GridEngine, GridSettings, Tiling
from heatmap_cli.io import ImageInput
from heatmap_cli.loader import ImageResult
from heatmap_cli.multiscale import score_multiscale
from heatmap_cli.outputs import OutputOptions, build_record, rendered_classes, slug
from heatmap_cli.ranking import rank_image
from tests.nets import WINDOW, VolumeHeadNet, seeded
from tests.toys import as_loaded


def scored(scales: tuple[float, ...], flip: bool) -> tuple[ImageResult, GridEngine]:
    loaded = as_loaded(seeded(VolumeHeadNet), window=WINDOW, source="test weights")
    engine = GridEngine(loaded, GridSettings(size=60, device="cpu"))
    pixels = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    grid = score_multiscale(engine, Image.fromarray(pixels), scales, flip=flip)
    item = ImageInput(Path("photos/x.png"), Path("x"))
    return ImageResult(item=item, grid=grid, display=pixels), engine


def test_json_record_says_which_passes_went_in_and_how() -> None:
    result, engine = scored((1, 1.5), flip=True)
    options = OutputOptions(top_k=2, pooling="mean")

    record = build_record(
        result, engine, options, rendered_classes(result, engine.categories, options)
    )
    document = json.loads(json.dumps(record.to_json()))

    assert list(document) == [
        *("image", "model", "weights", "method", "native_stride", "size", "multiscale"),
        *("tiling", "original_size", "input_size", "window", "stride", "grid", "scores"),
        *("activation", "model_output", "classes", "top_k", "top_k_pooling", "settings"),
    ]
    assert (document["image"], document["model"], document["weights"]) == (
        str(Path("photos/x.png")),
        "tiny",
        "test weights",
    )
    multiscale = document["multiscale"]
    assert multiscale["scales"] == [1.0, 1.5]
    assert multiscale["flip"] is True
    assert multiscale["common_grid"] == "first"
    assert multiscale["averaged"] == "logits"
    assert multiscale["passes"][3] == {
        "scale": 1.5,
        "flip": True,
        "input_size": {"width": 124, "height": 92},
        "grid": {"rows": 7, "cols": 11},
        "tiling": {"tiled": False, "tile": None, "tiles": 1},
    }
    assert document["tiling"] == {"tiled": False, "tile": None, "tiles": 4}
    assert document["grid"] == multiscale["passes"][0]["grid"] == {"rows": 3, "cols": 5}
    ranking = rank_image(result.grid.passes, 2, "mean")
    assert [(r["index"], r["score"]) for r in document["top_k"]] == ranking
    assert document["top_k_pooling"] == "mean"
    assert (document["activation"], document["model_output"]) == ("softmax", "logits")
    assert document["settings"]["num_classes"] == len(engine.categories)
    assert [c["overlay"] for c in document["classes"]] == [
        f"x_{c['index']}_{slug(c['name'])}.png" for c in document["classes"]
    ]


def test_tiling_of_several_passes_adds_up() -> None:
    result, engine = scored((1, 0.5), flip=False)
    tiled = Tiling(tile=72, tiles=6)
    passes = (dataclasses.replace(result.grid.passes[0], tiling=tiled), result.grid.passes[1])
    grid = dataclasses.replace(result.grid, passes=passes)
    options = OutputOptions()

    record = build_record(dataclasses.replace(result, grid=grid), engine, options, ())

    assert record.tiling == Tiling(tile=72, tiles=7)
    assert [p["tiling"]["tiled"] for p in record.to_json()["multiscale"]["passes"]] == [True, False]
    untiled = build_record(result, engine, options, ())
    assert untiled.tiling == Tiling(tile=None, tiles=2)
    assert not untiled.tiling.tiled and Tiling() == UNTILED
