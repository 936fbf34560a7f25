"""Scoring what the methods wrote, and dense against crops network-only.

* :func:`score_heatmap_outputs`, :func:`score_peer_outputs`: the pixel accuracy and mIoU of a
  folder of outputs against the mosaics' label maps (:mod:`.metrics` says how a grid becomes
  per-pixel labels).
* :func:`mosaic_grids`: dense and crops logits of a set through the library
  (``convolutionalize`` + ``score_grid``), cached; :func:`score_grids` scores any grids by the
  benchmark's rule, so a refinement's cell selection can be studied offline in seconds.
* :func:`grid_fidelity`: dense against crops for one texture model on a mosaic set, cell by
  cell, with the cells split by where they are: inside one texture region, or on a boundary.
* :func:`photo_fidelity`: the same for the offline default model on the sample photos.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from heatmap_cli import convolutionalize
from heatmap_cli.grid import score_grid
from heatmap_cli.grid.geometry import GridGeometry

from .metrics import Agreement, Confusion, cell_truth, pixel_labels
from .mosaics import MosaicSet, read_labels
from .training import TrainedModel, normalize

__all__ = [
    "GridFidelity",
    "MosaicGrids",
    "PhotoFidelity",
    "Scores",
    "grid_fidelity",
    "mosaic_grids",
    "photo_fidelity",
    "score_grids",
    "score_heatmap_outputs",
    "score_peer_outputs",
    "softmax",
]


@dataclass
class Scores:
    """Accuracy of one method's outputs over a set.

    Attributes:
        pixels: Per-pixel confusion over every mosaic.
        cells: Per-cell confusion against the class at each window's centre (grid methods only).
        exact_cells: Cells the method evaluated as crops (the npz's ``exact``), when it says.
        total_cells: Cells in all.
    """

    pixels: Confusion
    cells: Confusion | None = None
    exact_cells: int | None = None
    total_cells: int = 0


def score_heatmap_outputs(mosaics: MosaicSet, out: Path) -> Scores:
    """Scores the ``<stem>.npz`` files a ``heatmap`` run wrote into ``out``.

    Args:
        mosaics: The set the run read.
        out: The run's ``--out``.

    Returns:
        Pixel and cell confusions; the exact-cell count when the npz has an ``exact`` array.
    """
    classes = len(mosaics.names)
    scores = Scores(Confusion(classes), Confusion(classes))
    for stem in mosaics.stems():
        labels = read_labels(mosaics, stem)
        with np.load(out / f"{stem}.npz") as npz:
            probs, centers = npz["probs"].astype(np.float32), npz["centers"]
            exact = npz["exact"] if "exact" in npz.files else None
        scores.pixels.add(labels, pixel_labels(probs, centers, labels.shape))
        assert scores.cells is not None
        scores.cells.add(cell_truth(labels, centers), probs.argmax(0))
        scores.total_cells += probs.shape[1] * probs.shape[2]
        if exact is not None:
            scores.exact_cells = (scores.exact_cells or 0) + int(exact.sum())
    return scores


def score_peer_outputs(mosaics: MosaicSet, out: Path) -> Scores:
    """Scores the ``<stem>.npz`` label maps a peer (``peer_cam.py``) wrote into ``out``."""
    scores = Scores(Confusion(len(mosaics.names)))
    for stem in mosaics.stems():
        with np.load(out / f"{stem}.npz") as npz:
            scores.pixels.add(read_labels(mosaics, stem), npz["labels"])
    return scores


@dataclass
class GridFidelity:
    """Dense against crops for one model over a set, network-only.

    Attributes:
        all: Every cell.
        inside: Cells whose whole window lies in one texture region.
        boundary: Cells whose window holds more than one class.
        border: Cells whose window touches the image border (there the dense pass sees zero
            padding on that side too, as a crop does).
        interior: The other cells.
        dense_cells: Dense's top-1 against the class at each window centre.
        crops_cells: Crops' top-1 against the same.
    """

    classes: int
    all: Agreement = field(default_factory=Agreement)
    inside: Agreement = field(default_factory=Agreement)
    boundary: Agreement = field(default_factory=Agreement)
    border: Agreement = field(default_factory=Agreement)
    interior: Agreement = field(default_factory=Agreement)
    dense_cells: Confusion = field(init=False)
    crops_cells: Confusion = field(init=False)

    def __post_init__(self) -> None:
        self.dense_cells = Confusion(self.classes)
        self.crops_cells = Confusion(self.classes)


def _pure_windows(
    labels: np.ndarray, window: int, stride: int, grid: tuple[int, int]
) -> np.ndarray:
    """Whether each cell's window holds a single class: bool ``(h, w)``."""
    rows, cols = grid
    pure = np.zeros(grid, dtype=bool)
    for i in range(rows):
        for j in range(cols):
            patch = labels[i * stride : i * stride + window, j * stride : j * stride + window]
            pure[i, j] = patch.min() == patch.max()
    return pure


@dataclass(frozen=True)
class MosaicGrids:
    """One mosaic's dense and crops grids, for studying a method offline.

    Attributes:
        stem: The mosaic's file stem.
        labels: uint8 ``(H, W)`` ground truth.
        centers: float32 ``(h, w, 2)`` window centres ``(x, y)`` in pixels.
        dense: float32 ``(K, h, w)`` logits of the converted network, one pass.
        crops: float32 ``(K, h, w)`` logits of the unmodified model on every window.
        window: Window side in pixels.
        stride: Grid stride in pixels.
    """

    stem: str
    labels: np.ndarray
    centers: np.ndarray
    dense: np.ndarray
    crops: np.ndarray
    window: int
    stride: int

    def pure(self) -> np.ndarray:
        """Whether each cell's window lies in one texture region: bool ``(h, w)``."""
        return _pure_windows(self.labels, self.window, self.stride, self.dense.shape[1:])


@torch.inference_mode()
def _compute_grids(model: TrainedModel, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    window = (model.recipe.window, model.recipe.window)
    with warnings.catch_warnings():
        # The squeeze-and-excitation warning, once per mosaic otherwise: table (b) has a column.
        warnings.filterwarnings("ignore", message=".*global pooling inside its body")
        net = convolutionalize(model.model, input_size=window)
    dense = score_grid(net, x, input_size=window)[0].numpy()
    crops = score_grid(net, x, method="crops", input_size=window)[0].numpy()
    return dense, crops, net.stride


def mosaic_grids(
    model: TrainedModel, mosaics: MosaicSet, limit: int | None = None, cache: Path | None = None
) -> Iterator[MosaicGrids]:
    """Dense and crops logits of every mosaic of the set (computed once when ``cache`` is given).

    The grids are what ``score_grid`` returns through the library, network-only; the cache
    (``cache/grids/<model>/<set>/<stem>.npz``: ``dense``, ``crops``, ``labels``, ``centers``,
    ``window``, ``stride``, the fields of :class:`MosaicGrids`) makes a study of cell-selection
    rules (which cells a refinement should evaluate exactly) cost no network time after the
    first run.

    Args:
        model: The texture model.
        mosaics: The set (square mosaics whose side is ``window + 32 k``).
        limit: Only the first ``limit`` mosaics.
        cache: The benchmark's cache folder, or None to recompute.

    Yields:
        One :class:`MosaicGrids` per mosaic, in file order.
    """
    window = model.recipe.window
    folder = None if cache is None else cache / "grids" / model.recipe.key / mosaics.root.name
    for stem in mosaics.stems()[:limit]:
        labels = read_labels(mosaics, stem)
        path = None if folder is None else folder / f"{stem}.npz"
        if path is not None and path.exists():
            with np.load(path) as stored:
                dense, crops, stride = stored["dense"], stored["crops"], int(stored["stride"])
        else:
            image = np.asarray(Image.open(mosaics.images / f"{stem}.png").convert("RGB"))
            dense, crops, stride = _compute_grids(model, normalize(image[None]))
        geometry = GridGeometry(labels.shape, labels.shape, (window, window), stride)
        grids = MosaicGrids(stem, labels, geometry.centers(), dense, crops, window, stride)
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                path,
                dense=dense,
                crops=crops,
                labels=labels,
                centers=grids.centers,
                window=window,
                stride=stride,
            )
        yield grids


def score_grids(
    grids: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], classes: int
) -> Confusion:
    """Pixel confusion of grids by the benchmark's rule (:func:`.metrics.pixel_labels`).

    Args:
        grids: ``(labels, probs, centers)`` per mosaic: uint8 ``(H, W)``, float ``(K, h, w)``
            probabilities, float ``(h, w, 2)`` centres. A refinement studied offline passes
            ``np.where(exact, crops, dense)`` (softmaxed) as ``probs``.
        classes: ``K``.

    Returns:
        The confusion over every pixel of every mosaic.
    """
    confusion = Confusion(classes)
    for labels, probs, centers in grids:
        confusion.add(labels, pixel_labels(probs, centers, labels.shape))
    return confusion


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of ``(K, ...)`` logits."""
    shifted = np.exp(logits - logits.max(0, keepdims=True))
    return shifted / shifted.sum(0, keepdims=True)


def grid_fidelity(
    model: TrainedModel, mosaics: MosaicSet, limit: int | None = None, cache: Path | None = None
) -> GridFidelity:
    """Dense (converted network) against crops (unmodified model) on the set's mosaics.

    Args:
        model: The texture model.
        mosaics: The set (square mosaics whose side is ``window + 32 k``).
        limit: Use only the first ``limit`` mosaics.
        cache: Where :func:`mosaic_grids` keeps the grids (None: recompute).

    Returns:
        The agreement, split by cell position, and both methods' cell accuracy.
    """
    result = GridFidelity(len(mosaics.names))
    for grids in mosaic_grids(model, mosaics, limit, cache):
        dense, crops = softmax(grids.dense), softmax(grids.crops)
        pure = grids.pure()
        interior = np.zeros(pure.shape, dtype=bool)
        interior[1:-1, 1:-1] = True
        result.all.add(dense, crops)
        result.inside.add(dense, crops, pure)
        result.boundary.add(dense, crops, ~pure)
        result.border.add(dense, crops, ~interior)
        result.interior.add(dense, crops, interior)
        truth = cell_truth(grids.labels, grids.centers)
        result.dense_cells.add(truth, dense.argmax(0))
        result.crops_cells.add(truth, crops.argmax(0))
    return result


@dataclass(frozen=True)
class PhotoFidelity:
    """Dense against crops for the default model on one photo at one size."""

    photo: str
    size: int
    grid: tuple[int, int]
    agreement: Agreement
    top1_dense: str
    top1_crops: str


@torch.inference_mode()
def photo_fidelity(photos: list[Path], sizes: list[int]) -> list[PhotoFidelity]:
    """The offline default model (EfficientNet-Lite0, ImageNet) on photos, dense against crops.

    Each photo is resized as the command does (shorter side ``size``, snapped to the grid),
    then scored dense and as crops; the image-level top-1 is the class with the highest
    probability in any cell (the command's default ``--pooling max``).
    """
    from heatmap_cli.grid.pixels import normalize as normalize_pixels
    from heatmap_cli.io import read_image
    from heatmap_cli.models import load_model
    from heatmap_cli.pipeline.preprocess import plan_geometry, resize_for_grid

    loaded = load_model()
    net = convolutionalize(loaded.model, input_size=loaded.input_size)
    rows = []
    for photo in photos:
        image = read_image(photo)
        for size in sizes:
            geometry = plan_geometry(
                (image.height, image.width),
                shorter_side=size,
                window=loaded.input_size,
                stride=net.stride,
            )
            pixels = resize_for_grid(image, geometry.input_size, loaded.interpolation)
            x = normalize_pixels(pixels, loaded.mean, loaded.std)
            dense = score_grid(net, x, input_size=loaded.input_size).softmax(1)[0].numpy()
            crops = score_grid(net, x, method="crops", input_size=loaded.input_size)
            crops = crops.softmax(1)[0].numpy()
            names = loaded.categories
            rows.append(
                PhotoFidelity(
                    photo.name,
                    size,
                    dense.shape[1:],
                    _agreement(dense, crops),
                    names[int(dense.reshape(dense.shape[0], -1).max(1).argmax())],
                    names[int(crops.reshape(crops.shape[0], -1).max(1).argmax())],
                )
            )
    return rows


def _agreement(dense: np.ndarray, crops: np.ndarray) -> Agreement:
    agreement = Agreement()
    agreement.add(dense, crops)
    return agreement
