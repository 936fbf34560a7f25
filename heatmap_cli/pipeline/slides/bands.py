"""A slide's grid read in bands of rows, so that its outputs never hold the whole grid at once.

At stride 8 a 100k x 100k slide has 156 million cells: 1.25 GB per float32 map, times the
classes, for the logits and again for the probabilities. Every output of a slide is made from
bands of rows read from the scored tiles' file (:meth:`GridStore.read_rows`): the probabilities
of a band are computed where they are needed, and whatever covers the whole slide is small (the
class statistics behind the ranking, the peaks and the colour scales; the GeoJSON's aggregated
tiles; the overlays' averaged blocks). :func:`band_rows` sizes the bands (``BAND_BYTES`` of
logits each), in multiples of whatever a consumer groups rows by, so that a band holds whole
groups and the results equal those of the whole grid at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from heatmap_cli.pipeline.slide_settings import parse_grid_format
from heatmap_cli.pipeline.slides.store import GridStore
from heatmap_cli.pipeline.slides.summary import masked_scores

__all__ = [
    "BAND_BYTES",
    "ZARR_SHARE",
    "ClassStatistics",
    "GridBand",
    "band_rows",
    "choose_grid_format",
    "class_statistics",
    "grid_bands",
    "grid_bytes",
]

BAND_BYTES = 32 * 2**20
"""Logits read at once (the band's probabilities and their masked copies come to about four
times this): what bounds the output stage's memory, whatever the grid's size."""


def band_rows(shape: tuple[int, int, int], multiple: int = 1, budget: int | None = None) -> int:
    """Rows per band: as many as ``budget`` bytes of float32 logits hold, in whole ``multiple``s.

    Args:
        shape: The grid's ``(K, rows, cols)``.
        multiple: What the rows must be a multiple of (the consumer's groups of rows).
        budget: Bytes of logits per band; None: :data:`BAND_BYTES`.

    Returns:
        At least ``multiple`` rows.
    """
    count, _, cols = shape
    fit = (BAND_BYTES if budget is None else budget) // max(1, 4 * count * cols)
    return max(1, fit // multiple) * multiple


@dataclass(frozen=True)
class GridBand:
    """Rows ``start:start + n`` of a slide's grid.

    Attributes:
        start: The band's first row in the grid.
        logits: float32 ``(K, n, cols)``, NaN off the tissue.
        probs: float32 ``(K, n, cols)``, NaN off the tissue.
        tissue: bool ``(n, cols)``.
    """

    start: int
    logits: np.ndarray
    probs: np.ndarray
    tissue: np.ndarray


def grid_bands(
    store: GridStore, tissue: np.ndarray, activation: str, rows: int
) -> Iterator[GridBand]:
    """The grid in bands of ``rows`` rows, top to bottom, probabilities computed per band.

    Args:
        store: Where the scored logits are.
        tissue: bool ``(rows, cols)``: the cells scored.
        activation: ``"softmax"``, ``"sigmoid"`` or ``"none"``.
        rows: Rows per band (the last may have fewer).

    Yields:
        Each band, made as :func:`masked_scores` makes the whole grid (so equal to it).
    """
    total = store.shape[1]
    for start in range(0, total, rows):
        stop = min(total, start + rows)
        band_tissue = tissue[start:stop]
        logits, probs = masked_scores(store.read_rows(start, stop), band_tissue, activation)
        yield GridBand(start, logits, probs, band_tissue)


@dataclass(frozen=True)
class ClassStatistics:
    """Each class's figures over the tissue cells, gathered band by band.

    Attributes:
        cells: How many tissue cells.
        maximum: float32 ``(K,)`` (-inf without tissue).
        minimum: float32 ``(K,)`` (+inf without tissue).
        total: float64 ``(K,)``: the sum.
        argmax: int64 ``(K,)``: the first cell (row-major, flat index) holding the maximum.
    """

    cells: int
    maximum: np.ndarray
    minimum: np.ndarray
    total: np.ndarray
    argmax: np.ndarray

    def ranking(self, top_k: int, pooling: str = "max") -> list[tuple[int, float]]:
        """The classes pooled over the tissue (``"max"`` or ``"mean"``), best first.

        As :func:`~heatmap_cli.pipeline.slides.summary.rank_slide` ranks the whole grid (the
        mean summed in float64).
        """
        if not self.cells:
            return []
        pooled = self.maximum if pooling == "max" else self.total / self.cells
        order = np.argsort(-pooled, kind="stable")[:top_k]
        return [(int(i), float(pooled[i])) for i in order]

    def peak(self, index: int, cols: int) -> tuple[float, int, int] | None:
        """``(value, row, col)`` of a class's highest tissue cell; None without tissue."""
        if not self.cells:
            return None
        row, col = divmod(int(self.argmax[index]), cols)
        return float(self.maximum[index]), row, col


def class_statistics(bands: Iterator[GridBand], count: int) -> tuple[ClassStatistics, ...]:
    """Gathers :class:`ClassStatistics` of the logits and of the probabilities, in one pass.

    Args:
        bands: The grid's bands (:func:`grid_bands`).
        count: ``K``.

    Returns:
        ``(of the logits, of the probabilities)``.
    """
    gathered = (_Gathered(count), _Gathered(count))
    cells = 0
    for band in bands:
        cols = band.tissue.shape[1]
        gathered[0].add(band.logits.reshape(count, -1), band.start * cols)
        gathered[1].add(band.probs.reshape(count, -1), band.start * cols)
        cells += int(band.tissue.sum())
    return tuple(ClassStatistics(cells, g.maximum, g.minimum, g.total, g.argmax) for g in gathered)


class _Gathered:
    """Running maximum (and where), minimum and sum per class over the finite cells."""

    def __init__(self, count: int) -> None:
        self.maximum = np.full(count, -np.inf, dtype=np.float32)
        self.minimum = np.full(count, np.inf, dtype=np.float32)
        self.total = np.zeros(count, dtype=np.float64)
        self.argmax = np.zeros(count, dtype=np.int64)

    def add(self, values: np.ndarray, offset: int) -> None:
        """Adds float32 ``(K, n)`` cells, the first at flat index ``offset`` of the grid."""
        if not values.shape[1]:
            return
        finite = np.isfinite(values)
        high = np.where(finite, values, np.float32(-np.inf))
        best = np.argmax(high, axis=1)  # the first of equal maxima, as np.nanargmax
        band_max = high[np.arange(len(best)), best]
        better = band_max > self.maximum  # strictly: an earlier band keeps its tie
        self.argmax[better] = offset + best[better]
        self.maximum = np.where(better, band_max, self.maximum).astype(np.float32)
        low = np.where(finite, values, np.float32(np.inf)).min(axis=1)
        self.minimum = np.minimum(self.minimum, low)
        self.total += np.where(finite, values, 0).sum(axis=1, dtype=np.float64)


ZARR_SHARE = 0.5
"""The share of the memory budget a grid may take in memory before it goes to a zarr store."""


def grid_bytes(shape: tuple[int, int, int]) -> int:
    """Bytes a grid takes whole in memory, ``rows x cols x (8 K + 10)``.

    Per cell: float32 logits and probabilities (``2 x 4 K``), float32 centres (8) and the two
    bool masks (2).
    """
    count, rows, cols = shape
    return rows * cols * (8 * count + 10)


def choose_grid_format(shape: tuple[int, int, int], requested: str, budget: int) -> str:
    """``"npz"`` or ``"zarr"``: the grid file's format.

    The one ``requested``, or for ``"auto"``, zarr when the whole grid (:func:`grid_bytes`)
    would pass :data:`ZARR_SHARE` of ``budget`` bytes. With the default 1 GiB budget: a 2-class
    grid of more than 20.6 million cells (a 100k x 100k slide at 0.5 um/px and stride 16 has
    39 million; at stride 32, 9.8 million stay a ``.npz``).

    Raises:
        InvalidOptionError: ``requested`` is not one of ``GRID_FORMATS``.
    """
    requested = parse_grid_format(requested)
    if requested != "auto":
        return requested
    return "zarr" if grid_bytes(shape) > ZARR_SHARE * budget else "npz"
