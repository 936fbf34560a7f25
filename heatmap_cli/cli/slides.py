"""One slide of the command: scored with resume, its files written together, its json last.

Files of a slide (``stem`` as for photos):

* ``<stem>.npz`` (or ``<stem>.zarr``, a chunked store of the same arrays, for a grid too large
  for the memory budget, or as ``grid_format`` says): ``logits``/``probs`` ``(K, rows, cols)``
  (NaN outside the tissue), ``tissue`` bool ``(rows, cols)``, ``centers`` ``(rows, cols, 2)``
  and ``window`` (width, height) in level-0 pixels, ``stride`` and ``window_input`` in model
  pixels, ``input_size`` (the slide in model pixels), ``classes``, ``level``, ``downsample``,
  ``slide_mpp``, ``model_mpp``;
* ``<stem>.csv``: every tissue cell in WSInfer's columns, ``minx,miny,width,height,prob_<class>``;
* ``<stem>.geojson``: QuPath tiles of about one window each (larger where the file would pass
  about 80 MB), the mean of their cells;
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

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from heatmap_cli.cli.manifest import ManifestRow
from heatmap_cli.cli.records import (
    completion_marker,
    model_settings,
    run_settings,
    software_versions,
)
from heatmap_cli.cli.resume import folder_size, read_record
from heatmap_cli.errors import GeometryError, OutputWriteError, SlideReadError
from heatmap_cli.io import (
    ImageInput,
    output_path,
    slug,
    staged_files,
    write_image,
    write_json,
    write_png,
)
from heatmap_cli.io.slide_tables import write_tile_csv_parts, write_tile_geojson
from heatmap_cli.io.slides import open_slide
from heatmap_cli.io.zarr_grid import zarr_module
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.limits import release_free_memory
from heatmap_cli.pipeline.profiling import timed
from heatmap_cli.pipeline.rendering import OutputOptions, RenderedClass, draw_class
from heatmap_cli.pipeline.scoring import PhotoReading
from heatmap_cli.pipeline.slide_settings import SLIDE_MEMORY_BUDGET
from heatmap_cli.pipeline.slides import SlideScores, SlideSettings, score_slide
from heatmap_cli.pipeline.slides.bands import (
    ClassStatistics,
    GridBand,
    band_rows,
    choose_grid_format,
    class_statistics,
    grid_bands,
    grid_bytes,
)
from heatmap_cli.pipeline.slides.grid_files import (
    Bands,
    grid_attributes,
    write_grid_npz,
    write_grid_zarr,
)
from heatmap_cli.pipeline.slides.summary import (
    aggregate_tiles,
    block_means,
    cell_boxes,
    display_block,
    display_centres,
    tile_side,
)
from heatmap_cli.render import colour_scales, is_diverging

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
        "grid_format": settings.grid_format,
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
    del key["grid_format"]  # how the grid is written, not what the tiles hold
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
    """Every file of the slide, privately, then moved into place with the json last.

    The grid is read in bands of rows (:mod:`heatmap_cli.pipeline.slides.bands`) by each
    output in turn, so none holds it whole (but the npz, for grids that fit the budget).
    """
    marker = completion_marker(out, item.stem)
    name = item.stem.name
    grid_file = _grid_file(name, scores, engine, rendering, settings)  # zarr missing: fail now
    release_free_memory()  # the tiles' arenas, before the grid is read
    bands = _band_reader(scores, engine.activation)
    with timed("render"):
        logit_stats, prob_stats = class_statistics(bands(1), scores.store.shape[0])
    drawn = prob_stats if rendering.probabilities else logit_stats
    chosen = list(rendering.classes) or [
        i for i, _ in drawn.ranking(rendering.top_k, rendering.pooling)
    ]
    ranking = prob_stats.ranking(rendering.top_k, rendering.pooling)
    classes = _rendered(drawn, chosen, scores, engine.categories, rendering, name)
    kept = kept_classes(prob_stats, rendering, chosen)
    with staged_files(marker.parent, name) as staging:
        folder, names = staging.folder, []
        with timed("encode+write"):
            if grid_file is not None:
                names.append(grid_file[0])
                _write_grid(folder / grid_file[0], scores, bands, engine, rendering, kept)
            names += _write_tables(folder, name, bands, scores, engine.categories, kept)
        if "png" in rendering.outputs:
            names += _write_pictures(folder, name, bands, scores, classes, rendering)
        files = [_listed(folder / n) for n in names]
        record = _record(
            item, source, scores, engine, rendering, settings, reading, classes, ranking, files
        )
        record["grid"] = {
            **record["grid"],  # type: ignore[dict-item]
            "file": grid_file[0] if grid_file else None,
            "format": grid_file[1] if grid_file else None,
        }
        write_json(folder / marker.name, record)
        previous, _ = read_record(marker)
        moved = staging.commit(names)
        if previous is not None:
            _remove_replaced_grid(marker.parent, name, previous, keep=names)
        moved += staging.commit([marker.name])
    return [path.relative_to(out) for path in moved], record


def _remove_replaced_grid(
    folder: Path, name: str, previous: dict[str, object], keep: Sequence[str]
) -> None:
    """Removes the grid file of the other format that the previous json listed, if unchanged.

    A ``.npz`` that became a ``.zarr`` store (or the other way) would otherwise stay beside it.
    Only what the previous json lists, at the size it lists, is removed.
    """
    files = previous.get("files")
    for entry in files if isinstance(files, list) else []:
        listed = entry.get("name") if isinstance(entry, dict) else None
        if listed not in (f"{name}.npz", f"{name}.zarr") or listed in keep:
            continue
        path = folder / listed
        with contextlib.suppress(OSError):
            if path.is_symlink():
                continue
            if path.is_dir() and folder_size(path) == (entry.get("bytes"), entry.get("files")):
                shutil.rmtree(path)
            elif path.is_file() and path.stat().st_size == entry.get("bytes"):
                path.unlink()


def _band_reader(scores: SlideScores, activation: str) -> Bands:
    """The grid's bands: ``BAND_BYTES`` of logits each, in multiples of the rows asked for."""

    def bands(multiple: int) -> Iterator[GridBand]:
        rows = band_rows(scores.store.shape, multiple)
        return grid_bands(scores.store, scores.tissue, activation, rows)

    return bands


def _grid_file(
    name: str,
    scores: SlideScores,
    engine: GridEngine,
    rendering: OutputOptions,
    settings: SlideSettings,
) -> tuple[str, str] | None:
    """``(file name, format)`` of the grid file; None when the outputs leave it out.

    Raises:
        OutputWriteError: The grid needs zarr, and zarr is missing (before anything is written).
    """
    if "npz" not in rendering.outputs:
        return None
    budget = engine.settings.memory_budget or SLIDE_MEMORY_BUDGET
    kind = choose_grid_format(scores.store.shape, settings.grid_format, budget)
    if kind == "zarr":
        try:
            zarr_module()
        except OutputWriteError as error:
            size = grid_bytes(scores.store.shape) / 2**20
            shown = f"{size / 1024:.1f} GiB" if size >= 100 else f"{size:.1f} MiB"
            raise OutputWriteError(
                f"its grid ({shown} whole) goes to {name}.zarr, but {error} (its scored tiles "
                "are kept: the next run only writes the outputs)"
            ) from None
    return f"{name}.{kind}", kind


def _write_grid(
    path: Path,
    scores: SlideScores,
    bands: Bands,
    engine: GridEngine,
    options: OutputOptions,
    classes: list[int] | None,
) -> None:
    attributes = grid_attributes(scores.geometry, engine.categories, classes)
    write = write_grid_zarr if path.suffix == ".zarr" else write_grid_npz
    write(path, scores, bands, attributes, classes, options.npz_dtype)


def _listed(path: Path) -> dict[str, object]:
    """A file's entry in the json's ``files``: name and bytes (a folder: all its files')."""
    if path.is_dir():
        size, count = folder_size(path)
        return {"name": path.name, "bytes": size, "files": count}
    return {"name": path.name, "bytes": path.stat().st_size}


def _rendered(
    drawn: ClassStatistics,
    chosen: Sequence[int],
    scores: SlideScores,
    categories: Sequence[str],
    options: OutputOptions,
    name: str,
) -> list[RenderedClass]:
    # the colour scales need each drawn map's range over the tissue only
    if drawn.cells:
        ends = [np.array([[drawn.minimum[i], drawn.maximum[i]]]) for i in chosen]
    else:
        ends = [np.zeros((1, 1), np.float32) for _ in chosen]
    scales = colour_scales(
        ends,
        scale=options.scale,
        probabilities=options.probabilities,
        diverging=is_diverging(options.cmap),
        vmin=options.vmin,
        vmax=options.vmax,
    )
    geometry = scores.geometry
    width, height = geometry.window_level0()
    classes = []
    for index, scale in zip(chosen, scales, strict=True):
        peak, x, y = 0.0, 0.0, 0.0
        found = drawn.peak(index, geometry.shape[1])
        if found is not None and np.isfinite(found[0]):
            peak = found[0]
            x = float(geometry.corners(1)[found[2]] + width / 2)
            y = float(geometry.corners(0)[found[1]] + height / 2)
        picture = f"{name}_{index}_{slug(categories[index])}.{options.image_format}"
        overlay = picture if "png" in options.outputs else None
        classes.append(RenderedClass(index, categories[index], peak, x, y, overlay, scale))
    return classes


def kept_classes(
    probs: ClassStatistics, options: OutputOptions, chosen: Sequence[int]
) -> list[int] | None:
    """The classes the grid file, the CSV and the GeoJSON keep (``npz_classes``); None: all."""
    if options.npz_classes == "rendered":
        return list(chosen)
    if options.npz_classes.startswith("top"):
        wanted = int(options.npz_classes.removeprefix("top"))
        if wanted < len(probs.maximum):
            return [i for i, _ in probs.ranking(wanted, options.pooling)]
    return None


def _write_tables(
    folder: Path,
    name: str,
    bands: Bands,
    scores: SlideScores,
    categories: Sequence[str],
    classes: list[int] | None,
) -> list[str]:
    """The WSInfer CSV and the QuPath GeoJSON, with the grid file's classes, band by band."""
    keep: slice | list[int] = slice(None) if classes is None else classes
    if classes is not None:
        categories = [categories[i] for i in classes]
    geometry = scores.geometry
    parts = (
        (cell_boxes(geometry, band.tissue, band.start), band.probs[keep][:, band.tissue].T)
        for band in bands(1)
    )
    write_tile_csv_parts(folder / f"{name}.csv", parts, categories)
    side = tile_side(geometry, int(scores.tissue.sum()), len(categories))
    pieces = [aggregate_tiles(b.probs[keep], geometry, side, b.start) for b in bands(side)]
    write_tile_geojson(
        folder / f"{name}.geojson",
        np.concatenate([p.boxes for p in pieces]),
        np.concatenate([p.values for p in pieces]),
        categories,
        name=name,
        extra={"cells": np.concatenate([p.cells for p in pieces])},
    )
    return [f"{name}.csv", f"{name}.geojson"]


def _write_pictures(
    folder: Path,
    name: str,
    bands: Bands,
    scores: SlideScores,
    classes: Sequence[RenderedClass],
    options: OutputOptions,
) -> list[str]:
    thumbnail = scores.thumbnail
    names = [f"{name}_thumbnail.png", f"{name}_tissue.png"]
    write_png(folder / names[0], thumbnail)
    mask = np.repeat((scores.mask.astype(np.uint8) * 255)[..., None], 3, axis=2)
    write_png(folder / names[1], mask)
    k = display_block(scores.geometry, scores.thumbnail_downsample)
    shown: dict[int, list[np.ndarray]] = {rendered.index: [] for rendered in classes}
    for band in bands(k):
        drawn = band.probs if options.probabilities else band.logits
        for index, blocks in shown.items():
            blocks.append(block_means(drawn[index], k))
    for rendered in classes:
        values = np.concatenate(shown[rendered.index])
        centers = display_centres(scores.geometry, scores.thumbnail_downsample, k, values.shape)
        values = np.where(np.isfinite(values), values, np.float32(rendered.scale.low))
        with timed("render"):
            picture = draw_class(thumbnail, values, centers, rendered, options)
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
    full = int(scores.full_context.sum())
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
            # the tissue cells equal to one pass over the slide (the rest: fields cut at tiles)
            "full_context_cells": full,
            "full_context_fraction": full / max(1, int(scores.tissue.sum())),
        },
    }
