"""Fidelity: how far an image's map is from the classifier's own answers on its windows.

A dense map equals per-window crops only for networks without zero padding; with padding a
dense cell sees real neighbours where a crop saw zeros, and its field of view reaches beyond its
window. So every image checks a few cells exactly (:func:`check_fidelity`): the cell at each
rendered class's peak and ``count`` more spread over the grid (:func:`spread_cells`), each
evaluated through the unmodified classifier as ``--method crops`` evaluates it
(:func:`exact_cell_logits`), and compared with the map.

**What "exact" means for a cell.** The value ``--method crops`` gives there with the same
options: in a plain run, the classifier on the cell's window of the resized photo (the window
the npz's ``centers`` and ``window`` describe). With ``--scales``/``--flip`` a map's cell
averages several passes: each pass's value at the cell's centre (its own cells bilinearly
interpolated, as the map resamples them) of the photo at that scale, mirrored or not. The exact
value averages the same passes with every pass cell replaced by its crop; so fidelity measures
the departure of the grid method alone, never that of the averaging the user asked for.

**The figures** (:class:`Fidelity`), over the checked cells: ``top1_agreement``, the share of
cells whose highest-scoring class is the same in the map and exactly; per cell the largest
difference of any class's score (probability with the default softmax), and over the cells
its maximum (``max_abs_diff``) and mean (``mean_abs_diff``). An image gets one note line when
the agreement is below :data:`AGREEMENT_THRESHOLD` or the largest difference above
:data:`DIFFERENCE_THRESHOLD` (:meth:`Fidelity.note`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from heatmap_cli.errors import setting
from heatmap_cli.grid.crops import cell_corners
from heatmap_cli.grid.geometry import GridGeometry
from heatmap_cli.pipeline.activations import apply_activation
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.exact import ExactWindows
from heatmap_cli.pipeline.multiscale import PassInput, interpolation_weights
from heatmap_cli.pipeline.profiling import timed
from heatmap_cli.pipeline.scoring import ImageResult
from heatmap_cli.pipeline.settings import DEFAULT_FIDELITY

__all__ = [
    "AGREEMENT_THRESHOLD",
    "DEFAULT_FIDELITY",
    "DIFFERENCE_THRESHOLD",
    "LABEL_TOLERANCE",
    "Fidelity",
    "check_fidelity",
    "exact_cell_logits",
    "image_fidelity",
    "spread_cells",
]

AGREEMENT_THRESHOLD = 0.9
"""An image whose checked cells agree on the top class less often than this gets a note."""

DIFFERENCE_THRESHOLD = 0.25
"""An image where some checked cell's score differs from the exact one by more gets a note."""

LABEL_TOLERANCE = 0.01
"""Overlay labels and the report show a peak's exact value where it differs by more."""

Cell = tuple[int, int]


def spread_cells(shape: tuple[int, int], count: int, exclude: Iterable[Cell] = ()) -> list[Cell]:
    """``count`` cells spread evenly over a grid: the centres of the blocks of a lattice.

    The grid is cut into ``down x across`` blocks, ``down * across >= count``, chosen so that
    every cell is as close as can be to a block's centre (the smallest block diagonal); the
    centre cell of each block is taken, row by row, leaving out the cells in ``exclude``, until
    ``count`` are taken (all cells if the grid has fewer).

    Args:
        shape: ``(rows, cols)`` of the grid.
        count: How many cells.
        exclude: Cells not to take (already checked).

    Returns:
        Up to ``count`` distinct ``(row, col)`` cells, deterministic for a shape.
    """
    rows, cols = shape
    taken = set(exclude)
    free = rows * cols - len({c for c in taken if 0 <= c[0] < rows and 0 <= c[1] < cols})
    count = min(count, free)
    if count <= 0:
        return []
    lattices = [
        (math.hypot(rows / down, cols / across), down * across, down, across)
        for across in range(1, cols + 1)
        if (down := min(rows, math.ceil(count / across))) * across >= count
    ]
    _, _, down, across = min(lattices)
    centres = [
        (int((i + 0.5) * rows / down), int((j + 0.5) * cols / across))
        for i in range(down)
        for j in range(across)
    ]
    # more blocks than cells: leave out blocks evenly, not all at the end
    centres = [centres[k * len(centres) // count] for k in range(count)]
    chosen: list[Cell] = []
    everywhere = np.stack(np.indices(shape), axis=-1).reshape(-1, 2)
    for centre in centres:
        cell = centre
        if cell in taken:  # the free cell nearest to the block's centre
            distance = np.abs(everywhere - np.array(centre)).sum(axis=1)
            order = np.argsort(distance, kind="stable")
            cell = next(c for c in map(tuple, everywhere[order].tolist()) if c not in taken)
        taken.add(cell)
        chosen.append((int(cell[0]), int(cell[1])))
    return chosen


def exact_cell_logits(
    inputs: Sequence[PassInput],
    common: GridGeometry,
    cells: Sequence[Cell],
    exact: ExactWindows,
) -> np.ndarray:
    """What ``--method crops`` gives at some cells of the common grid, as float32 ``(n, K)``.

    Every pass's cells around each requested cell (the same cell on the common grid; the
    bilinear neighbours of its centre on another) are evaluated exactly, mirrored passes on
    the mirrored photo, and combined as ``PassAverage`` combines the passes' grids.

    Args:
        inputs: Every pass of the image, with its pixels, in evaluation order.
        common: The grid the passes were averaged on (the map's).
        cells: ``(row, col)`` cells of ``common``.
        exact: The classifier on chosen windows.

    Returns:
        float32 ``(n, K)`` logits, the map's counterpart at ``cells``.
    """
    rows = np.array([r for r, _ in cells], dtype=np.int64)
    cols = np.array([c for _, c in cells], dtype=np.int64)
    total: np.ndarray | None = None
    for spec in inputs:
        along_y, along_x = interpolation_weights(spec.geometry, common)
        weight_y, weight_x = along_y[rows], along_x[cols]  # (n, pass rows), (n, pass cols)
        needed = sorted(
            {
                (int(i), int(j))
                for n in range(len(cells))
                for i in np.flatnonzero(weight_y[n])
                for j in np.flatnonzero(weight_x[n])
            }
        )
        pass_cols = spec.geometry.shape[1]
        # a mirrored pass's cell (i, j) is the mirrored photo's window (i, cols - 1 - j)
        window_cells = [(i, pass_cols - 1 - j) if spec.flip else (i, j) for i, j in needed]
        corners = cell_corners(window_cells, spec.geometry.stride)
        logits = exact.logits(spec.network_input(), corners).astype(np.float64)
        where = {cell: k for k, cell in enumerate(needed)}
        part = np.zeros((len(cells), logits.shape[1]), np.float64)
        for n in range(len(cells)):
            for i in np.flatnonzero(weight_y[n]):
                for j in np.flatnonzero(weight_x[n]):
                    part[n] += weight_y[n, i] * weight_x[n, j] * logits[where[(int(i), int(j))]]
        total = part if total is None else total + part
    assert total is not None
    return (total / len(inputs)).astype(np.float32)


@dataclass(frozen=True)
class Fidelity:
    """An image's map checked against exact windows at some cells.

    Attributes:
        cells: The checked ``(row, col)`` cells of the map's grid, peaks first.
        map_logits: float32 ``(n, K)``: the map's logits at ``cells``.
        exact_logits: float32 ``(n, K)``: what ``--method crops`` gives there.
        activation: What makes scores of logits (``"softmax"``, ``"sigmoid"``, ``"none"``).
        probabilities: Whether those scores are probabilities (the note's thresholds apply).
    """

    cells: tuple[Cell, ...]
    map_logits: np.ndarray
    exact_logits: np.ndarray
    activation: str = "softmax"
    probabilities: bool = True

    @property
    def map_scores(self) -> np.ndarray:
        """float32 ``(n, K)``: the map's scores (probabilities by default) at the cells."""
        return apply_activation(self.map_logits.T[:, :, None], self.activation)[:, :, 0].T

    @property
    def exact_scores(self) -> np.ndarray:
        """float32 ``(n, K)``: the exact scores at the cells."""
        return apply_activation(self.exact_logits.T[:, :, None], self.activation)[:, :, 0].T

    @property
    def differences(self) -> np.ndarray:
        """float64 ``(n,)``: per cell, the largest difference of any class's score."""
        if not self.cells:
            return np.zeros(0)
        return np.abs(self.map_scores.astype(np.float64) - self.exact_scores).max(axis=1)

    @property
    def top1_agreement(self) -> float:
        """Share of the cells whose top class is the same in the map and exactly (1.0: none)."""
        if not self.cells:
            return 1.0
        same = self.map_logits.argmax(axis=1) == self.exact_logits.argmax(axis=1)
        return float(same.mean())

    @property
    def max_abs_diff(self) -> float:
        """The largest score difference over the cells and classes."""
        return float(self.differences.max()) if self.cells else 0.0

    @property
    def mean_abs_diff(self) -> float:
        """The mean over the cells of each cell's largest score difference."""
        return float(self.differences.mean()) if self.cells else 0.0

    def exact_score(self, cell: Cell, index: int, scores: str = "probs") -> float | None:
        """The exact score of class ``index`` at ``cell`` (a logit for ``"logits"``)."""
        if cell not in self.cells:
            return None
        row = self.cells.index(cell)
        values = self.exact_logits if scores == "logits" else self.exact_scores
        return float(values[row, index])

    def to_json(self) -> dict[str, object]:
        """The json's ``fidelity`` object."""
        return {
            "cells": [[int(r), int(c)] for r, c in self.cells],
            "top1_agreement": round(self.top1_agreement, 4),
            "max_abs_diff": round(self.max_abs_diff, 4),
            "mean_abs_diff": round(self.mean_abs_diff, 4),
        }

    def note(self) -> str | None:
        """One line when the map departs from its windows beyond the thresholds, else None."""
        if not self.cells or not self.probabilities:
            return None
        agreement, largest = self.top1_agreement, self.max_abs_diff
        if agreement >= AGREEMENT_THRESHOLD and largest <= DIFFERENCE_THRESHOLD:
            return None
        same = round(agreement * len(self.cells))
        return (
            f"the map departs from the classifier's answers on its windows (top class the same "
            f"on {same} of {len(self.cells)} cells checked, largest probability difference "
            f"{largest:.2f}); {setting('method')} crops gives exact maps, refine exact where "
            "in doubt"
        )


def check_fidelity(
    logits: np.ndarray,
    inputs: Sequence[PassInput],
    common: GridGeometry,
    peaks: Sequence[Cell],
    count: int,
    exact: ExactWindows,
    *,
    activation: str = "softmax",
    probabilities: bool = True,
    known: np.ndarray | None = None,
) -> Fidelity:
    """Checks a map at its peaks and ``count`` spread cells against exact windows.

    Args:
        logits: float32 ``(K, rows, cols)``: the map's logits on ``common``.
        inputs: Every pass of the image, with its pixels.
        common: The map's grid.
        peaks: The rendered classes' peak cells (checked first; duplicates once).
        count: Spread cells checked besides the peaks.
        exact: The classifier on chosen windows.
        activation: What makes scores of logits.
        probabilities: Whether those scores are probabilities.
        known: bool ``(rows, cols)``: cells of the map that are exact already (a refined
            map's); their logits are taken as they are instead of evaluated again.

    Returns:
        The checked cells and both sides' logits there.
    """
    cells = list(dict.fromkeys((int(r), int(c)) for r, c in peaks))
    cells += spread_cells(common.shape, count, exclude=cells)
    at = logits[:, [r for r, _ in cells], [c for _, c in cells]].T.astype(np.float32)
    exact_at = at.copy()
    todo = [k for k, (r, c) in enumerate(cells) if known is None or not known[r, c]]
    if todo:
        exact_at[todo] = exact_cell_logits(inputs, common, [cells[k] for k in todo], exact)
    return Fidelity(tuple(cells), at, exact_at, activation, probabilities)


def image_fidelity(
    result: ImageResult, engine: GridEngine, peaks: Sequence[Cell], count: int
) -> Fidelity | None:
    """:func:`check_fidelity` of one scored image, with the engine's classifier and activation.

    Args:
        result: The image's map, with its passes' pixels (``score_images(keep_inputs=True)``).
        engine: The engine that scored it.
        peaks: The rendered classes' peak cells.
        count: Spread cells checked besides the peaks; 0 turns the check off.

    Returns:
        The check; None when off, or when the result kept no pixels to cut windows from.
    """
    if count <= 0 or not result.inputs:
        return None
    grid = result.grid
    with timed("fidelity"):  # its share of a run: HEATMAP_PROFILE=1
        return check_fidelity(
            grid.logits,
            result.inputs,
            grid.geometry,
            peaks,
            count,
            engine.exact,
            activation=engine.activation,
            probabilities=engine.probabilities,
            known=grid.exact,
        )
