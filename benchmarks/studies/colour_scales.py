"""How visible each class is under each colour scale and opacity rule, on the sample photos.

For every sample photo's three top classes (default model, ``--size 384``), draws the overlay of
each under ``--scale absolute``, ``shared`` and ``per-class``, with the opacity rule of the
overlays (``alpha * sqrt(heat)``) and the former one (``alpha * heat``), and prints how far the
overlay moves the photo (mean absolute difference over the RGB channels, 0..255):

* ``at peak``: within 6 pixels of the class's peak window centre;
* ``p~.12`` / ``p~.37``: where the drawn probability is within 0.02 of 0.12 / 0.37.

``--figure PATH`` also writes a contact sheet of chelsea's three classes under each scale.

Run: .venv/bin/python -m benchmarks.studies.colour_scales [--figure docs/chelsea_scales.jpg]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.support.paths import SAMPLES
from heatmap_cli.io import read_image
from heatmap_cli.models import load_model
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.multiscale import score_multiscale
from heatmap_cli.pipeline.ranking import rank_image
from heatmap_cli.render import cell_values_to_image, colour_scales, contact_sheet
from heatmap_cli.render import render_class_overlay as draw

SCALES = ("absolute", "shared", "per-class")


def moved(photo: np.ndarray, picture: np.ndarray, where: np.ndarray) -> str:
    """Mean |picture - photo| over the selected pixels, or '-' when none is selected."""
    if not where.any():
        return "  - "
    return f"{np.abs(picture.astype(float) - photo)[where].mean():4.1f}"


def main() -> None:
    """Prints one line per photo, class, scale and opacity rule."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figure", type=Path, help="write chelsea's scales sheet here")
    args = parser.parse_args()
    loaded = load_model()
    engine = GridEngine(loaded, GridSettings(device="cpu"))
    print("photo    class          scale      opacity  at peak  p~.12  p~.37")
    for name in ("chelsea", "coffee"):
        image = read_image(SAMPLES / f"{name}.jpg")
        photo = np.asarray(image)
        grid = score_multiscale(engine, image)
        centers = grid.geometry.centers()
        chosen = [index for index, _ in rank_image(grid.passes, 3)]
        tiles, labels = [photo], ["photo"]
        for scale in SCALES:
            ranges = colour_scales([grid.probs[i] for i in chosen], scale=scale)
            for index, colour_range in zip(chosen, ranges, strict=True):
                probs = cell_values_to_image(grid.probs[index], centers, photo.shape[:2])
                row, col = np.unravel_index(np.argmax(grid.probs[index]), grid.geometry.shape)
                x, y = centers[row, col]
                ys, xs = np.mgrid[: photo.shape[0], : photo.shape[1]]
                near = (xs + 0.5 - x) ** 2 + (ys + 0.5 - y) ** 2 <= 36
                for rule in ("sqrt", "linear"):
                    picture = draw(photo, grid.probs[index], centers, alpha_mode=rule,
                                   vmin=colour_range.low, vmax=colour_range.high)  # fmt: skip
                    print(
                        f"{name:<8} {loaded.categories[index][:14]:<14} {scale:<10} {rule:<8} "
                        f"{moved(photo, picture, near):>7}  "
                        f"{moved(photo, picture, np.abs(probs - 0.12) < 0.02)}  "
                        f"{moved(photo, picture, np.abs(probs - 0.37) < 0.02)}"
                    )
                    if rule == "sqrt" and name == "chelsea":
                        label = f"{loaded.categories[index]} {grid.probs[index].max():.2f}"
                        tiles.append(draw(photo, grid.probs[index], centers,
                                          vmin=colour_range.low, vmax=colour_range.high,
                                          label=f"{scale}: {label}"))  # fmt: skip
                        labels.append(f"{scale}: {label}")
        if args.figure and name == "chelsea":
            tiles = [tiles[0], *tiles[1:4], tiles[0], *tiles[4:7], tiles[0], *tiles[7:]]
            labels = [labels[0], *labels[1:4], labels[0], *labels[4:7], labels[0], *labels[7:]]
            sheet = contact_sheet(tiles, labels, max_tile_side=360, columns=4)
            Image.fromarray(sheet).save(args.figure, quality=88)


if __name__ == "__main__":
    main()
