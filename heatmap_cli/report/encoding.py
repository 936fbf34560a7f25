"""One image's score grid, reduced to what the page draws, in compact browser-ready form.

The ``.npz`` holds a float grid per class (1000 x rows x cols for ImageNet: 290 KB at stride 32,
3.8 MB at stride 8). The page needs far less:

* **maps**: every class whose peak reaches ``1/255`` (plus the rendered and ranked ones), as
  ``uint8`` grids quantized over the range the PNGs draw: ``q = round(255 * p / top)`` with
  ``top = max(peak, 0.1)``, so one step is one of the colour map's 256 bins (error at most
  ``top / 510``). A class below ``1/255`` everywhere would be drawn at most 4% hot at the PNGs'
  scale (under 10% opacity at alpha 0.5, nearly black): next to nothing to see, so it is not
  stored.
* **peaks** of every class in the npz, ``uint16`` (``round(65535 * p)``), so any class can be
  named, ranked and told apart from an absent one;
* **cells**: each cell's top 5 classes (``uint16`` indices) and values (``uint16`` as above);
* the lattice of window centres (one x per column, one y per row) and the window size, in
  original pixels, from which the page outlines each cell's window.

Arrays travel as little-endian base64 in a JSON object (see ``encode_grid``).
"""

from __future__ import annotations

import base64
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heatmap_cli.errors import HeatmapError

__all__ = [
    "CELL_TOP",
    "DISPLAY_FLOOR",
    "MAX_MAPS",
    "STORE_THRESHOLD",
    "GridDataError",
    "ScoreGrid",
    "encode_grid",
    "read_score_file",
    "read_score_store",
    "score_grid",
]

STORE_THRESHOLD = 1 / 255
"""A class's map is stored when its peak reaches this value (one step of 8-bit probability)."""

DISPLAY_FLOOR = 0.1
"""As the PNGs' per-class scale, a class is stored over ``0..max(peak, DISPLAY_FLOOR)`` (the
page redraws it on the overlays' shared range when the image's json gives one)."""

MAX_MAPS = 128
"""At most this many maps per image (by peak), plus the rendered and ranked classes; a bound
for activations such as sigmoid, where many classes may pass the threshold."""

CELL_TOP = 5
"""Classes listed per cell when hovering."""

_READ = ("probs", "centers", "window", "classes", "class_indices", "tissue")
_U16_MAX = 65535
_LATTICE_TOLERANCE = 1e-3  # pixels: centres are float32 products of a scale and a stride


class GridDataError(HeatmapError):
    """A score file that the page cannot draw from (missing arrays, bad shapes or values)."""


@dataclass(frozen=True)
class ScoreGrid:
    """The parts of an ``.npz`` that the report uses.

    Attributes:
        scores: float32 ``(k, rows, cols)`` per-cell probabilities (or sigmoid scores) in
            ``[0, 1]``, for the ``k`` classes the file holds.
        class_indices: int64 ``(k,)``, each row's index in the model's classes.
        names: Names of the model's classes by index, as far as the file knows them.
        xs: float64 ``(cols,)`` x of the window centres of each column, original pixels.
        ys: float64 ``(rows,)`` y of the window centres of each row, original pixels.
        window: ``(width, height)`` of each cell's window in original pixels.
    """

    scores: np.ndarray
    class_indices: np.ndarray
    names: dict[int, str]
    xs: np.ndarray
    ys: np.ndarray
    window: tuple[float, float]


def read_score_file(path: Path) -> ScoreGrid:
    """Reads the arrays the page needs from an image's ``.npz``.

    Accepts float16 or float32 ``probs``, and files that keep only some classes (then
    ``class_indices`` says which, and ``classes`` names either those or all of them).

    Args:
        path: The ``<stem>.npz`` of one image.

    Returns:
        The scores, class indices and names, and the window lattice.

    Raises:
        GridDataError: The file cannot be read, lacks ``probs``/``centers``/``window``, or
            holds shapes or values that do not fit together.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            # Only these are decompressed: the logits, as large as probs, are never read.
            arrays = {key: data[key] for key in _READ if key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise GridDataError(f"cannot read {Path(path).name}: {error}") from error
    return score_grid(arrays, path)


def read_score_store(path: Path) -> ScoreGrid:
    """Reads the arrays the page needs from a slide's ``.zarr`` grid store.

    The store holds the npz's arrays (``probs``, ``centers``, ``tissue``) and its small ones
    (``window``, ``classes``, ``class_indices``) as attributes.

    Raises:
        GridDataError: As :func:`read_score_file`, or zarr is not installed.
    """
    from heatmap_cli.io.zarr_grid import read_zarr_arrays

    try:
        arrays, attributes = read_zarr_arrays(path, ("probs", "centers", "tissue"))
    except (HeatmapError, OSError, ValueError, KeyError) as error:
        raise GridDataError(f"cannot read {Path(path).name}: {error}") from error
    for key in ("window", "classes", "class_indices"):
        if key in attributes:
            arrays[key] = np.asarray(attributes[key])
    return score_grid(arrays, path)


def score_grid(arrays: dict[str, np.ndarray], path: Path) -> ScoreGrid:
    """The page's :class:`ScoreGrid` from a grid file's arrays (those of ``_READ`` present).

    Raises:
        GridDataError: Arrays missing, or shapes or values that do not fit together.
    """
    missing = [key for key in ("probs", "centers", "window") if key not in arrays]
    if missing:
        raise GridDataError(f"{Path(path).name} has no {', '.join(missing)}")

    scores = np.asarray(arrays["probs"], dtype=np.float32)
    if "tissue" in arrays and scores.ndim == 3:  # a slide's cells off the tissue: no score
        scores = np.where(np.isfinite(scores), scores, np.float32(0))
    if scores.ndim != 3 or 0 in scores.shape:
        raise GridDataError(f"probs must be (classes, rows, cols), got {scores.shape}")
    if not np.all(np.isfinite(scores)) or scores.min() < -1e-3 or scores.max() > 1 + 1e-3:
        raise GridDataError("probs are not all within [0, 1], so they cannot be drawn as such")
    count, rows, cols = scores.shape
    indices = np.arange(count, dtype=np.int64)
    if "class_indices" in arrays:
        indices = np.asarray(arrays["class_indices"], dtype=np.int64).reshape(-1)
        if len(indices) != count or (count and indices.min() < 0):
            raise GridDataError(f"class_indices {indices.shape} do not match probs {scores.shape}")
    xs, ys = _lattice(np.asarray(arrays["centers"], dtype=np.float64), rows, cols)
    window = np.asarray(arrays["window"], dtype=np.float64).reshape(-1)
    if window.shape != (2,) or not np.all(window > 0):
        raise GridDataError(f"window must be a positive (width, height), got {window}")
    return ScoreGrid(
        scores=np.clip(scores, 0.0, 1.0),
        class_indices=indices,
        names=_names(arrays.get("classes"), indices),
        xs=xs,
        ys=ys,
        window=(float(window[0]), float(window[1])),
    )


def _lattice(centers: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    if centers.shape != (rows, cols, 2):
        raise GridDataError(f"centers {centers.shape} do not match the grid {(rows, cols)}")
    xs, ys = centers[0, :, 0], centers[:, 0, 1]
    on_lattice = np.allclose(centers[..., 0], xs[None, :], atol=_LATTICE_TOLERANCE) and np.allclose(
        centers[..., 1], ys[:, None], atol=_LATTICE_TOLERANCE
    )
    if not on_lattice or np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
        raise GridDataError("window centres do not form a grid (x by column, y by row)")
    return xs, ys


def _names(classes: np.ndarray | None, indices: np.ndarray) -> dict[int, str]:
    if classes is None:
        return {}
    names = [str(name) for name in np.asarray(classes).reshape(-1)]
    if len(names) == len(indices):  # one name per row (the same as by index when all are kept)
        return dict(zip(indices.tolist(), names, strict=True))
    return dict(enumerate(names))  # the model's whole table, by index


def encode_grid(grid: ScoreGrid, keep: Iterable[int] = ()) -> dict[str, object]:
    """The compact, JSON-ready form of one image's grid that the page draws and hovers.

    Args:
        grid: The image's scores and lattice (see :func:`read_score_file`).
        keep: Model class indices whose maps are stored whatever their peak (the rendered and
            ranked classes); indices the file does not hold are ignored.

    Returns:
        A JSON-serializable dict: ``grid`` ``[rows, cols]``; ``xs``, ``ys`` (window centres,
        original pixels); ``window`` ``[width, height]``; ``classes`` (base64 uint16 model
        indices of the file's rows, or ``None`` for ``0..k-1``); ``peaks`` (base64 uint16,
        ``round(65535 * peak)`` per row); ``maps`` ``{"index": [...], "top": [...], "q":
        base64 uint8 (n, rows, cols)}`` with value ``q / 255 * top``; ``cells`` ``{"index",
        "value"}``: base64 uint16 ``(rows, cols, 5)`` model indices and ``round(65535 * p)``,
        best first.
    """
    scores, indices = grid.scores, grid.class_indices
    count, rows, cols = scores.shape
    peaks = scores.reshape(count, -1).max(axis=1)

    rows_by_class = {int(index): row for row, index in enumerate(indices.tolist())}
    forced = [rows_by_class[i] for i in dict.fromkeys(keep) if i in rows_by_class]
    by_peak = np.argsort(-peaks, kind="stable")
    passing = [int(row) for row in by_peak[:MAX_MAPS] if peaks[row] >= STORE_THRESHOLD]
    stored = list(dict.fromkeys(forced + passing))
    tops = np.maximum(peaks[stored], DISPLAY_FLOOR).astype(np.float64)
    quantized = np.rint(scores[stored] / tops[:, None, None] * 255).astype(np.uint8)

    depth = min(CELL_TOP, count)
    best = np.argsort(-scores, axis=0, kind="stable")[:depth]  # (depth, rows, cols)
    best_values = np.take_along_axis(scores, best, axis=0)
    identity = np.array_equal(indices, np.arange(count))
    return {
        "grid": [rows, cols],
        "xs": _rounded(grid.xs),
        "ys": _rounded(grid.ys),
        "window": _rounded(np.asarray(grid.window)),
        "classes": None if identity else _base64(indices, "<u2"),
        "peaks": _base64(_as_u16(peaks), "<u2"),
        "maps": {
            "index": [int(indices[row]) for row in stored],
            "top": _rounded(tops),
            "q": _base64(quantized, "u1"),
        },
        "cells": {
            "index": _base64(indices[best].transpose(1, 2, 0), "<u2"),
            "value": _base64(_as_u16(best_values).transpose(1, 2, 0), "<u2"),
        },
    }


def _as_u16(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0.0, 1.0) * _U16_MAX).astype(np.uint16)


def _base64(values: np.ndarray, dtype: str) -> str:
    if dtype == "<u2" and values.size and int(values.max()) > _U16_MAX:
        raise GridDataError(f"class index {int(values.max())} does not fit in 16 bits")
    raw = np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes()
    return base64.b64encode(raw).decode("ascii")


def _rounded(values: np.ndarray) -> list[float]:
    """Floats to 6 significant digits: pixels and display ranges need no more."""
    return [float(f"{value:.6g}") for value in np.asarray(values, dtype=np.float64).reshape(-1)]
