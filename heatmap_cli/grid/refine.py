"""The ``refine`` grid method: the dense grid, made exact where its answer is in doubt.

A dense grid equals per-window crops only for networks without zero padding; with padding it
can be confidently wrong over whole regions (a margin alone does not find them) and its class
boundaries drift. :func:`refine_cells` starts from the dense grid (at the native stride, or the
"a trous" one for finer strides) and evaluates exact windows, through the unmodified classifier,
in rounds:

1. a lattice: every ``lattice``-th cell in both directions, as evidence of where dense is right
   and of how far it is off around each (the residuals that :func:`corrected` spreads);
2. then ``rounds`` rounds, each spending an equal part of the budget left on the cells most in
   doubt in the current corrected map: the cells on its class boundaries first, then the
   smallest top-1 margins. Each round's exact cells correct the map the next round reads, so a
   region where dense is confidently wrong is found from the lattice cell inside it (its
   correction moves the region's class, which draws a boundary round it).

Every cell evaluated is replaced by its crop and marked exact; so a refined map equals
``crops`` on every cell marked exact (``exact``), and is the dense map elsewhere, corrected
(:func:`corrected`) by the exact cells' residuals nearby.

The design and its budget were measured on the texture-mosaic benchmark (offline:
``benchmarks/studies/refine_cells.py`` on its cached grids; whole processes:
``benchmarks/studies/mosaics``; ``docs/fidelity.md``). The rule it replaces (the neighbours of
cells where dense was found wrong, then the current boundaries, ordered by the dense margin)
reached 0.92 top-1 agreement with crops at 30% of the cells on 24 mosaics; this one 0.94.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from heatmap_cli.convert.network import source_model
from heatmap_cli.grid.crops import NormalizedWindows, cell_corners, exact_logits
from heatmap_cli.grid.dense import dense_network
from heatmap_cli.grid.dilate import dilate_grid, dilate_network
from heatmap_cli.grid.methods import REFINE

__all__ = [
    "DEFAULT_REFINE_SHARE",
    "REFINE",
    "RefinePlan",
    "Refinement",
    "corrected",
    "refine_cells",
    "refine_grid",
    "refine_network",
    "refine_together",
]

DEFAULT_REFINE_SHARE = 0.25
"""Most cells a refinement evaluates exactly, as a share of the grid (its budget)."""

CellEvaluator = Callable[[np.ndarray], np.ndarray]
"""``evaluate(cells)``: int ``(n, 2)`` ``(row, col)`` cells -> float ``(n, K)`` exact logits."""

_NEIGHBOURS_4 = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass(frozen=True)
class RefinePlan:
    """How a refinement spends its exact windows.

    Attributes:
        budget: Most cells evaluated exactly.
        lattice: Spacing of the first round's lattice, in cells (0: none).
        radius: Gaussian radius, in cells, over which exact cells' residuals correct the dense
            cells around them (0: no correction).
        rounds: Rounds of doubtful cells after the lattice (0: the lattice alone); each spends an
            equal part of the budget left, in one batch of exact windows.
    """

    budget: int
    lattice: int = 3
    radius: float = 2.0
    rounds: int = 4


def _boundaries(top: np.ndarray) -> np.ndarray:
    """Cells with a 4-neighbour of another class."""
    rows, cols = top.shape
    out = np.zeros(top.shape, dtype=bool)
    for dr, dc in _NEIGHBOURS_4:
        here = (slice(max(-dr, 0), rows + min(-dr, 0)), slice(max(-dc, 0), cols + min(-dc, 0)))
        there = (slice(max(dr, 0), rows + min(dr, 0)), slice(max(dc, 0), cols + min(dc, 0)))
        out[here] |= top[here] != top[there]
    return out


def _lattice(shape: tuple[int, int], step: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    if step > 0:
        first = step // 2
        mask[min(first, shape[0] - 1) :: step, min(first, shape[1] - 1) :: step] = True
    return mask


def _margins(logits: np.ndarray) -> np.ndarray:
    """float64 ``(rows, cols)``: top-1 minus top-2 logit (a softmax's order, cheaper)."""
    if logits.shape[0] < 2:
        return np.full(logits.shape[1:], np.inf)
    top2 = np.partition(logits, logits.shape[0] - 2, axis=0)[-2:]
    return (top2[1] - top2[0]).astype(np.float64)


class Refinement:
    """One grid's refinement, step by step: :meth:`wanted` cells, then :meth:`give` their logits.

    Stepwise, so that a caller can gather the cells several grids want into one batch of exact
    windows (:func:`refine_together`); :func:`refine_cells` runs one grid alone.

    Args:
        dense: float ``(K, rows, cols)`` dense logits.
        plan: The budget and its rounds.
        start: ``(logits, exact)`` of an earlier refinement of ``dense`` to go on from: its
            exact cells are kept, not evaluated again, and count in the budget.
    """

    def __init__(
        self,
        dense: np.ndarray,
        plan: RefinePlan,
        start: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.dense, self.plan = np.asarray(dense), plan
        if start is None:
            self.logits = np.array(dense, dtype=np.float32, copy=True)
            self.exact = np.zeros(self.logits.shape[1:], dtype=bool)
        else:
            self.logits = np.where(start[1][None], start[0], dense).astype(np.float32)
            self.exact = np.array(start[1], dtype=bool, copy=True)
        self._left = max(0, plan.budget - int(self.exact.sum()))
        self._round = -1  # the lattice comes first
        self._pending = self._next()

    @property
    def done(self) -> bool:
        """Whether no cell is wanted any more."""
        return not len(self._pending)

    def wanted(self) -> np.ndarray:
        """The cells whose exact logits this step needs: int ``(n, 2)`` (none when done)."""
        return self._pending

    def give(self, logits: np.ndarray) -> None:
        """The exact logits ``(n, K)`` of :meth:`wanted`'s cells; then the next step's cells."""
        cells = self._pending
        if len(cells):
            self.logits[:, cells[:, 0], cells[:, 1]] = np.asarray(logits, np.float32).T
            self.exact[cells[:, 0], cells[:, 1]] = True
            self._left -= len(cells)
        self._pending = self._next()

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``(K, rows, cols)`` refined logits (corrected), bool ``(rows, cols)`` exact."""
        return corrected(self.dense, self.logits, self.exact, self.plan.radius), self.exact

    def _next(self) -> np.ndarray:
        """The next round's cells: the lattice, then the most doubtful ones, within the budget."""
        if self._left <= 0 or self.exact.all():
            return np.zeros((0, 2), dtype=np.int64)
        if self._round < 0:
            self._round = 0
            cells = np.argwhere(_lattice(self.exact.shape, self.plan.lattice) & ~self.exact)
            if len(cells):
                return self._most_doubtful(cells)
        if self._round >= self.plan.rounds:
            return np.zeros((0, 2), dtype=np.int64)
        self._round += 1
        count = -(-self._left // (self.plan.rounds - self._round + 1))  # an equal part, rounded up
        return self._most_doubtful(np.argwhere(~self.exact), count)

    def _most_doubtful(self, cells: np.ndarray, count: int | None = None) -> np.ndarray:
        """Of ``cells``, ``count`` (at most the budget left) most in doubt, in row-major order.

        Doubt is read on the current corrected map: a cell on a class boundary first, then the
        smallest top-1 margin.
        """
        count = min(self._left, len(cells) if count is None else count)
        if count >= len(cells):
            return cells
        now = corrected(self.dense, self.logits, self.exact, self.plan.radius)
        on_boundary = _boundaries(now.argmax(axis=0))[cells[:, 0], cells[:, 1]]
        margins = _margins(now)[cells[:, 0], cells[:, 1]]
        order = np.lexsort((margins, ~on_boundary))[:count]
        return cells[np.sort(order)]


def refine_cells(
    dense: np.ndarray,
    evaluate: CellEvaluator,
    plan: RefinePlan,
    *,
    start: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The dense grid with exact windows where it is in doubt (see the module docstring).

    Args:
        dense: float ``(K, rows, cols)`` dense logits.
        evaluate: The exact logits of some cells.
        plan: The budget and its rounds.
        start: ``(logits, exact)`` of an earlier refinement of ``dense`` to go on from: its
            exact cells are kept, not evaluated again, and count in the budget.

    Returns:
        float32 ``(K, rows, cols)`` refined logits, and bool ``(rows, cols)``: the cells
        evaluated exactly (their logits are the exact ones).
    """
    refinement = Refinement(dense, plan, start)
    while not refinement.done:
        refinement.give(evaluate(refinement.wanted()))
    return refinement.result()


def refine_together(
    refinements: list[Refinement], evaluate: Callable[[np.ndarray], np.ndarray]
) -> None:
    """Runs several grids' refinements in step: each round's cells of all in one evaluation.

    Args:
        refinements: One per image.
        evaluate: int ``(n, 3)`` ``(image, row, col)`` cells -> float ``(n, K)`` exact logits,
            ``image`` indexing ``refinements``.
    """
    while live := [(k, r) for k, r in enumerate(refinements) if not r.done]:
        cells = [np.c_[np.full(len(r.wanted()), k), r.wanted()] for k, r in live]
        logits = evaluate(np.concatenate(cells))
        start = 0
        for (_, refinement), part in zip(live, cells, strict=True):
            refinement.give(logits[start : start + len(part)])
            start += len(part)


def corrected(
    dense: np.ndarray, logits: np.ndarray, exact: np.ndarray, radius: float
) -> np.ndarray:
    """The dense cells moved by the exact cells' residuals around them; exact cells kept.

    Each dense cell gets the Gaussian-weighted mean (radius ``radius`` cells) of
    ``exact - dense`` over the exact cells near it: where dense is off, it is off alike over a
    region, which the exact cells in that region measure.

    Args:
        dense: float ``(K, rows, cols)`` dense logits.
        logits: float32 ``(K, rows, cols)``: exact where ``exact``, dense elsewhere.
        exact: bool ``(rows, cols)``.
        radius: Gaussian radius in cells; 0 keeps the dense cells as they are.

    Returns:
        float32 ``(K, rows, cols)``.
    """
    if radius <= 0 or not exact.any() or exact.all():
        return logits
    residual = torch.from_numpy(np.where(exact[None], logits - dense, 0).astype(np.float32))
    weight = torch.from_numpy(exact.astype(np.float32))[None]
    smoothed = _gaussian(torch.cat([residual, weight]), radius)
    near = smoothed[-1]
    delta = torch.where(near > 1e-6, smoothed[:-1] / near.clamp_min(1e-6), 0).numpy()
    return np.where(exact[None], logits, np.asarray(dense, np.float32) + delta).astype(np.float32)


def _gaussian(planes: torch.Tensor, radius: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(P, rows, cols)`` planes, edges replicated."""
    half = max(1, int(3 * radius))
    taps = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float32) / radius) ** 2)
    taps = taps / taps.sum()
    x = planes[:, None]
    x = torch.nn.functional.pad(x, (half, half, half, half), mode="replicate")
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, 1, -1))
    x = torch.nn.functional.conv2d(x, taps.view(1, 1, -1, 1))
    return x[:, 0]


def refine_grid(
    net: nn.Module, x: torch.Tensor, stride: int, window: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """``score_grid(method="refine")``: each image's dense grid refined (budget: 25% of cells).

    The dense grid comes from the converted network at its native stride, or the "a trous"
    network at a finer one; exact windows from its source classifier, ``batch_size`` windows
    per pass.
    """
    dense = dilate_grid(net, x, stride, window, batch_size)
    classifier, windows = source_model(net), NormalizedWindows(x)

    def evaluate(cells: np.ndarray) -> np.ndarray:
        corners = cell_corners(cells, stride)
        found = exact_logits(classifier, windows, corners, window, batch_size=batch_size)
        return found.float().cpu().numpy()

    grids = dense.float().cpu().numpy()
    budget = round(DEFAULT_REFINE_SHARE * grids.shape[2] * grids.shape[3])
    refinements = [Refinement(grid, RefinePlan(budget)) for grid in grids]
    refine_together(refinements, evaluate)
    refined = np.stack([r.result()[0] for r in refinements])
    return torch.from_numpy(refined).to(dense.device, dense.dtype)


def refine_network(net: nn.Module, stride: int, batch_size: int) -> nn.Module:
    """The engine's network for ``refine``'s dense grid: dense, or dilate at a finer stride."""
    if stride == net.stride:  # type: ignore[comparison-overlap]
        return dense_network(net, stride, batch_size)  # type: ignore[arg-type]
    return dilate_network(net, stride, batch_size)  # type: ignore[arg-type]
