"""Writing one image's files from its output record: overlays, a contact sheet, npz, json.

File names (``stem`` mirrors the input's place under its folder, see ``io.find_images``):

* ``<stem>_<index>_<name>.png``: one overlay per rendered class, at the photo's resolution
  (``.jpg`` or ``.webp`` with ``OutputOptions.image_format``);
* ``<stem>_sheet.png``: the photo and the overlays side by side, when several classes are shown;
* ``<stem>.npz``: the grid (compressed; all classes or some, float32 or float16);
* ``<stem>.json``: the :class:`~heatmap_cli.outputs.OutputRecord`.

``OutputOptions.outputs`` chooses among the pictures (``png``), the npz and the json; the json is
always written. Every file is written atomically, and the json last: its presence means the
image is done, which is what ``--skip-existing`` checks. An image's outputs are all or nothing:
an old json is removed before anything is rewritten, and if writing fails or is interrupted, the
files this call already wrote are removed again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from heatmap_cli.engine import GridEngine
from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io import output_path, write_image, write_json, write_npz
from heatmap_cli.loader import ImageResult
from heatmap_cli.multiscale import MultiScaleResult
from heatmap_cli.outputs import (
    OutputOptions,
    RenderedClass,
    build_record,
    completion_marker,
    drawn_scores,
    rendered_classes,
)
from heatmap_cli.ranking import rank_image
from heatmap_cli.render import contact_sheet, render_class_overlay

__all__ = [
    "npz_class_indices",
    "overlay_label",
    "render_overlay",
    "write_grid",
    "write_outputs",
]


def overlay_label(rendered: RenderedClass, options: OutputOptions) -> str | None:
    """An overlay's label: the class, its drawn peak and the colour scale; None for none."""
    if options.label == "none":
        return None
    value = f"p={rendered.peak:.2f}" if options.probabilities else f"logit={rendered.peak:.2f}"
    return f"{rendered.name}  {value}  [{rendered.scale.describe()}]"


def render_overlay(
    result: ImageResult, rendered: RenderedClass, options: OutputOptions
) -> np.ndarray:
    """One class's overlay on the image's display copy: uint8 ``(h, w[+bar], 3)``."""
    grid, display = result.grid, result.display
    height, width = grid.geometry.original_size
    to_display = np.array([display.shape[1] / width, display.shape[0] / height], np.float32)
    return render_class_overlay(
        display,
        drawn_scores(grid, options)[rendered.index],
        grid.geometry.centers() * to_display,
        label=overlay_label(rendered, options),
        label_corner="top-left" if options.label == "corner" else "auto",
        cmap=options.cmap,
        alpha=options.alpha,
        vmin=rendered.scale.low,
        vmax=rendered.scale.high,
        colorbar=options.colorbar,
        colorbar_label="probability" if options.probabilities else "logit",
    )


def npz_class_indices(
    result: ImageResult, options: OutputOptions, classes: Sequence[RenderedClass]
) -> list[int] | None:
    """The classes the npz keeps, by ``npz_classes``; None for all of them.

    ``"rendered"``: the drawn classes; ``"topK"``: the image-level ranking's first ``K``, the
    ranking of the json's ``top_k``.
    """
    count = result.grid.logits.shape[0]
    if options.npz_classes == "rendered":
        return [c.index for c in classes]
    if options.npz_classes.startswith("top"):
        wanted = int(options.npz_classes.removeprefix("top"))
        if wanted < count:
            ranking = rank_image(result.grid.passes, wanted, options.pooling)
            return [index for index, _ in ranking]
    return None


def write_grid(
    path: Path,
    grid: MultiScaleResult,
    categories: Sequence[str],
    class_indices: Sequence[int] | None = None,
    dtype: str = "float32",
) -> None:
    """Writes the compressed ``.npz`` of DESIGN.md, all classes or some, float32 or float16.

    Holds ``logits`` and ``probs`` ``(k, rows, cols)`` (``probs``: the softmax over all ``K``
    classes, kept for the ``k`` stored), ``class_indices`` ``(k,)`` when not all are kept,
    ``centers`` ``(rows, cols, 2)`` and ``window`` ``(2,)`` (width, height) in original pixels,
    ``window_input`` ``(2,)`` and ``stride`` in input pixels, ``input_size`` ``(H, W)`` and
    ``classes``, the names of all ``K`` classes.
    """
    geometry = grid.geometry
    rows = slice(None) if class_indices is None else np.asarray(class_indices, dtype=np.int64)
    extra = {} if class_indices is None else {"class_indices": np.asarray(rows)}
    write_npz(
        path,
        logits=grid.logits[rows].astype(dtype),
        probs=grid.probs[rows].astype(dtype),
        **extra,
        centers=geometry.centers(),
        window=geometry.window_in_original(),
        window_input=np.array(geometry.window[::-1], dtype=np.int64),
        stride=np.int64(geometry.stride),
        input_size=np.array(geometry.input_size, dtype=np.int64),
        classes=np.array(categories, dtype=str),
    )


def write_outputs(
    result: ImageResult, engine: GridEngine, options: OutputOptions, out_dir: Path
) -> list[Path]:
    """Renders and writes every output of one image: pictures, npz, and the json last.

    Args:
        result: The image's grid, display copy and colour profile.
        engine: The engine that scored it (class names and what the json says of the run).
        options: What to render and write, and how.
        out_dir: The output folder.

    Returns:
        The paths written, the json last.

    Raises:
        OutputWriteError: A file cannot be written (no output of this image is left then).
    """
    stem, marker = result.item.stem, completion_marker(out_dir, result.item.stem)
    try:
        # Otherwise an old json would vouch for files this call is about to replace.
        marker.unlink(missing_ok=True)
    except OSError as error:
        raise OutputWriteError(f"cannot replace {marker}: {error.strerror or error}") from error
    with _removed_on_failure() as written:
        classes = rendered_classes(result, engine.categories, options)
        if "png" in options.outputs:
            written += _write_pictures(result, classes, options, out_dir)
        if "npz" in options.outputs:
            path = output_path(out_dir, stem, ".npz")
            indices = npz_class_indices(result, options, classes)
            write_grid(path, result.grid, engine.categories, indices, options.npz_dtype)
            written.append(path)
        write_json(marker, build_record(result, engine, options, classes).to_json())
        written.append(marker)
    return written


def _write_pictures(
    result: ImageResult,
    classes: Sequence[RenderedClass],
    options: OutputOptions,
    out_dir: Path,
) -> list[Path]:
    """Writes each class's overlay and, for several classes, the contact sheet."""
    written, overlays = [], []
    folder = completion_marker(out_dir, result.item.stem).parent
    for rendered in classes:
        overlays.append(render_overlay(result, rendered, options))
        path = folder / str(rendered.overlay)
        _write_picture(path, overlays[-1], result, options)
        written.append(path)
    if options.sheet and len(overlays) > 1:
        labels = ["photo", *(f"{c.name} {c.peak:.2f}" for c in classes)]
        sheet = contact_sheet([result.display, *overlays], labels)
        path = output_path(out_dir, result.item.stem, f"_sheet.{options.image_format}")
        _write_picture(path, sheet, result, options)
        written.append(path)
    return written


def _write_picture(
    path: Path, picture: np.ndarray, result: ImageResult, options: OutputOptions
) -> None:
    write_image(path, picture, image_format=options.image_format, icc_profile=result.icc_profile)


@contextlib.contextmanager
def _removed_on_failure() -> Iterator[list[Path]]:
    """Yields a list of written paths; on any exception (Ctrl-C too) deletes them all."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:  # leave no partial set of one image's outputs
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
