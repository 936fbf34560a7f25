"""How ``--size`` decides whether a small object is found: a 200-pixel cat in a 2000x1333 photo.

Builds a composite: ``sample_images/chelsea.jpg`` shrunk to ``--cat`` pixels wide, pasted off
centre on a neutral grey 2000x1333 canvas. Scores it with the default model at several
``--size`` values and multi-scale settings, and prints, for the cat classes (ImageNet 281-285:
tabby, tiger cat, Persian, Siamese, Egyptian cat), the best peak probability on the averaged map
and whether its window centre lies on the cat; plus how wide the cat is in the resized photo
compared with the 224-pixel window.

Run: .venv/bin/python -m benchmarks.studies.small_objects [--cat 200] [--save composite.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.support.paths import SAMPLES
from heatmap_cli.models import load_model
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.multiscale import score_multiscale

CANVAS = (2000, 1333)
CAT_CLASSES = range(281, 286)
RUNS = [  # (label, size, scales)
    ("--size 384 (default)", 384, (1.0,)),
    ("--size 768", 768, (1.0,)),
    ("--size native (1333)", "native", (1.0,)),
    ("--size 384 --scales 1,2,4", 384, (1.0, 2.0, 4.0)),
]


def composite(cat_width: int) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The grey canvas with the cat pasted at 65% / 60% of its width and height; and its box."""
    cat = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    cat = cat.resize((cat_width, round(cat.height * cat_width / cat.width)), Image.LANCZOS)
    canvas = Image.new("RGB", CANVAS, (128, 128, 128))
    left, top = int(CANVAS[0] * 0.65), int(CANVAS[1] * 0.6)
    canvas.paste(cat, (left, top))
    return canvas, (left, top, left + cat.width, top + cat.height)


def main() -> None:
    """Prints one line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cat", type=int, default=200, help="cat width in pixels")
    parser.add_argument("--save", type=Path, help="also write the composite here")
    args = parser.parse_args()
    image, (x0, y0, x1, y1) = composite(args.cat)
    if args.save:
        image.save(args.save)
    loaded = load_model()
    print(f"cat {x1 - x0}x{y1 - y0} px at ({x0}, {y0}) in a {CANVAS[0]}x{CANVAS[1]} photo")
    for label, size, scales in RUNS:
        engine = GridEngine(loaded, GridSettings(size=size, device="cpu"))
        grid = score_multiscale(engine, image, scales)
        probs = grid.probs[list(CAT_CLASSES)]
        best = int(np.argmax(probs.reshape(len(probs), -1).max(axis=1)))
        row, col = np.unravel_index(int(np.argmax(probs[best])), probs.shape[1:])
        x, y = grid.geometry.centers()[row, col]
        on_cat = x0 <= x < x1 and y0 <= y < y1
        base = min(CANVAS) if size == "native" else size
        shown = (x1 - x0) * base / min(CANVAS)
        print(
            f"{label:<28} cat {shown:5.0f} px of the 224 window at scale 1; "
            f"{loaded.categories[CAT_CLASSES[best]]:<13} peak {probs[best].max():.2f} at "
            f"({x:.0f}, {y:.0f}) {'on the cat' if on_cat else 'OFF the cat'}"
        )


if __name__ == "__main__":
    main()
