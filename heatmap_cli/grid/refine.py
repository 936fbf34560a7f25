"""The ``refine`` grid method: the dense grid, made exact where its answer is in doubt.

A dense grid equals per-window crops only for networks without zero padding; with padding it
can be confidently wrong over whole regions (a margin alone does not find them) and its class
boundaries drift. :func:`refine_cells` starts from the dense grid (at the native stride, or the
"a trous" one for finer strides) and evaluates exact windows, through the unmodified classifier,
in rounds:

1. a lattice: every ``lattice``-th cell in both directions, as evidence of where dense is right;
2. then, round after round, the cells in doubt: next to an exact cell whose exact top class is
   not the dense one (dense is wrong there, maybe around it too), and on the current map's
   class boundaries (where dense answers drift most), most doubtful first (smallest dense
   top-1 margin), until none is left or the budget is spent.

Every cell evaluated is replaced by its crop and marked exact; so a refined map equals
``crops`` on every cell marked exact (``exact``), and is the dense map elsewhere, corrected
(:func:`corrected`) by the exact cells' residuals nearby.

The design and its budget were measured on the texture-mosaic benchmark
(``benchmarks/studies/refine_mosaics.py``, ``docs/fidelity.md``).
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
from heatmap_cli.grid.registry import GridMethod, register_method

__all__ = [
    "DEFAULT_REFINE_SHARE",
    "REFINE",
    "RefinePlan",
    "Refinement",
    "corrected",
    "refine_cells",
    "refine_grid",
    "refine_together",
]

DEFAULT_REFINE_SHARE = 0.3
"""Most cells a refinement evaluates exactly, as a share of the grid (its budget)."""

CellEvaluator = Callable[[np.ndarray], np.ndarray]
"""``evaluate(cells)``: int ``(n, 2)`` ``(row, col)`` cells -> float ``(n, K)`` exact logits."""

_NEIGHBOURS_4 = ((-1, 0), (1, 0), (0, -1), (0, 1))
_NEIGHBOURS_8 = (*_NEIGHBOURS_4, (-1, -1), (-1, 1), (1, -1), (1, 1))


@dataclass(frozen=True)
class RefinePlan:
    """How a refinement spends its exact windows.

    Attributes:
        budget: Most cells evaluated exactly.
        lattice: Spacing of the first round's lattice, in cells (0: none).
        radius: Gaussian radius, in cells, over which exact cells' residuals correct the dense
            cells around them (0: no correction).
        rounds: Most rounds of doubtful cells after the lattice.
        fill: Spend budget left when no cell is in doubt on the least certain cells.
    """

    budget: int
    lattice: int = 3
    radius: float = 2.0
    rounds: int = 64
    fill: bool = True


def _spread(mask: np.ndarray, offsets: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Cells next to (by ``offsets``) a cell of ``mask``."""
    rows, cols = mask.shape
    out = np.zeros_like(mask)
    for dr, dc in offsets:
        out[max(dr, 0) : rows + min(dr, 0), max(dc, 0) : cols + min(dc, 0)] |= mask[
            max(-dr, 0) : rows + min(-dr, 0), max(-dc, 0) : cols + min(-dc, 0)
        ]
    return out


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
        self._dense_top, self._margins = self.dense.argmax(axis=0), _margins(self.dense)
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
        """The next round's cells: the lattice, then the doubtful ones, within the budget.

        When no cell is in doubt but budget is left (``plan.fill``), the least certain cells of
        the corrected map are taken (its smallest top-1 margins, one cell in ``lattice**2``),
        and the doubt rounds go on from what they show.
        """
        while self._round < self.plan.rounds and self._left > 0:
            self._round += 1
            if self._round == 0:
                wanted = _lattice(self.exact.shape, self.plan.lattice)
            else:
                top = self.logits.argmax(axis=0)
                wrong = self.exact & (top != self._dense_top)
                wanted = _spread(wrong, _NEIGHBOURS_8) | _boundaries(top)
            cells = np.argwhere(wanted & ~self.exact)
            if not len(cells) and self._round > 0 and self.plan.fill and not self.exact.all():
                cells = self._least_certain()
            if len(cells) > self._left:  # the most doubtful first: the smallest dense margins
                order = np.argsort(self._margins[cells[:, 0], cells[:, 1]], kind="stable")
                cells = cells[np.sort(order[: self._left])]
            if len(cells) or self._round > 0:  # an empty doubt round ends the refinement
                return cells
        return np.zeros((0, 2), dtype=np.int64)

    def _least_certain(self) -> np.ndarray:
        """The inexact cells with the smallest top-1 margins in the corrected map."""
        margins = _margins(corrected(self.dense, self.logits, self.exact, self.plan.radius))
        margins[self.exact] = np.inf
        count = min(self._left, max(1, self.exact.size // max(1, self.plan.lattice) ** 2))
        order = np.argsort(margins, axis=None, kind="stable")[:count]
        return np.stack(np.unravel_index(order, margins.shape), axis=1)


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
    """``score_grid(method="refine")``: each image's dense grid refined (budget: 30% of cells).

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


def _refine_network(net: nn.Module, stride: int, batch_size: int) -> nn.Module:
    """The engine's network for ``refine``'s dense grid: dense, or dilate at a finer stride."""
    if stride == net.stride:  # type: ignore[comparison-overlap]
        return dense_network(net, stride, batch_size)  # type: ignore[arg-type]
    return dilate_network(net, stride, batch_size)  # type: ignore[arg-type]


REFINE = register_method(
    GridMethod(
        "refine",
        "dense, then exact windows where its answer is in doubt (at most 30% of the cells)",
        refine_grid,
        _refine_network,
        tileable=True,
        folds_norms=True,
    )
)
