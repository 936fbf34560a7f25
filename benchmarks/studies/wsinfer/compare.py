"""WSInfer's per-slide CSV against another in the same columns, at the patches both scored.

Both tools write ``minx,miny,width,height,prob_<class>...`` in level-0 pixels. Rows are matched on
``(minx, miny, width, height)``; for every class both have, the largest and mean absolute
difference of the probabilities, and how often the top class agrees.

Run: python compare.py WSINFER.csv OTHER.csv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["minx", "miny", "width", "height"]


def read_patches(path: Path) -> pd.DataFrame:
    """A CSV with WSInfer's columns; rows scored twice (overlapping tiles) are averaged."""
    frame = pd.read_csv(path)
    missing = [key for key in KEYS if key not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r}; WSInfer's columns are {KEYS}")
    return frame.groupby(KEYS, as_index=False).mean(numeric_only=True)


def compare_csv(wsinfer_csv: Path, other_csv: Path) -> dict[str, object]:
    """How the other CSV's probabilities compare with WSInfer's where both scored a patch."""
    reference, other = read_patches(wsinfer_csv), read_patches(other_csv)
    classes = [c for c in reference.columns if c.startswith("prob_") and c in other.columns]
    if not classes:
        raise ValueError(f"{other_csv}: none of WSInfer's prob_<class> columns")
    shared = reference.merge(other, on=KEYS, suffixes=("_wsinfer", "_other"))
    result: dict[str, object] = {
        "wsinfer_patches": len(reference),
        "other_patches": len(other),
        "shared_patches": len(shared),
        "wsinfer_patches_not_in_other": len(reference) - len(shared),
    }
    if shared.empty:
        return result
    left = shared[[f"{c}_wsinfer" for c in classes]].to_numpy(np.float64)
    right = shared[[f"{c}_other" for c in classes]].to_numpy(np.float64)
    difference = np.abs(left - right)
    worst = int(difference.max(axis=1).argmax())
    result.update(
        classes=[c.removeprefix("prob_") for c in classes],
        max_abs_diff=float(difference.max()),
        mean_abs_diff=float(difference.mean()),
        top1_agreement=float((left.argmax(1) == right.argmax(1)).mean()),
        worst_patch={key: int(shared[key].iloc[worst]) for key in KEYS},
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wsinfer_csv", type=Path)
    parser.add_argument("other_csv", type=Path)
    args = parser.parse_args()
    print(json.dumps(compare_csv(args.wsinfer_csv, args.other_csv), indent=2))


if __name__ == "__main__":
    main()
