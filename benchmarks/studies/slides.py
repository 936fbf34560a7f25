"""Whole-slide images: reader decode speed, peak memory and output sizes of the command (issue 24).

Everything runs on slides this script writes itself with tifffile (Aperio layout, JPEG tiles,
levels 1/4/16, 0.5 um/px, about 45% tissue; ``tests.helpers.slides.write_huge_slide``: tiles
pre-encoded once, so even 100k x 100k takes seconds):

1. decode speed of the two readers behind ``heatmap_cli.io.slides`` on the same SVS: random
   1024 x 1024 regions of level 0, one thread, megapixels per second (tifffile through TiffSlide
   against OpenSlide);
2. the whole ``heatmap`` command on the slide in a fresh process at stride 32 and ``--mpp 0.5``:
   peak resident memory (``ru_maxrss`` of the child, read with ``os.wait4``), wall time, tiles
   scored, and the size of each output (the QuPath GeoJSON must stay under about 100 MB).

The network is a small seeded CNN (``slide_net``: window 224, native stride 32, two classes) so
that the run measures the slide path (reading, tiling, storing, writing), not a model's speed.

Run: .venv/bin/python -m benchmarks.studies.slides [--size 100000] [--readers-size 20000]
     [--keep DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]

GIB = 2**30


def slide_net() -> nn.Module:
    """A seeded CNN, window 224, native stride 32, two classes: cheap, so the slide path shows."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    channels = 3
    for width in (16, 32, 48, 64, 64):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2)).eval()


def decode_speed(path: Path, reader: str, regions: int = 40, side: int = 1024) -> float:
    """Megapixels per second decoding random level-0 regions with one reader, one thread."""
    from heatmap_cli.io.slides.openslide import OpenSlideSlide
    from heatmap_cli.io.slides.tiff import TiffFileSlide

    slide = TiffFileSlide(path) if reader == "tifffile" else OpenSlideSlide(path)
    height, width = slide.size
    rng = np.random.default_rng(0)
    corners = rng.integers(0, [height - side, width - side], (regions, 2))
    slide.read(0, int(corners[0][0]), int(corners[0][1]), side, side)  # warm
    started = time.perf_counter()
    for top, left in corners:
        slide.read(0, int(top), int(left), side, side)
    seconds = time.perf_counter() - started
    slide.close()
    return regions * side * side / seconds / 1e6


def run_command(
    slide: Path,
    out: Path,
    extra: list[str],
    *,
    model: str = f"{Path(__file__).resolve()}:slide_net",
    window: int = 224,
    stride: int = 32,
) -> dict[str, object]:
    """The command in a fresh process: peak RSS, wall time, its grid and the files' sizes.

    Args:
        slide: The slide.
        out: Its output folder.
        extra: More options.
        model: ``file.py:callable`` of a two-class network (default :func:`slide_net`).
        window: The network's window.
        stride: The grid's stride.
    """
    labels = out.parent / "labels.txt"
    labels.write_text("stroma\ntumor\n")
    command = [
        str(REPO / ".venv" / "bin" / "heatmap"),
        str(slide),
        "--model", model,
        "--input-size", str(window),
        "--labels", str(labels),
        "--mpp", "0.5",
        "--stride", str(stride),
        "--out", str(out),
        "-q",
        *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read() if process.stderr else ""
    record = json.loads((out / f"{slide.stem}.json").read_text()) if status == 0 else {}
    return {
        "status": os.waitstatus_to_exitcode(status),
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(usage.ru_maxrss * 1024 / GIB, 3),
        "grid": record.get("grid"),
        "slide": record.get("slide"),
        "sizes_mb": {  # the json's list: a zarr store counts whole
            entry["name"]: round(entry["bytes"] / 1e6, 2) for entry in record.get("files", [])
        },
        "stderr": stderr.strip().splitlines()[-3:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[100000])
    parser.add_argument("--readers-size", type=int, default=20000)
    parser.add_argument("--keep", type=Path, help="write slides and outputs here (kept)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--tissue-square",
        type=float,
        help="score only a centred square of this area fraction (a --tissue mask file): the "
        "grid and the outputs keep the whole slide's size, the scoring is cut short",
    )
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()
    # imported here: the command imports this file for slide_net, without the repository's path
    from benchmarks.support.common import cpu_model
    from tests.helpers.slides import write_huge_slide

    folder = args.keep or Path(tempfile.mkdtemp(prefix="heatmap-slides-"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"cpu": cpu_model(), "load_before": os.getloadavg()}
    readers_slide = write_huge_slide(folder / "readers.svs", (args.readers_size,) * 2)
    results["decode_mp_per_s"] = {
        reader: round(decode_speed(readers_slide, reader), 1)
        for reader in ("tifffile", "openslide", "tifffile", "openslide")
    }
    results["geojson_mb_45pct_tissue"] = {side: geojson_size(side) for side in args.size}
    print(json.dumps(results), flush=True)
    for side in args.size:
        started = time.perf_counter()
        slide = write_huge_slide(folder / f"slide{side}.svs", (side, side))
        written = time.perf_counter() - started
        out = folder / f"out{side}"
        extra = list(args.extra)
        if args.tissue_square:
            extra += ["--tissue", str(square_mask(folder, args.tissue_square))]
        run = run_command(slide, out, extra)
        run["write_seconds"] = round(written, 1)
        run["slide_mb"] = round(slide.stat().st_size / 1e6, 1)
        run["load_after"] = os.getloadavg()
        results[f"slide_{side}"] = run
        print(json.dumps({side: run}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def square_mask(folder: Path, fraction: float) -> Path:
    """A mask image of a centred square of ``fraction`` of the area (any size: it is scaled)."""
    from PIL import Image

    mask = np.zeros((1000, 1000), np.uint8)
    half = round(500 * fraction**0.5)
    mask[500 - half : 500 + half, 500 - half : 500 + half] = 255
    path = folder / "square_mask.png"
    Image.fromarray(mask).save(path)
    return path


def geojson_size(side: int, stride: int = 32, window: int = 224, classes: int = 2) -> float:
    """MB of the QuPath GeoJSON of a ``side``-pixel square slide whose grid is 45% tissue."""
    from heatmap_cli.io.slide_tables import write_tile_geojson
    from heatmap_cli.pipeline.slides.geometry import SlideGeometry
    from heatmap_cli.pipeline.slides.summary import aggregate_tiles
    from tests.helpers.slides import slide_pixels

    geometry = SlideGeometry(
        (side, side), 0, 1.0, 1.0, (side, side), (window,) * 2, stride, 0.5, 0.5
    )
    rows, cols = geometry.shape
    tissue = slide_pixels((rows, cols))[..., 1] < 200  # the synthetic slide's blobs, per cell
    rng = np.random.default_rng(0)
    probs = rng.random((classes, rows, cols), dtype=np.float32)
    probs[:, ~tissue] = np.nan
    tiles = aggregate_tiles(probs, geometry)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "t.geojson"
        write_tile_geojson(
            path,
            tiles.boxes,
            tiles.values,
            ["stroma", "tumor"][:classes],
            name="s",
            extra={"cells": tiles.cells},
        )
        return round(path.stat().st_size / 1e6, 1)


if __name__ == "__main__":
    main()
