"""How many exact cells a refinement needs, and how many issue 23's time goal allows: offline.

A refinement evaluates some cells exactly (as crops) and keeps the dense answer elsewhere. On the
cached dense and crops grids (:func:`.evaluate.mosaic_grids`) any choice of cells is replayed
without the network. Two choices bound what a rule can reach at a given share of exact cells:

* ``oracle``: the cells where dense and crops differ most (largest ``|Δp|`` first), which a
  real rule cannot know but which no rule beats;
* ``margin``: the cells whose dense top-1 margin (first minus second probability) is smallest,
  the cheapest signal a real rule has.

The time goal (refine's time above dense at most a third of crops') allows at most
``(1 - dense/crops) / 3`` of the cells if an exact cell costs refine what it costs crops
(``dense`` and ``crops`` are the network times of a timed run, table (a)'s "network" column).

    .venv/bin/python -m benchmarks.studies.mosaics.budget shufflenet_v2_x1_0@96 --mosaics 4
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import numpy as np

from . import study
from .evaluate import MosaicGrids, mosaic_grids, score_grids, softmax

__all__ = ["allowed_share", "budget_rows", "main"]

SHARES = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)

Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(dense probs, crops probs) -> priority`` per cell ``(h, w)``: higher is made exact first."""


def _oracle(dense: np.ndarray, crops: np.ndarray) -> np.ndarray:
    return np.abs(dense - crops).max(0)


def _margin(dense: np.ndarray, crops: np.ndarray) -> np.ndarray:
    top2 = np.sort(dense, 0)[-2:]
    return -(top2[1] - top2[0])


RULES: dict[str, Rule] = {"oracle": _oracle, "margin": _margin}


def _refined(grids: MosaicGrids, rule: Rule, share: float) -> np.ndarray:
    """Probabilities ``(K, h, w)``: crops on the ``share`` of cells ``rule`` ranks first."""
    dense, crops = softmax(grids.dense), softmax(grids.crops)
    count = round(share * dense[0].size)
    order = np.argsort(-rule(dense, crops), axis=None, kind="stable")[:count]
    exact = np.zeros(dense[0].size, dtype=bool)
    exact[order] = True
    return np.where(exact.reshape(dense.shape[1:]), crops, dense)


def allowed_share(dense_network: float, crops_network: float) -> float:
    """The largest share of exact cells the time goal allows at crops' cost per cell."""
    return max(0.0, 1.0 - dense_network / crops_network) / 3.0


def budget_rows(
    grids: list[MosaicGrids], classes: int, shares: tuple[float, ...] = SHARES
) -> list[str]:
    """Markdown rows: rule, share of exact cells, pixel accuracy %, mIoU %, top-1 agreement %."""
    rows = []
    for name, rule in RULES.items():
        for share in shares:
            probs = [_refined(g, rule, share) for g in grids]
            confusion = score_grids(
                ((g.labels, p, g.centers) for g, p in zip(grids, probs, strict=True)), classes
            )
            agree = np.mean(
                [
                    (p.argmax(0) == g.crops.argmax(0)).mean()
                    for g, p in zip(grids, probs, strict=True)
                ]
            )
            rows.append(
                f"| {name} | {100 * share:.0f} | {100 * confusion.accuracy:.1f} "
                f"| {100 * confusion.miou:.1f} | {100 * agree:.1f} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.mosaics.budget")
    parser.add_argument("model", help="ARCH@WINDOW (trained and cached)")
    parser.add_argument("--mosaics", type=int, default=4, help="first N mosaics of the set")
    parser.add_argument("--network", nargs=2, type=float, metavar=("DENSE", "CROPS"),
                        help="network s / mosaic of dense and crops (table (a)): the time "
                        "goal's share")  # fmt: skip
    args = parser.parse_args(argv)
    arch, _, window = args.model.partition("@")
    plan = study.Plan.make(quick=False)
    mosaics = study.accuracy_set(plan)
    trained = study.model(plan, arch, int(window))
    grids = list(mosaic_grids(trained, mosaics, args.mosaics, plan.cache))
    disagree = np.mean([(g.dense.argmax(0) != g.crops.argmax(0)).mean() for g in grids])
    print(f"{args.model}, {len(grids)} x {plan.side}²: dense and crops disagree on the top "
          f"class of {100 * disagree:.1f}% of the cells")  # fmt: skip
    if args.network:
        print(f"the time goal allows {100 * allowed_share(*args.network):.0f}% of the cells "
              "exact at crops' cost per cell")  # fmt: skip
    print("\n| rule | exact cells % | pixel acc. % | mIoU % | top-1 agreement with crops % |")
    print("|---|---|---|---|---|")
    print("\n".join(budget_rows(grids, len(mosaics.names))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
