"""The output record: everything the json says, assembled in one place."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from heatmap_cli.cli.records import OutputFile, build_record, run_settings
from heatmap_cli.cli.writers import write_outputs
from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.io import ImageInput, slug
from heatmap_cli.pipeline.activations import softmax
from heatmap_cli.pipeline.engine import UNTILED, GridEngine, GridSettings, Tiling
from heatmap_cli.pipeline.multiscale import MultiScaleResult, Pass, score_multiscale
from heatmap_cli.pipeline.ranking import pooled_scores, rank_image
from heatmap_cli.pipeline.rendering import (
    OutputOptions,
    overlay_label,
    parse_npz_classes,
    parse_outputs,
    render_overlay,
    rendered_classes,
    summarize_image,
)
from heatmap_cli.pipeline.scoring import ImageResult
from tests.helpers.nets import WINDOW, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded


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
        result, engine, options, summarize_image(result, engine.categories, options)
    )
    document = json.loads(json.dumps(record.to_json()))

    assert list(document) == [
        *("image", "model", "weights", "method", "method_reason", "native_stride", "size"),
        "multiscale",
        *("tiling", "original_size", "input_size", "window", "window_input", "stride", "grid"),
        *("scores", "activation", "model_output", "exact_cells", "fidelity", "classes"),
        *("top_k", "top_k_pooling"),
        *("settings", "versions", "device", "dtype", "files"),
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

    tiled_result = dataclasses.replace(result, grid=grid)
    record = build_record(
        tiled_result, engine, options, summarize_image(tiled_result, engine.categories, options)
    )

    assert record.tiling == Tiling(tile=72, tiles=7)
    assert [p["tiling"]["tiled"] for p in record.to_json()["multiscale"]["passes"]] == [True, False]
    untiled = build_record(
        result, engine, options, summarize_image(result, engine.categories, options)
    )
    assert untiled.tiling == Tiling(tile=None, tiles=2)
    assert not untiled.tiling.tiled and Tiling() == UNTILED


# --- one truth: what is drawn, labelled, ranked and recorded ---------------------------------


def with_probs(probs: np.ndarray) -> tuple[ImageResult, GridEngine]:
    """A scored image whose averaged grid is ``probs`` (10, 3, 5), one pass, on a grey photo."""
    result, engine = scored((1,), flip=False)
    geometry = result.grid.geometry
    logits = np.log(probs).astype(np.float32)
    only = Pass(1.0, False, geometry, pooled_scores(probs, "max"), pooled_scores(probs, "mean"))
    grid = MultiScaleResult(geometry, logits, softmax(logits), (only,), "first")
    grey = np.full_like(result.display, 128)
    return dataclasses.replace(result, grid=grid, display=grey), engine


def sheet_probs() -> np.ndarray:
    """Class 5 peaks at 0.35 in cell (1, 1), class 2 at 0.12 in cell (1, 3)."""
    probs = np.full((10, 3, 5), 0.02)
    probs[5, 1, 1], probs[2, 1, 3] = 0.35, 0.12
    return probs


def test_a_weak_class_is_drawn_weaker_than_a_strong_one_by_default() -> None:
    result, engine = with_probs(sheet_probs())
    options = OutputOptions(top_k=2)
    strong, weak = rendered_classes(result, engine.categories, options)
    assert (strong.index, weak.index) == (5, 2)
    photo = result.display.astype(int)

    def moved(rendered) -> float:
        picture = render_overlay(result, rendered, dataclasses.replace(options, label="none"))
        return float(np.abs(picture[int(rendered.y), int(rendered.x)] - photo[0, 0]).mean())

    assert moved(strong) > 1.5 * moved(weak)  # each at its own peak
    assert overlay_label(weak, options).endswith(f"[shared 0\N{EN DASH}{strong.peak:.3g}]")
    # per-class draws each class to its own peak: the two peaks look alike
    per_class = dataclasses.replace(options, scale="per-class")
    strong, weak = rendered_classes(result, engine.categories, per_class)
    assert moved(strong) == pytest.approx(moved(weak), abs=1)


@pytest.mark.parametrize("scores", ["probs", "logits"])
@pytest.mark.parametrize(("scales", "flip"), [((1,), False), ((1, 1.5), True)])
def test_json_peaks_labels_and_maps_come_from_the_drawn_scores(scores, scales, flip) -> None:
    result, engine = scored(scales, flip=flip)
    result = dataclasses.replace(result, display=np.zeros_like(result.display))
    options = OutputOptions(top_k=3, scores=scores, cmap="gray", label="none")
    summary = summarize_image(result, engine.categories, options)
    classes = summary.classes
    assert classes == rendered_classes(result, engine.categories, options)
    record = build_record(result, engine, options, summary)
    drawn = result.grid.probs if scores == "probs" else result.grid.logits
    centers = result.grid.geometry.centers()
    # the rendered classes are the ranking the json and stdout report
    assert [c.index for c in classes] == [r.index for r in record.top_k]
    for entry in classes:
        row, col = np.unravel_index(np.argmax(drawn[entry.index]), drawn.shape[1:])
        assert entry.peak == pytest.approx(float(drawn[entry.index].max()))
        assert (entry.x, entry.y) == pytest.approx(tuple(centers[row, col].tolist()))
        # the picture (grey colours over black) is at its brightest at the json's peak (the
        # pixel there samples half a pixel off the window centre)
        picture = render_overlay(result, entry, options).astype(int).sum(axis=-1)
        assert picture[int(entry.y), int(entry.x)] >= 0.97 * picture.max() > 0
    symbol = "p=" if scores == "probs" else "logit="
    assert f"{symbol}{classes[0].peak:.2f}" in overlay_label(
        classes[0], dataclasses.replace(options, label="auto")
    )


def test_rendered_classes_follow_the_ranking_and_its_pooling() -> None:
    result, engine = scored((1, 1.5), flip=True)
    for pooling in ("max", "mean"):
        options = OutputOptions(top_k=4, pooling=pooling)
        ranking = rank_image(result.grid.passes, 4, pooling)
        chosen = rendered_classes(result, engine.categories, options)
        assert [c.index for c in chosen] == [index for index, _ in ranking]
    explicit = OutputOptions(classes=(7, 1))
    assert [c.index for c in rendered_classes(result, engine.categories, explicit)] == [7, 1]


def test_json_records_every_setting_the_versions_the_device_and_the_dtype() -> None:
    result, engine = scored((1, 1.5), flip=True)
    options = OutputOptions(
        top_k=2, scale="per-class", vmax=0.9, label="corner", outputs=("npz", "json"),
        image_format="webp", npz_classes="top5", npz_dtype="float16", cmap="magma",
    )  # fmt: skip
    summary = summarize_image(result, engine.categories, options)
    document = build_record(result, engine, options, summary).to_json()

    settings = document["settings"]
    assert settings["scales"] == [1.0, 1.5] and settings["flip"] is True
    assert (settings["size"], settings["stride"], settings["method"]) == (60, 8, "auto")
    expected = {
        "scale": "per-class", "vmin": None, "vmax": 0.9, "label": "corner", "cmap": "magma",
        "outputs": ["npz", "json"], "format": "webp", "npz_classes": "top5",
        "npz_dtype": "float16", "top_k": 2, "pooling": "max", "scores": "probs", "classes": [],
    }  # fmt: skip
    assert {key: settings[key] for key in expected} == expected
    assert set(document["versions"]) == {
        *("heatmap-cli", "torch", "torchvision", "timm", "numpy", "pillow", "python"),
    }
    assert document["versions"]["torch"] == torch.__version__.split("+")[0] or document["versions"][
        "torch"
    ].startswith(torch.__version__.split("+")[0])
    assert (document["device"], document["dtype"]) == ("cpu", "float32")
    json.dumps(document)  # all of it is JSON


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": "logits", "scale": "absolute"}, "logits have no absolute range"),
        ({"vmin": 1.0, "vmax": 0.5}, "vmin must be below vmax"),
        ({"label": "top"}, "label must be one of auto, corner, none"),
        ({"image_format": "gif"}, "format must be one of png, jpg, webp"),
        ({"npz_dtype": "float64"}, "npz dtype must be one of float32, float16"),
        ({"npz_classes": "top0"}, "npz classes must be all, rendered or topK"),
        ({"outputs": ("svg",)}, "outputs must be a comma-separated subset"),
        ({"cmap": "nope"}, "unknown colormap"),
    ],
)
def test_output_options_that_cannot_work_are_refused(kwargs, message) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        OutputOptions(**kwargs)


def test_outputs_parse_to_a_subset_that_always_holds_the_json() -> None:
    assert parse_outputs("npz") == ("npz", "json")
    assert parse_outputs(" JSON , png") == ("png", "json")
    assert parse_npz_classes("Top20") == "top20"


def test_the_json_records_the_settings_the_command_compares_and_its_files() -> None:
    result, engine = scored((1, 1.5), flip=True)
    options = OutputOptions(classes=(3, 1), top_k=2, alpha=0.25, colorbar=True)
    files = (OutputFile("x_3_class_3.png", 123), OutputFile("x.npz", 4567))

    summary = summarize_image(result, engine.categories, options)
    document = build_record(result, engine, options, summary, files).to_json()

    # The record's settings are what the command computes before it scores anything.
    assert document["settings"] == run_settings(engine, options, (1, 1.5), flip=True)
    assert document["settings"]["scales"] == [1.0, 1.5]
    assert document["settings"]["classes"] == [3, 1]
    assert (document["settings"]["alpha"], document["settings"]["colorbar"]) == (0.25, True)
    assert (document["settings"]["method"], document["settings"]["stride"]) == (
        engine.method,
        engine.stride,
    )
    assert document["files"] == [
        {"name": "x_3_class_3.png", "bytes": 123},
        {"name": "x.npz", "bytes": 4567},
    ]


def test_written_outputs_list_every_other_file_with_its_size(tmp_path: Path) -> None:
    result, engine = scored((1,), flip=False)

    written = write_outputs(result, engine, OutputOptions(top_k=2), tmp_path)

    record = json.loads(written[-1].read_bytes())
    assert written[-1] == tmp_path / "x.json"
    assert [tmp_path / f["name"] for f in record["files"]] == written[:-1]
    assert [f["bytes"] for f in record["files"]] == [p.stat().st_size for p in written[:-1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)


def test_overlay_label_shows_the_exact_peak_where_it_differs() -> None:
    result, engine = scored((1,), flip=False)
    options = OutputOptions(top_k=1)
    (drawn,) = rendered_classes(result, engine.categories, options)

    near = overlay_label(dataclasses.replace(drawn, exact_peak=drawn.peak + 0.009), options)
    far = overlay_label(dataclasses.replace(drawn, exact_peak=drawn.peak + 0.3), options)

    assert near == overlay_label(drawn, options) and "exact" not in str(near)
    assert f"p={drawn.peak:.2f} (exact {drawn.peak + 0.3:.2f})" in str(far)


def test_written_json_and_npz_hold_the_fidelity_check(tmp_path: Path) -> None:
    from heatmap_cli.pipeline.fidelity import image_fidelity
    from heatmap_cli.pipeline.rendering import summarize_image, with_exact_peaks
    from heatmap_cli.pipeline.scoring import score_images

    loaded = as_loaded(seeded(VolumeHeadNet), window=WINDOW, source="test weights")
    engine = GridEngine(loaded, GridSettings(size=60, device="cpu", method="dense"))
    photo = tmp_path / "x.png"
    Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(photo)
    (outcome,) = score_images([ImageInput(photo, Path("x"))], engine, keep_inputs=True)
    result = outcome.unwrap()
    options = OutputOptions(top_k=2, fidelity=3)
    summary = summarize_image(result, engine.categories, options)
    fidelity = image_fidelity(result, engine, [c.cell for c in summary.classes], options.fidelity)
    classes = with_exact_peaks(summary.classes, fidelity, options)
    summary = dataclasses.replace(summary, classes=classes)

    write_outputs(result, engine, options, tmp_path / "out", summary=summary, fidelity=fidelity)

    record = json.loads((tmp_path / "out" / "x.json").read_bytes())
    assert fidelity is not None
    assert record["fidelity"] == fidelity.to_json()
    assert record["settings"]["fidelity"] == 3
    assert record["exact_cells"] == 0  # dense: none evaluated as crops
    for entry, drawn in zip(record["classes"], classes, strict=True):
        assert (entry["row"], entry["col"]) == drawn.cell
        assert entry["exact_peak"] == pytest.approx(drawn.peak, abs=1e-4)  # padding-free
        assert fidelity.exact_score(drawn.cell, drawn.index) == entry["exact_peak"]
    with np.load(tmp_path / "out" / "x.npz") as arrays:
        assert arrays["exact"].dtype == bool and not arrays["exact"].any()
        assert arrays["exact"].shape == arrays["logits"].shape[1:]


def test_fidelity_that_cannot_work_is_refused() -> None:
    with pytest.raises(InvalidOptionError, match="fidelity"):
        OutputOptions(fidelity=-1)
    with pytest.raises(InvalidOptionError, match="fidelity"):
        OutputOptions(fidelity=True)  # type: ignore[arg-type]
