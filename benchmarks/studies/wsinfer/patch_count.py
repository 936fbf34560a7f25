"""How many patches WSInfer's own tissue detection and grid keep in one slide, at an overlap.

Run in the benchmark's venv (it imports WSInfer), with the HOME and HF_HUB_OFFLINE that run.py
sets: python patch_count.py SLIDE OUT_DIR --overlap 0.857142857142857
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
from model import MPP, PATCH
from wsinfer.patchlib import segment_and_patch_one_slide


def patch_count(slide: Path, out: Path, overlap: float) -> dict[str, object]:
    """Patches WSInfer keeps in tissue at ``overlap`` (0: its default, non-overlapping)."""
    segment_and_patch_one_slide(
        slide, out, patch_size_px=PATCH, patch_spacing_um_px=MPP, overlap=overlap
    )
    with h5py.File(out / "patches" / f"{slide.stem}.h5", "r") as patches:
        coords = patches["/coords"]
        step = round((1 - overlap) * PATCH)
        return {"overlap": overlap, "step": step, "patches": int(coords.shape[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--overlap", type=float, default=0.0)
    args = parser.parse_args()
    print(json.dumps(patch_count(args.slide, args.out, args.overlap)))


if __name__ == "__main__":
    main()
