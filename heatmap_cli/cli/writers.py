"""Writing one image's files from its output record: overlays, a contact sheet, npz, json.

File names (``stem`` mirrors the input's place under its folder, see ``io.find_images``):

* ``<stem>_<index>_<name>.png``: one overlay per rendered class, at the photo's resolution
  (``.jpg`` or ``.webp`` with ``OutputOptions.image_format``);
* ``<stem>_sheet.png``: the photo and the overlays side by side, when several classes are shown;
* ``<stem>.npz``: the grid (compressed; all classes or some, float32 or float16);
* ``<stem>.json``: the :class:`~heatmap_cli.cli.records.OutputRecord`.

``OutputOptions.outputs`` chooses among the pictures (``png``), the npz and the json; the json is
always written, and lists every other file with its size. An image's files are written into a
private folder and then moved into place together, the json last (``io.staged_files``), so an
interrupted run leaves the earlier outputs as they were. The image is done when its json lists
files that all exist with the sizes it records, made with the current settings
(``heatmap_cli.cli.resume``).

An image made again with other settings may write fewer files (``--top-k 2`` after 3, no npz):
the files its previous json listed and the new one does not are the tool's own, and are removed
once the new files are in place, before the new json is (:func:`remove_replaced`). Only a
regular file named as this image's outputs are (``<stem>_...`` or ``<stem>.npz``) and still of
the size that json recorded is removed: a file the tool did not write, or one replaced since,
is never touched. A json that cannot be trusted (damaged, ``NaN``) names nothing to remove.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import Any

import numpy as np

from heatmap_cli.cli.records import OutputFile, build_record, completion_marker
from heatmap_cli.cli.resume import ListedFile, listed_files, read_record
from heatmap_cli.io import (
    IMAGE_FORMATS,
    output_path,
    staged_files,
    write_image,
    write_json,
    write_npz,
)
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.fidelity import Fidelity
from heatmap_cli.pipeline.multiscale import MultiScaleResult
from heatmap_cli.pipeline.profiling import timed
from heatmap_cli.pipeline.rendering import (
    ImageSummary,
    OutputOptions,
    RenderedClass,
    render_overlay,
    summarize_image,
)
from heatmap_cli.pipeline.scoring import DEFAULT_READING, ImageResult, PhotoReading
from heatmap_cli.render import contact_sheet, sheet_tile

__all__ = [
    "WRITER_THREADS",
    "npz_class_indices",
    "remove_replaced",
    "write_grid",
    "write_outputs",
]


WRITER_THREADS = 2
"""Threads that draw, encode and write an image's files."""


def npz_class_indices(
    summary: ImageSummary, options: OutputOptions, count: int
) -> list[int] | None:
    """The classes the npz keeps, by ``npz_classes``; None for all ``count`` of them.

    ``"rendered"``: the drawn classes; ``"topK"``: the image-level ranking's first ``K``, the
    ranking of the json's ``top_k``.
    """
    if options.npz_classes == "rendered":
        return [c.index for c in summary.classes]
    if options.npz_classes.startswith("top"):
        wanted = int(options.npz_classes.removeprefix("top"))
        if wanted < count:
            return [index for index, _ in summary.ranking.top(wanted)]
    return None


def write_grid(
    path: Path,
    grid: MultiScaleResult,
    categories: Sequence[str],
    class_indices: Sequence[int] | None = None,
    dtype: str = "float32",
) -> None:
    """Writes the compressed ``.npz``: all classes or some, float32 or float16.

    Holds ``logits`` and ``probs`` ``(k, rows, cols)`` (``probs``: the softmax over all ``K``
    classes, kept for the ``k`` stored), ``class_indices`` ``(k,)`` when not all are kept,
    ``centers`` ``(rows, cols, 2)`` and ``window`` ``(2,)`` (width, height) in original pixels,
    ``window_input`` ``(2,)`` and ``stride`` in input pixels, ``input_size`` ``(H, W)`` and
    ``classes``, the names of all ``K`` classes; ``exact`` bool ``(rows, cols)``, the cells
    evaluated as crops, when the grid says.
    """
    geometry = grid.geometry
    rows = slice(None) if class_indices is None else np.asarray(class_indices, dtype=np.int64)
    extra = {} if class_indices is None else {"class_indices": np.asarray(rows)}
    if grid.exact is not None:
        extra["exact"] = grid.exact
    with timed("encode+write"):
        write_npz(
            path,
            logits=grid.logits[rows].astype(dtype, copy=False),  # all classes: no copy
            probs=grid.probs[rows].astype(dtype, copy=False),
            **extra,
            centers=geometry.centers(),
            window=geometry.window_in_original(),
            window_input=np.array(geometry.window[::-1], dtype=np.int64),
            stride=np.int64(geometry.stride),
            input_size=np.array(geometry.input_size, dtype=np.int64),
            classes=np.array(categories, dtype=str),
        )


def write_outputs(
    result: ImageResult,
    engine: GridEngine,
    options: OutputOptions,
    out_dir: Path,
    reading: PhotoReading = DEFAULT_READING,
    summary: ImageSummary | None = None,
    fidelity: Fidelity | None = None,
) -> list[Path]:
    """Renders and writes every output of one image: pictures, npz, and the json last.

    The files are written into a private folder, then moved into place with the json last
    (``io.staged_files``); on any failure or interruption only that private folder is removed,
    never a file in ``out_dir``. Overlays are drawn, pictures encoded and the npz compressed in
    writer threads (Pillow, numpy, zlib and ISA-L release the GIL); every file is complete before
    the json is written, and none is being written when this returns or raises.

    Args:
        result: The image's grid, display copy and colour profile.
        engine: The engine that scored it (class names and what the json says of the run).
        options: What to render and write, and how.
        out_dir: The output folder.
        reading: How the photo was decoded (recorded in the json's settings).
        summary: The image's ranking and drawn classes, when derived already
            (:func:`~heatmap_cli.pipeline.rendering.summarize_image`; their exact peaks too,
            from the fidelity check).
        fidelity: The image's fidelity check, for the json; None: not checked.

    Returns:
        The paths written, the json last.

    Raises:
        OutputWriteError: A file cannot be written (the json is then not written).
    """
    stem, marker = result.item.stem, completion_marker(out_dir, result.item.stem)
    previous, _ = read_record(marker)  # before anything of this run is moved into place
    with staged_files(marker.parent, stem.name) as staging, _WriterJobs() as jobs:
        if summary is None:
            summary = summarize_image(result, engine.categories, options)
        grid_names = []
        if "npz" in options.outputs:
            grid_names.append(output_path(out_dir, stem, ".npz").name)
            indices = npz_class_indices(summary, options, result.grid.logits.shape[0])
            grid = (result.grid, engine.categories, indices, options.npz_dtype)
            jobs.submit(write_grid, staging.folder / grid_names[0], *grid)
        names = []
        if "png" in options.outputs:
            names += _write_pictures(staging.folder, result, summary.classes, options, jobs)
        names += grid_names
        jobs.wait()
        files = [OutputFile(name, (staging.folder / name).stat().st_size) for name in names]
        record = build_record(result, engine, options, summary, files, reading, fidelity)
        write_json(staging.folder / marker.name, record.to_json())
        moved = staging.commit(names)
        if previous is not None:
            remove_replaced(marker.parent, stem.name, listed_files(previous), keep=names)
        return [*moved, *staging.commit([marker.name])]


def remove_replaced(
    folder: Path, stem_name: str, listed: Iterable[ListedFile], keep: Iterable[str]
) -> list[Path]:
    """Removes the files a previous json listed that the image's new outputs do not include.

    Args:
        folder: The image's folder in the output folder.
        stem_name: The image's output stem's last part (``photo`` of ``trip/photo``).
        listed: The files its previous json listed, with the sizes it recorded.
        keep: The names of the new outputs (never removed).

    Returns:
        The files removed: only regular files (not links) named as this image's outputs
        (``<stem>_...`` or ``<stem>.npz``) whose size is still the one recorded.
    """
    kept, removed = set(keep), []
    for name, size in listed:
        if name in kept or not _named_as_output(name, stem_name):
            continue
        path = folder / name
        with contextlib.suppress(OSError):
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_size == size:
                path.unlink()
                removed.append(path)
    return removed


def _named_as_output(name: str, stem_name: str) -> bool:
    """Whether a file name is one the writers give an image's pictures or npz."""
    if name == f"{stem_name}.npz":
        return True
    suffix = name.rpartition(".")[2].lower()
    return name.startswith(f"{stem_name}_") and suffix in IMAGE_FORMATS


class _WriterJobs:
    """Files being written in the writer threads for one image; all finished on leaving.

    At most :data:`WRITER_THREADS` jobs wait or run at once: :meth:`submit` waits for one to
    finish before taking another, so a photo's pictures are not all held in memory at once
    (each overlay of a 12 MP photo is 36 MB) when drawing them is faster than encoding them.
    """

    def __init__(self) -> None:
        self._futures: list[Future[Any]] = []

    def __enter__(self) -> _WriterJobs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for future in self._futures:
            future.cancel()
        futures_wait(self._futures)  # none may write into a folder that is being removed

    def submit(self, write: Callable[..., Any], *args: object) -> Future[Any]:
        """Runs ``write(*args)`` in a writer thread, once fewer than WRITER_THREADS are busy."""
        while len(busy := [f for f in self._futures if not f.done()]) >= WRITER_THREADS:
            futures_wait(busy, return_when=FIRST_COMPLETED)
        self._futures.append(_writer_pool().submit(write, *args))
        return self._futures[-1]

    def wait(self) -> None:
        """Waits for every file; raises the first failure, in submission order."""
        futures_wait(self._futures)
        for future in self._futures:
            future.result()


@functools.cache
def _writer_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="heatmap-writer")


def _write_pictures(
    folder: Path,
    result: ImageResult,
    classes: Sequence[RenderedClass],
    options: OutputOptions,
    jobs: _WriterJobs,
) -> list[str]:
    """Has each class's overlay drawn and written, then the contact sheet; their names.

    The overlays are drawn in the writer threads too, two at a time (Pillow and numpy release
    the GIL for the large arrays): on two cores a 12-megapixel photo's three overlays take about
    half as long as drawn one after the other here while the writers encode. An overlay is let
    go once written; the sheet is laid out from their small tiles, which the writer threads make
    (:func:`~heatmap_cli.render.sheet_tile`).
    """
    sheet = options.sheet and len(classes) > 1
    names, tiles = [], []
    for rendered in classes:
        names.append(str(rendered.overlay))
        path = folder / names[-1]
        tiles.append(jobs.submit(_draw_and_write_overlay, path, rendered, result, options, sheet))
    if sheet:
        labels = ["photo", *(f"{c.name} {c.peak:.2f}" for c in classes)]
        names.append(f"{result.item.stem.name}_sheet.{options.image_format}")
        jobs.submit(_write_sheet, folder / names[-1], tiles, labels, result, options)
    return names


def _draw_and_write_overlay(
    path: Path, rendered: RenderedClass, result: ImageResult, options: OutputOptions, tile: bool
) -> np.ndarray | None:
    """Draws one class's overlay and writes it; returns its contact-sheet tile if ``tile``."""
    with timed("render"):
        picture = render_overlay(result, rendered, options)
    _write_picture(path, picture, result, options)
    return sheet_tile(picture) if tile else None


def _write_sheet(
    path: Path,
    tiles: list[Future[Any]],
    labels: list[str],
    result: ImageResult,
    options: OutputOptions,
) -> None:
    # The overlays' jobs were submitted before this one, so they have all started: waiting on
    # them cannot deadlock the pool.
    pictures = [sheet_tile(result.display), *(tile.result() for tile in tiles)]
    with timed("render"):
        sheet = contact_sheet(pictures, labels)
    _write_picture(path, sheet, result, options)


def _write_picture(
    path: Path, picture: np.ndarray, result: ImageResult, options: OutputOptions
) -> None:
    with timed("encode+write"):
        write_image(
            path, picture, image_format=options.image_format, icc_profile=result.icc_profile
        )
