"""Which grid method runs on each image: ``--method``'s choices, and what ``auto`` picks.

The grid methods themselves are in :mod:`heatmap_cli.grid` (one registry). Two of the
command's choices decide per image how many exact windows to add to the dense grid
(:class:`Refiner`):

* ``refine``: the dense grid (the "a trous" one at a finer stride) refined where in doubt,
  with at most :data:`~heatmap_cli.grid.refine.DEFAULT_REFINE_SHARE` of the cells exact;
* ``auto`` (the default): the most faithful map the time allows. Exact windows may take at
  most :data:`AUTO_SHARE` of the time the run has spent on everything else so far, start-up
  included (:func:`auto_budget`, from this run's measured wall time and seconds per exact
  window): a budget kept over the whole run, so a single photo, whose start-up dominates, usually
  comes out exact, and over a folder the exact windows settle at that share of the per-photo
  time. An input gets every cell when they all fit in what is left (the map is then exactly what
  ``crops`` gives), else as many as fit, where the dense answer is most in doubt (a refinement),
  and none when fewer than a refinement's first lattice fit (the dense map, whose fidelity check
  says how far it is). The first image's windows are timed on its lattice, which is kept.

Each image's json records the method that ran (``crops``, ``refine``, ``dense``...) and why.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from heatmap_cli.errors import setting
from heatmap_cli.grid.crops import cell_corners
from heatmap_cli.grid.refine import (
    DEFAULT_REFINE_SHARE,
    Refinement,
    RefinePlan,
    refine_together,
)
from heatmap_cli.pipeline.exact import ExactWindows
from heatmap_cli.pipeline.profiling import run_seconds
from heatmap_cli.pipeline.settings import REFINING, method_choices

__all__ = [
    "AUTO_SHARE",
    "REFINING",
    "MethodChoice",
    "Refiner",
    "ScoredBatch",
    "auto_budget",
    "combined_choice",
    "image_method",
    "method_choices",
    "refiner_for",
    "seconds_left",
]

AUTO_SHARE = 0.25
"""``auto``: exact windows take at most this share of the time the run spends on the rest."""

_LATTICE = RefinePlan(0).lattice


@dataclass(frozen=True)
class MethodChoice:
    """The method that made one network input's grid, and why.

    Attributes:
        method: ``"crops"`` (every cell exact), ``"refine"`` (some) or the dense grid's own
            method (``"dense"``, ``"dilate"``...).
        reason: Why, in a few words.
    """

    method: str
    reason: str


class ScoredBatch(NamedTuple):
    """A batch of network inputs scored by the engine.

    Attributes:
        grid: float32 ``(N, K, rows, cols)`` logits on the CPU.
        tiling: How the inputs were evaluated (``engine.Tiling``).
        exact: bool ``(N, rows, cols)``: the cells evaluated as crops.
        choices: Per input, the method that made its grid and why.
    """

    grid: torch.Tensor
    tiling: object
    exact: np.ndarray
    choices: tuple[MethodChoice, ...]


def auto_budget(
    cells: int,
    seconds_per_window: float,
    seconds_left: float,
) -> int:
    """How many exact windows ``auto`` allows one network input.

    Args:
        cells: Cells of its grid.
        seconds_per_window: Measured wall seconds of one exact window.
        seconds_left: The input's part of what is left of the run's exact-window budget
            (:func:`seconds_left`).

    Returns:
        ``seconds_left / seconds_per_window`` windows, between 0 and ``cells``.
    """
    if seconds_per_window <= 0 or not math.isfinite(seconds_per_window):
        return cells
    return max(0, min(cells, int(seconds_left / seconds_per_window)))


def seconds_left(run_seconds: float, exact_seconds: float, share: float = AUTO_SHARE) -> float:
    """What is left of ``auto``'s budget: exact windows take at most ``share`` of the rest.

    Args:
        run_seconds: Wall seconds of the run so far, start-up included.
        exact_seconds: Of those, the seconds spent on exact windows.
        share: The exact windows' largest share of the time spent on everything else.

    Returns:
        ``share * (run_seconds - exact_seconds) - exact_seconds``; negative when spent.
    """
    return share * (run_seconds - exact_seconds) - exact_seconds


class Refiner:
    """Adds exact windows to dense grids, input by input, for ``refine`` and ``auto``.

    Args:
        requested: ``"refine"`` or ``"auto"``.
        dense_method: The method of the dense grid (``"dense"`` or ``"dilate"``).
        exact: The engine's exact windows (asked for when first needed).
        clock: Wall seconds of the run so far, start-up included; ``auto`` budgets with it
            (default: since this object was made).
    """

    def __init__(
        self,
        requested: str,
        dense_method: str,
        exact: Callable[[], ExactWindows],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.requested = requested
        self.dense_method = dense_method
        self._exact = exact
        made = time.perf_counter()
        self._clock = clock or (lambda: time.perf_counter() - made)

    def __call__(
        self, grid: torch.Tensor, tiling: object, pixels: np.ndarray, stride: int
    ) -> ScoredBatch:
        """Refines each input's dense grid; the inputs' exact windows go in shared batches.

        Args:
            grid: float32 ``(N, K, rows, cols)`` dense logits on the CPU.
            tiling: How the dense grid was evaluated.
            pixels: uint8 ``(N, H, W, 3)``: the inputs.
            stride: The grid's stride in input pixels.

        Returns:
            The refined logits, their tiling, the exact cells and each input's choice.
        """
        exact = self._exact()
        dense = [grid[image].numpy() for image in range(grid.shape[0])]
        cells = dense[0].shape[1] * dense[0].shape[2]

        def evaluate(found: np.ndarray) -> np.ndarray:
            if not exact.windows and len(found) > 1:  # the first window alone takes the setup
                return np.concatenate([evaluate(found[:1]), evaluate(found[1:])])
            return exact.logits(pixels, cell_corners(found, stride))

        if self.requested == "refine":
            budget = round(DEFAULT_REFINE_SHARE * cells)
            plans = [Refinement(d, RefinePlan(budget)) for d in dense]
            why = f"asked for: exact windows where the dense answer is in doubt, at most {budget}"
            choices = [MethodChoice("refine", why)] * len(dense)
        else:
            plans, choices = self._auto(dense, evaluate, cells)
        refine_together(plans, evaluate)
        results = [p.result() for p in plans]
        refined = torch.from_numpy(np.stack([logits for logits, _ in results]))
        masks = np.stack([mask for _, mask in results])
        return ScoredBatch(refined, tiling, masks, tuple(choices))

    def _auto(
        self, dense: list[np.ndarray], evaluate: Callable[[np.ndarray], np.ndarray], cells: int
    ) -> tuple[list[Refinement], list[MethodChoice]]:
        """Each input's refinement within ``auto``'s budget, and why."""
        exact = self._exact()
        first = [Refinement(d, RefinePlan(0)) for d in dense]  # nothing: a budget of 0
        if exact.seconds_per_window is None:  # time the first windows: a lattice, kept
            first = [Refinement(d, RefinePlan(cells, rounds=0, radius=0)) for d in dense]
            refine_together(first, evaluate)
        per_window = exact.seconds_per_window or 0.0
        left = seconds_left(self._clock(), exact.seconds)
        allowed = auto_budget(cells, per_window, left / len(dense))
        figures = (
            f"{cells} exact windows would take {cells * per_window:.2f} s; "
            f"{max(left, 0.0) / len(dense):.2f} s of its {AUTO_SHARE:.0%} share of the run's "
            "time was left"
        )
        plans, choices = [], []
        for grid, before in zip(dense, first, strict=True):
            state = (before.logits, before.exact)
            if allowed >= cells:
                plans.append(Refinement(grid, RefinePlan(cells, lattice=1, rounds=0), state))
                choices.append(MethodChoice("crops", f"auto: {figures}; all fit"))
            elif allowed < math.ceil(cells / _LATTICE**2) and not before.exact.any():
                advice = f"{setting('method')} crops or refine make cells exact"
                why = f"auto: {figures}; only {allowed} fit ({advice})"
                plans.append(Refinement(grid, RefinePlan(0), state))
                choices.append(MethodChoice(self.dense_method, why))
            else:
                budget = max(allowed, int(before.exact.sum()))
                plans.append(Refinement(grid, RefinePlan(budget), state))
                why = f"auto: {figures}; up to {budget} where in doubt fit"
                choices.append(MethodChoice("refine", why))
        return plans, choices


def refiner_for(requested: str, built: object, engine: object) -> Refiner | None:
    """The engine's refiner for ``--method auto``/``refine``; None for the other methods.

    Args:
        requested: ``--method``.
        built: The engine's ``GridNetwork`` (its method, stride and native stride).
        engine: The engine (its ``exact`` windows, asked for when first needed).
    """
    method = getattr(built, "method", None)
    if requested not in REFINING or method == "crops":  # crops (a fallback): all exact anyway
        return None
    dense = (
        "dense"
        if getattr(built, "stride", None) == getattr(built, "native_stride", 0)
        else "dilate"
    )
    return Refiner(requested, dense, lambda: engine.exact, run_seconds)  # type: ignore[attr-defined]


def image_method(passes: Sequence[object], requested: str, engine_method: str) -> MethodChoice:
    """The method that made one image's map, and why (the json's ``method``, ``method_reason``).

    Args:
        passes: Its passes (``multiscale.Pass``: ``method``, ``method_reason``; None where the
            engine chose nothing).
        requested: ``--method``.
        engine_method: The engine's method (``"crops"`` when ``auto`` fell back to it).
    """
    choices = [
        MethodChoice(p.method, p.method_reason or "")  # type: ignore[attr-defined]
        if getattr(p, "method", None)
        else None
        for p in passes
    ]
    if requested == "auto" and not any(choices):
        return MethodChoice(
            engine_method, "auto: the model cannot be converted; every window exact"
        )
    return combined_choice(choices, engine_method)


def combined_choice(choices: Sequence[MethodChoice | None], fallback: str) -> MethodChoice:
    """One image's method from its passes' choices (the passes of ``--scales``/``--flip``).

    Args:
        choices: Each pass's choice; None where the engine made none (a method asked for).
        fallback: The method asked for, when no pass chose.
    """
    made = [c for c in choices if c is not None]
    if not made:
        return MethodChoice(fallback, "asked for")
    methods = {c.method for c in made}
    method = made[0].method if len(methods) == 1 else "refine"
    return MethodChoice(method, "; ".join(dict.fromkeys(c.reason for c in made)))
