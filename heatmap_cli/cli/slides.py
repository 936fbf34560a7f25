"""One slide of the command: scored with resume, its files written together, its json last.

Files of a slide (``stem`` as for photos):

* ``<stem>.npz``: ``logits``/``probs`` ``(K, rows, cols)`` (NaN outside the tissue), ``tissue``
  bool ``(rows, cols)``, ``centers`` ``(rows, cols, 2)`` and ``window`` (width, height) in
  level-0 pixels, ``stride`` and ``window_input`` in model pixels, ``input_size`` (the slide in
  model pixels), ``classes``, ``level``, ``downsample``, ``slide_mpp``, ``model_mpp``;
* ``<stem>.csv``: every tissue cell in WSInfer's columns, ``minx,miny,width,height,prob_<class>``;
* ``<stem>.geojson``: QuPath tiles of about one window each, the mean of their cells;
* ``<stem>_<index>_<name>.png``: the whole slide (thumbnail size) under each rendered class;
  ``<stem>_thumbnail.png`` and ``<stem>_tissue.png`` (the mask);
* ``<stem>.json``: the record, with a ``slide`` block (reader, level, downsample, both mpp,
  tissue, tiles).

Scored tiles are kept in a hidden folder beside the outputs (``.<name>.slide-tiles``) until the
outputs are in place: Ctrl-C or a kill leaves them for the next run, which resumes; a finished
or failed slide removes them. The outputs are written privately and moved into place with the
json last (``io.staged_files``), so nothing partial is ever left under its final name.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from heatmap_cli.cli.manifest import ManifestRow
from heatmap_cli.cli.records import (
    completion_marker,
    model_settings,
    run_settings,
    software_versions,
)
from heatmap_cli.errors import GeometryError, SlideReadError
from heatmap_cli.io import (
    ImageInput,
    output_path,
    slug,
    staged_files,
    write_image,
    write_json,
    write_npz,
    write_png,
)
from heatmap_cli.io.slide_tables import write_tile_csv, write_tile_geojson
from heatmap_cli.io.slides import open_slide
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.limits import release_free_memory
from heatmap_cli.pipeline.profiling import timed
from heatmap_cli.pipeline.rendering import OutputOptions, RenderedClass, overlay_label
from heatmap_cli.pipeline.scoring import PhotoReading
from heatmap_cli.pipeline.slides import SlideScores, SlideSettings, score_slide
from heatmap_cli.pipeline.slides.summary import (
    aggregate_tiles,
    cell_boxes,
    display_grid,
    masked_scores,
    rank_slide,
    slide_peak,
)
from heatmap_cli.render import colour_scales, is_diverging, render_class_overlay

__all__ = ["SlideOutcome", "kept_classes", "slide_settings", "store_folder", "write_slide"]

TileProgress = Callable[[int, int], None]


def slide_settings(settings: SlideSettings) -> dict[str, object]:
    """The slide options among the json's ``settings`` (what ``--skip-existing`` compares)."""
    return {
        "mpp": settings.model_mpp,
        "slide_mpp": settings.slide_mpp,
        "tissue": settings.tissue,
        "min_tissue": settings.min_tissue,
        "slide_context": settings.context,
    }


def store_folder(out: Path, stem: Path) -> Path:
    """The hidden folder where a slide's scored tiles wait for its outputs."""
    return output_path(out, stem.parent / f".{stem.name}", ".slide-tiles")


@dataclasses.dataclass(frozen=True)
class SlideOutcome:
    """A slide done: its manifest row, its ranking line and its notes."""

    row: ManifestRow
    table: str
    notes: tuple[str, ...]


def write_slide(
    item: ImageInput,
    engine: GridEngine,
    rendering: OutputOptions,
    out: Path,
    reading: PhotoReading,
    settings: SlideSettings,
    progress: TileProgress | None = None,
) -> SlideOutcome:
    """Scores one slide (resuming its kept tiles) and writes its outputs.

    Raises:
        SlideReadError: The slide cannot be opened or read, or lacks the mpp needed.
        OutputWriteError: An output cannot be written.
    """
    settings = dataclasses.replace(settings, thumbnail_side=reading.max_display_side)
    # what the stored tiles' numbers depend on (not how they are drawn: a new --cmap resumes)
    key = {**model_settings(engine), **slide_settings(settings)}
    folder = store_folder(out, item.stem)
    try:
        with open_slide(item.path) as slide:
            scores = score_slide(
                slide, engine, settings, store_folder=folder, key=key, progress=progress
            )
            files, record = _write_files(
                item,
                (slide.reader, slide.vendor),
                scores,
                engine,
                rendering,
                out,
                settings,
                reading,
            )
    except (SlideReadError, GeometryError):  # the slide itself is bad: keep nothing of it
        shutil.rmtree(folder, ignore_errors=True)
        raise
    scores.store.discard()
    ranking = record["top_k"]
    row = ManifestRow.finished(item.path, item.stem, "done", ranking, files)  # type: ignore[arg-type]
    table = ", ".join(f"{entry['name']} {entry['score']:.3f}" for entry in ranking)  # type: ignore[index,union-attr]
    notes = _notes(scores)
    return SlideOutcome(row, table or "no tissue found", notes)


def _notes(scores: SlideScores) -> tuple[str, ...]:
    notes = []
    if scores.resumed:
        notes.append(f"resumed: {scores.resumed} of {scores.tiles} tiles were already scored")
    if not scores.tissue.any():
        notes.append("no tissue found: nothing was scored (try tissue off or a mask file)")
    if scores.geometry.scale < 1.0:
        notes.append(
            f"the slide ({scores.geometry.slide_mpp:g} um/px) is coarser than the model's "
            f"{scores.geometry.model_mpp:g} um/px: it was enlarged"
        )
    return tuple(notes)


def _write_files(
    item: ImageInput,
    source: tuple[str, str],
    scores: SlideScores,
    engine: GridEngine,
    rendering: OutputOptions,
    out: Path,
    settings: SlideSettings,
    reading: PhotoReading,
) -> tuple[list[Path], dict[str, object]]:
    """Every file of the slide, privately, then moved into place with the json last."""
    marker = completion_marker(out, item.stem)
    name = item.stem.name
    release_free_memory()  # the tiles' arenas, before the whole grid is loaded
    with timed("render"):
        logits, probs = masked_scores(scores.logits, scores.tissue, engine.activation)
    drawn = probs if rendering.probabilities else logits
    chosen = list(rendering.classes) or [
        i for i, _ in rank_slide(drawn, rendering.top_k, rendering.pooling)
    ]
    ranking = rank_slide(probs, rendering.top_k, rendering.pooling)
    classes = _rendered(drawn, chosen, scores, engine.categories, rendering, name)
    kept = kept_classes(probs, rendering, chosen)
    with staged_files(marker.parent, name) as staging:
        folder, names = staging.folder, []
        with timed("encode+write"):
            if "npz" in rendering.outputs:
                names.append(f"{name}.npz")
                _write_npz(folder / names[-1], logits, probs, scores, engine, rendering, kept)
            names += _write_tables(folder, name, probs, scores, engine.categories, kept)
        if "png" in rendering.outputs:
            names += _write_pictures(folder, name, drawn, scores, classes, rendering)
        files = [{"name": n, "bytes": (folder / n).stat().st_size} for n in names]
        record = _record(
            item, source, scores, engine, rendering, settings, reading, classes, ranking, files
        )
        write_json(folder / marker.name, record)
        moved = staging.commit([*names, marker.name])
    return [path.relative_to(out) for path in moved], record


def _rendered(
    drawn: np.ndarray,
    chosen: Sequence[int],
    scores: SlideScores,
    categories: Sequence[str],
    options: OutputOptions,
    name: str,
) -> list[RenderedClass]:
    tissue_values = [drawn[index][scores.tissue].reshape(1, -1) for index in chosen]
    if any(v.size == 0 for v in tissue_values):
        tissue_values = [np.zeros((1, 1), np.float32) for _ in chosen]
    scales = colour_scales(
        tissue_values,
        scale=options.scale,
        probabilities=options.probabilities,
        diverging=is_diverging(options.cmap),
        vmin=options.vmin,
        vmax=options.vmax,
    )
    classes = []
    for index, scale in zip(chosen, scales, strict=True):
        peak, x, y = slide_peak(drawn[index], scores.geometry)
        picture = f"{name}_{index}_{slug(categories[index])}.{options.image_format}"
        overlay = picture if "png" in options.outputs else None
        peak = peak if np.isfinite(peak) else 0.0
        classes.append(RenderedClass(index, categories[index], peak, x, y, overlay, scale))
    return classes


def kept_classes(
    probs: np.ndarray, options: OutputOptions, chosen: Sequence[int]
) -> list[int] | None:
    """The classes the npz, the CSV and the GeoJSON keep (``npz_classes``); None for all."""
    if options.npz_classes == "rendered":
        return list(chosen)
    if options.npz_classes.startswith("top"):
        wanted = int(options.npz_classes.removeprefix("top"))
        if wanted < probs.shape[0]:
            return [i for i, _ in rank_slide(probs, wanted, options.pooling)]
    return None


def _write_npz(
    path: Path,
    logits: np.ndarray,
    probs: np.ndarray,
    scores: SlideScores,
    engine: GridEngine,
    options: OutputOptions,
    classes: list[int] | None,
) -> None:
    geometry = scores.geometry
    keep: slice | list[int] = slice(None) if classes is None else classes
    extra = {} if classes is None else {"class_indices": np.asarray(classes, dtype=np.int64)}
    width, height = geometry.window_level0()
    write_npz(
        path,
        logits=logits[keep].astype(options.npz_dtype, copy=False),
        probs=probs[keep].astype(options.npz_dtype, copy=False),
        **extra,
        tissue=scores.tissue,
        centers=geometry.centers(),
        window=np.array([width, height], dtype=np.float32),
        window_input=np.array(geometry.window[::-1], dtype=np.int64),
        stride=np.int64(geometry.stride),
        input_size=np.array(geometry.size, dtype=np.int64),
        classes=np.array(engine.categories, dtype=str),
        level=np.int64(geometry.level),
        downsample=np.float64(geometry.downsample),
        slide_mpp=np.float64(geometry.slide_mpp if geometry.slide_mpp is not None else np.nan),
        model_mpp=np.float64(geometry.model_mpp if geometry.model_mpp is not None else np.nan),
    )


def _write_tables(
    folder: Path,
    name: str,
    probs: np.ndarray,
    scores: SlideScores,
    categories: Sequence[str],
    classes: list[int] | None,
) -> list[str]:
    """The WSInfer CSV and the QuPath GeoJSON, with the npz's classes."""
    if classes is not None:
        probs, categories = probs[classes], [categories[i] for i in classes]
    boxes = cell_boxes(scores.geometry, scores.tissue)
    write_tile_csv(folder / f"{name}.csv", boxes, probs[:, scores.tissue].T, categories)
    del boxes
    tiles = aggregate_tiles(probs, scores.geometry)
    write_tile_geojson(
        folder / f"{name}.geojson",
        tiles.boxes,
        tiles.values,
        categories,
        name=name,
        extra={"cells": tiles.cells},
    )
    return [f"{name}.csv", f"{name}.geojson"]


def _write_pictures(
    folder: Path,
    name: str,
    drawn: np.ndarray,
    scores: SlideScores,
    classes: Sequence[RenderedClass],
    options: OutputOptions,
) -> list[str]:
    thumbnail = scores.thumbnail
    names = [f"{name}_thumbnail.png", f"{name}_tissue.png"]
    write_png(folder / names[0], thumbnail)
    mask = np.repeat((scores.mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    write_png(folder / names[1], mask)
    for rendered in classes:
        values, centers = display_grid(
            drawn[rendered.index], scores.geometry, scores.thumbnail_downsample
        )
        values = np.where(np.isfinite(values), values, np.float32(rendered.scale.low))
        with timed("render"):
            picture = render_class_overlay(
                thumbnail,
                values,
                centers,
                label=overlay_label(rendered, options),
                label_corner="top-left" if options.label == "corner" else "auto",
                cmap=options.cmap,
                alpha=options.alpha,
                vmin=rendered.scale.low,
                vmax=rendered.scale.high,
                colorbar=options.colorbar,
                colorbar_label="probability" if options.probabilities else "logit",
            )
        assert rendered.overlay is not None
        write_image(folder / rendered.overlay, picture, image_format=options.image_format)
        names.append(rendered.overlay)
    return names


def _record(
    item: ImageInput,
    source: tuple[str, str],
    scores: SlideScores,
    engine: GridEngine,
    rendering: OutputOptions,
    settings: SlideSettings,
    reading: PhotoReading,
    classes: Sequence[RenderedClass],
    ranking: Sequence[tuple[int, float]],
    files: list[dict[str, object]],
) -> dict[str, object]:
    geometry = scores.geometry
    rows, cols = geometry.shape
    width, height = geometry.window_level0()
    return {
        "image": str(item.path),
        "kind": "slide",
        "model": engine.loaded.name,
        "weights": engine.loaded.source,
        "method": engine.method,
        "native_stride": engine.native_stride,
        "original_size": {"width": geometry.slide_size[1], "height": geometry.slide_size[0]},
        "input_size": {"width": geometry.size[1], "height": geometry.size[0]},
        "window": {"width": round(width, 3), "height": round(height, 3), "units": "level-0 pixels"},
        "window_input": {
            "width": geometry.window[1],
            "height": geometry.window[0],
            "units": "model pixels",
        },
        "stride": geometry.stride,
        "grid": {"rows": rows, "cols": cols},
        "slide": _slide_json(source, scores, settings),
        "scores": rendering.scores,
        "activation": engine.activation,
        "model_output": engine.loaded.output,
        "classes": [dataclasses.asdict(c) for c in classes],
        "top_k": [{"index": i, "name": engine.categories[i], "score": s} for i, s in ranking],
        "top_k_pooling": rendering.pooling,
        "thumbnail": f"{item.stem.name}_thumbnail.png" if "png" in rendering.outputs else None,
        "settings": {
            **run_settings(engine, rendering, reading=reading),
            **slide_settings(settings),
        },
        "versions": software_versions(),
        "device": str(engine.device),
        "dtype": engine.precision,
        "files": files,
    }


def _slide_json(
    source: tuple[str, str], scores: SlideScores, settings: SlideSettings
) -> dict[str, object]:
    geometry = scores.geometry
    return {
        "reader": source[0],
        "vendor": source[1],
        "level": geometry.level,
        "level_downsample": geometry.level_downsample,
        "resample": geometry.scale,
        "downsample": geometry.downsample,
        "slide_mpp": geometry.slide_mpp,
        "model_mpp": geometry.model_mpp,
        "coordinates": "level-0 pixels",
        "tissue": {
            "mode": settings.tissue if settings.tissue in ("auto", "off") else "file",
            "file": None if settings.tissue in ("auto", "off") else settings.tissue,
            "min_fraction": settings.min_tissue,
            "cells": int(scores.tissue.sum()),
            "fraction": float(scores.tissue.mean()) if scores.tissue.size else 0.0,
        },
        "tiles": {
            "scored": scores.tiles,
            "resumed": scores.resumed,
            "side": scores.tile_side,
            "context": "exact" if settings.context is None else settings.context,
        },
    }
