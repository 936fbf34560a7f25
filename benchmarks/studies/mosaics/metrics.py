"""How good a score map is (pixel accuracy, mIoU) and how far dense is from crops.

**One rule turns every method's output into a per-pixel label** (:func:`pixel_labels`): each
class's per-cell probability sits at its window's centre (the npz's ``centers``) and is spread
over the pixels exactly as the overlays are drawn
(:func:`heatmap_cli.render.heat.cell_values_to_image` with its default, a monotone cubic
between neighbouring centres, held constant beyond the outermost ones); the pixel's label is the
class with the highest value there. The peers (Grad-CAM, Grad-CAM++) already give one map per
class at full resolution; their pixel label is the argmax over those maps. Every pixel of the
mosaic counts, the margins beyond the outermost window centres too.

**Dense against crops, cell by cell** (:func:`cell_agreement`): the share of cells whose top-1
class is the same, and ``|dp|``, the largest difference of any class's probability in a cell
(for two classes, simply the difference of either class's probability), averaged and maximised
over cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from heatmap_cli.render.heat import cell_values_to_image

__all__ = [
    "Agreement",
    "Confusion",
    "cell_agreement",
    "cell_truth",
    "pixel_labels",
]


def pixel_labels(probs: np.ndarray, centers: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The per-pixel label of a score grid: each class spread like the overlays, then argmax.

    Args:
        probs: float ``(K, h, w)`` per-cell probabilities (the npz's ``probs``).
        centers: float ``(h, w, 2)`` window centres ``(x, y)`` in image pixels (the npz's
            ``centers``).
        image_size: ``(H, W)`` of the image.

    Returns:
        int64 ``(H, W)`` class indices in ``[0, K)``.
    """
    maps = np.stack([cell_values_to_image(plane, centers, image_size) for plane in probs])
    return maps.argmax(axis=0)


def cell_truth(labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The ground-truth class at each cell's window centre: what the classifier was trained on.

    Args:
        labels: uint8 ``(H, W)`` label map.
        centers: float ``(h, w, 2)`` window centres ``(x, y)`` in image pixels.

    Returns:
        int64 ``(h, w)``.
    """
    cols = np.clip(np.floor(centers[..., 0]).astype(np.int64), 0, labels.shape[1] - 1)
    rows = np.clip(np.floor(centers[..., 1]).astype(np.int64), 0, labels.shape[0] - 1)
    return labels[rows, cols].astype(np.int64)


@dataclass
class Confusion:
    """A confusion matrix accumulated over images (rows: truth, columns: prediction).

    Args:
        classes: ``K``.
    """

    classes: int
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros((self.classes, self.classes), dtype=np.int64)

    def add(self, truth: np.ndarray, predicted: np.ndarray) -> None:
        """Adds one image: two integer arrays of the same shape, values in ``[0, K)``."""
        flat = truth.astype(np.int64).ravel() * self.classes + predicted.astype(np.int64).ravel()
        self.counts += np.bincount(flat, minlength=self.classes**2).reshape(
            self.classes, self.classes
        )

    @property
    def accuracy(self) -> float:
        """Share of pixels labelled right, in ``[0, 1]``."""
        return float(np.trace(self.counts) / max(1, self.counts.sum()))

    @property
    def iou(self) -> np.ndarray:
        """Per-class intersection over union ``(K,)``; NaN for a class never true nor predicted."""
        hits = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / union, np.nan)

    @property
    def miou(self) -> float:
        """Mean IoU over the classes that occur, in ``[0, 1]``."""
        return float(np.nanmean(self.iou))


@dataclass
class Agreement:
    """Dense against crops over many cells (accumulated image by image).

    Attributes:
        cells: Cells compared.
        agreeing: Cells with the same top-1 class.
        diff_sum: Sum over cells of the cell's largest probability difference.
        diff_max: Largest probability difference of any cell.
    """

    cells: int = 0
    agreeing: int = 0
    diff_sum: float = 0.0
    diff_max: float = 0.0

    def add(self, dense: np.ndarray, crops: np.ndarray, where: np.ndarray | None = None) -> None:
        """Adds the cells of one image (``where``: bool ``(h, w)``, the cells to count)."""
        top_dense, top_crops = dense.argmax(0), crops.argmax(0)
        diff = np.abs(dense - crops).max(0)
        if where is None:
            where = np.ones(diff.shape, dtype=bool)
        self.cells += int(where.sum())
        self.agreeing += int((top_dense == top_crops)[where].sum())
        self.diff_sum += float(diff[where].sum())
        if where.any():
            self.diff_max = max(self.diff_max, float(diff[where].max()))

    @property
    def top1(self) -> float:
        """Share of cells whose top-1 class agrees."""
        return self.agreeing / max(1, self.cells)

    @property
    def mean_diff(self) -> float:
        """Mean over cells of the largest per-class probability difference."""
        return self.diff_sum / max(1, self.cells)


def cell_agreement(dense: np.ndarray, crops: np.ndarray) -> Agreement:
    """Dense against crops on one image: ``(K, h, w)`` probabilities each."""
    agreement = Agreement()
    agreement.add(dense, crops)
    return agreement
