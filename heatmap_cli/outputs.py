"""Writing one image's results: per-class overlays, a contact sheet, ``.npz`` and ``.json``.

File names (``stem`` mirrors the input's place under its folder, see ``images.find_images``):

* ``<stem>_<index>_<name>.png``: one overlay per rendered class, at the photo's resolution;
* ``<stem>_sheet.png``: the photo and the overlays side by side, when several classes are shown;
* ``<stem>.npz`` and ``<stem>.json``: the grid and a summary, as shared/DESIGN.md defines them.

Every file is written atomically, and the ``.json`` last: its presence means the image is done,
which is what ``--skip-existing`` checks. An image's outputs are all or nothing: an old ``.json``
is removed before anything is rewritten, and if writing fails or is interrupted, the files this
call already wrote are removed again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heatmap_cli.classes import image_ranking, rank_by_peak, slug
from heatmap_cli.errors import OutputWriteError
from heatmap_cli.geometry import GridGeometry
from heatmap_cli.images import output_path, write_json, write_npz, write_png
from heatmap_cli.render import contact_sheet, peak_location, render_class_overlay

__all__ = ["OutputOptions", "completion_marker", "softmax", "write_outputs"]

PROBABILITY_SCALE_FLOOR = 0.1


@dataclass(frozen=True)
class OutputOptions:
    """How results are rendered.

    Attributes:
        classes: Class indices to render; empty means the ``top_k`` best by peak probability.
        top_k: How many classes to render without ``classes``, and how many to rank in the json.
        scores: ``"probs"`` (per-cell softmax, drawn from 0 to the class's peak) or
            ``"logits"`` (drawn over their own range).
        cmap: Matplotlib colormap name.
        alpha: Opacity of the heat map at full score, 0..1.
        colorbar: Append a colour bar to each overlay.
        sheet: Write a contact sheet when several classes are rendered.
        pooling: How the json's image-level ``top_k`` pools each class map: ``"max"``/``"mean"``.
    """

    classes: Sequence[int] = ()
    top_k: int = 3
    scores: str = "probs"
    cmap: str = "inferno"
    alpha: float = 0.5
    colorbar: bool = False
    sheet: bool = True
    pooling: str = "max"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Per-cell softmax over classes.

    Args:
        logits: float ``(K, rows, cols)``.

    Returns:
        float32 ``(K, rows, cols)``, summing to 1 over ``K`` in every cell.
    """
    shifted = logits.astype(np.float64) - logits.max(axis=0, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=0, keepdims=True)).astype(np.float32)


def completion_marker(out_dir: Path, stem: Path) -> Path:
    """The file whose presence means an image's outputs are complete."""
    return output_path(out_dir, stem, ".json")


def write_outputs(
    *,
    out_dir: Path,
    stem: Path,
    source: Path,
    logits: np.ndarray,
    geometry: GridGeometry,
    display: np.ndarray,
    categories: Sequence[str],
    options: OutputOptions,
    summary: dict[str, object],
    ranking: Sequence[tuple[int, float]] | None = None,
) -> list[Path]:
    """Renders and writes every output of one image.

    Args:
        out_dir: The output folder.
        stem: Relative output stem of the image.
        source: The input file (recorded in the json).
        logits: float32 ``(K, rows, cols)`` class-score grid.
        geometry: Where each cell's window lies in the original image.
        display: uint8 ``(h, w, 3)`` photo for the overlays; may be a shrunk copy of the
            original, in which case cell centres are scaled to it.
        categories: The ``K`` class names.
        options: What to render and how.
        summary: Extra json fields (model name, method, stride...).
        ranking: The image-level ``(index, score)`` ranking for the json; None ranks this grid
            by ``options.pooling`` (multi-scale runs pass their own, pooled per pass).

    Returns:
        The paths written, the json last.

    Raises:
        OutputWriteError: A file cannot be written (no output of this image is left then).
    """
    marker = completion_marker(out_dir, stem)
    try:
        # Otherwise an old json would vouch for files this call is about to replace.
        marker.unlink(missing_ok=True)
    except OSError as error:
        raise OutputWriteError(f"cannot replace {marker}: {error.strerror or error}") from error
    with _removed_on_failure() as written:
        probs = softmax(logits)
        centers = geometry.centers()
        shown = probs if options.scores == "probs" else logits
        display_scale = np.array(
            [
                display.shape[1] / geometry.original_size[1],
                display.shape[0] / geometry.original_size[0],
            ],
            dtype=np.float32,
        )
        chosen = list(options.classes) or rank_by_peak(probs, options.top_k)

        overlays: list[np.ndarray] = []
        class_records: list[dict[str, object]] = []
        for index in chosen:
            name = categories[index]
            peak, x, y = peak_location(probs[index], centers)
            label = f"{name}  p={peak:.2f}"
            # Probabilities are drawn from 0 to the class's own peak, so a class that shares its
            # probability with look-alikes (tabby / tiger cat) still shows where it is strongest;
            # the floor keeps a class the model barely sees from being painted as hot.
            vmin, vmax = (
                (0.0, max(peak, PROBABILITY_SCALE_FLOOR))
                if options.scores == "probs"
                else (None, None)
            )
            image = render_class_overlay(
                display,
                shown[index],
                centers * display_scale,
                label=label,
                cmap=options.cmap,
                alpha=options.alpha,
                vmin=vmin,
                vmax=vmax,
                colorbar=options.colorbar,
                colorbar_label="probability" if options.scores == "probs" else "logit",
            )
            path = output_path(out_dir, stem, f"_{index}_{slug(name)}.png")
            write_png(path, image)
            written.append(path)
            overlays.append(image)
            class_records.append(
                {"index": index, "name": name, "peak": peak, "x": x, "y": y, "overlay": path.name}
            )

        if options.sheet and len(overlays) > 1:
            labels = ["photo", *(f"{r['name']} {r['peak']:.2f}" for r in class_records)]
            sheet_path = output_path(out_dir, stem, "_sheet.png")
            write_png(sheet_path, contact_sheet([display, *overlays], labels))
            written.append(sheet_path)

        npz_path = output_path(out_dir, stem, ".npz")
        write_npz(
            npz_path,
            logits=logits.astype(np.float32),
            probs=probs,
            centers=centers,
            window=geometry.window_in_original(),
            stride=np.int64(geometry.stride),
            input_size=np.array(geometry.input_size, dtype=np.int64),
            classes=np.array(categories, dtype=str),
        )
        written.append(npz_path)

        if ranking is None:
            ranking = image_ranking(probs, options.top_k, options.pooling)
        ranked = [{"index": i, "name": categories[i], "score": score} for i, score in ranking]
        rows, cols = geometry.shape
        record = {
            "image": str(source),
            **summary,
            "original_size": {
                "width": geometry.original_size[1],
                "height": geometry.original_size[0],
            },
            "input_size": {"width": geometry.input_size[1], "height": geometry.input_size[0]},
            "window": {"width": geometry.window[1], "height": geometry.window[0]},
            "stride": geometry.stride,
            "grid": {"rows": rows, "cols": cols},
            "scores": options.scores,
            "classes": class_records,
            "top_k": ranked,
            "top_k_pooling": options.pooling,
        }
        json_path = completion_marker(out_dir, stem)
        write_json(json_path, record)
        written.append(json_path)
    return written


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
