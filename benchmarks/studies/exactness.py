"""How far the dense grid is from per-window crops on real networks and real photos.

Zero padding makes them differ: inside the dense pass a window's border sees its real
neighbours, where the cropped window sees zeros. This prints, per model and photo, the largest
logit difference (absolute, and relative to the logit range), and the share of cells whose
top-1 class agrees.

Run: .venv/bin/python -m benchmarks.studies.exactness [--size 384]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks.support.common import SAMPLES, convert
from heatmap_cli.grid import score_grid
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.io import read_image
from heatmap_cli.models import load_model
from heatmap_cli.pipeline.preprocess import plan_geometry, resize_for_grid


def compare(model_name: str, photo: Path, size: int) -> str:
    loaded = load_model(model_name)
    net = convert(loaded.model, loaded.input_size)
    image = read_image(photo)
    geometry = plan_geometry(
        (image.height, image.width), shorter_side=size, window=loaded.input_size, stride=net.stride
    )
    pixels = resize_for_grid(image, geometry.input_size, loaded.interpolation)
    x = normalize(pixels, loaded.mean, loaded.std)
    dense = score_grid(net, x, input_size=loaded.input_size)
    crops = score_grid(net, x, method="crops", input_size=loaded.input_size)
    difference = (dense - crops).abs()
    logit_range = (crops.max() - crops.min()).item()
    agree = (dense.argmax(1) == crops.argmax(1)).float().mean().item()
    probs_dense, probs_crops = dense.softmax(1), crops.softmax(1)
    prob_diff = (probs_dense - probs_crops).abs().max().item()
    rows, cols = dense.shape[2:]
    largest = difference.max().item()
    return (
        f"| {model_name} | {photo.name} | {geometry.input_size[1]}x{geometry.input_size[0]} "
        f"| {rows}x{cols} | {largest:.2f} | {largest / logit_range:.1%} "
        f"| {difference.mean().item():.3f} | {prob_diff:.3f} | {agree:.0%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(
        "| model | photo | input | grid | max abs logit diff | of logit range "
        "| mean abs diff | max prob diff | top-1 agreement |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model_name in args.models:
        for photo in sorted(SAMPLES.glob("*.jpg")):
            print(compare(model_name, photo, args.size), flush=True)


if __name__ == "__main__":
    main()
