"""How ``refine`` spends its exact windows: rules and budgets scored offline on cached grids.

A refinement only decides which cells to evaluate exactly; given the dense and the crops logits
of a grid, any rule can be replayed without the network (the crops grid answers the cells it
picks). This study replays :func:`heatmap_cli.grid.refine.refine_cells` (the library's rule,
exactly as the command runs it) under several plans (budget, lattice spacing, correction
radius) and scores each against the crops grid (top-1 agreement, mean largest probability
difference) and, for mosaics with ground truth, by pixel accuracy and mIoU under the mosaic
benchmark's grid-to-pixel rule.

Input: a folder of ``.npz`` files, one per image, holding ``dense`` and ``crops`` ``(K, h, w)``
logits, and for mosaics ``labels`` ``(H, W)`` and ``centers`` ``(h, w, 2)`` (what the mosaic
benchmark's ``mosaic_grids`` caches; ``benchmarks/studies/mosaics``). Run from the repository
root::

    .venv/bin/python -m benchmarks.studies.refine_cells GRIDS_FOLDER [--shares 0.2 0.25 0.3]
"""

from __future__ import annotations

import argparse
import glob
import itertools
from pathlib import Path

import numpy as np

from heatmap_cli.grid.refine import RefinePlan, refine_cells
from heatmap_cli.pipeline.activations import softmax
from heatmap_cli.render.heat import cell_values_to_image


def pixel_labels(probs: np.ndarray, centers: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mosaic benchmark's rule: each class spread like the overlays, then argmax."""
    return np.stack([cell_values_to_image(p, centers, size) for p in probs]).argmax(0)


class Scores:
    """Figures accumulated over images for one plan."""

    def __init__(self, classes: int) -> None:
        self.confusion = np.zeros((classes, classes), np.int64)
        self.agreement: list[float] = []
        self.difference: list[float] = []
        self.exact: list[float] = []

    def add(self, logits: np.ndarray, exact: np.ndarray, crops: np.ndarray, data: dict) -> None:
        """Adds one image."""
        probs, reference = softmax(logits), softmax(crops)
        self.agreement.append(float((logits.argmax(0) == crops.argmax(0)).mean()))
        self.difference.append(float(np.abs(probs - reference).max(0).mean()))
        self.exact.append(float(exact.mean()))
        if "labels" in data:
            labels = data["labels"]
            predicted = pixel_labels(probs, data["centers"], labels.shape)
            k = len(self.confusion)
            flat = labels.astype(np.int64).ravel() * k + predicted.ravel()
            self.confusion += np.bincount(flat, minlength=k * k).reshape(k, k)

    def row(self, name: str) -> str:
        """One markdown row."""
        cells = [
            name,
            f"{np.mean(self.exact):.3f}",
            f"{np.mean(self.agreement):.3f}",
            f"{np.mean(self.difference):.3f}",
        ]
        if self.confusion.any():
            hits = np.diag(self.confusion).astype(float)
            union = self.confusion.sum(0) + self.confusion.sum(1) - hits
            iou = np.where(union > 0, hits / np.maximum(union, 1), np.nan)
            cells += [f"{hits.sum() / self.confusion.sum():.4f}", f"{np.nanmean(iou):.4f}"]
        return "| " + " | ".join(cells) + " |"


def main() -> None:
    """Replays the plans over the folder's grids and prints one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", type=Path, help="folder of .npz with dense and crops logits")
    parser.add_argument("--shares", type=float, nargs="+", default=[0.2, 0.25, 0.3])
    parser.add_argument("--lattices", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[4])
    args = parser.parse_args()
    files = sorted(glob.glob(str(args.grids / "*.npz")))
    images = [dict(np.load(f)) for f in files]
    classes = images[0]["dense"].shape[0]
    plans: dict[str, object] = {"dense": "dense", "crops": "crops"}
    for share, lattice, radius, rounds in itertools.product(
        args.shares, args.lattices, args.radii, args.rounds
    ):
        name = f"refine share {share:g}, lattice {lattice}, radius {radius:g}, rounds {rounds}"
        plans[name] = (share, lattice, radius, rounds)
    header = "| plan | exact share | top-1 vs crops | mean max dp |"
    if "labels" in images[0]:
        header += " pixel accuracy | mIoU |"
    print(f"{len(images)} images from {args.grids}\n\n{header}")
    print("|---" * (header.count("|") - 1) + "|")
    for name, plan in plans.items():
        scores = Scores(classes)
        for data in images:
            dense, crops = data["dense"], data["crops"]
            if plan == "dense":
                logits, exact = dense, np.zeros(dense.shape[1:], bool)
            elif plan == "crops":
                logits, exact = crops, np.ones(dense.shape[1:], bool)
            else:
                share, lattice, radius, rounds = plan  # type: ignore[misc]
                budget = round(share * dense.shape[1] * dense.shape[2])
                logits, exact = refine_cells(
                    dense,
                    lambda cells, crops=crops: crops[:, cells[:, 0], cells[:, 1]].T,
                    RefinePlan(budget, lattice=lattice, radius=radius, rounds=rounds),
                )
            scores.add(logits, exact, crops, data)
        print(scores.row(name), flush=True)


if __name__ == "__main__":
    main()
