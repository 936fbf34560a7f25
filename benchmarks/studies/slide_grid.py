"""Peak memory of a slide whose grid does not fit the memory budget: zarr store against npz.

A slide's grid at a fine stride is larger than what the process should hold: 100k x 100k
pixels at stride 8 is 156 million cells, 1.25 GB per float32 map. The command writes such a
grid as a chunked ``.zarr`` store, computing every output band by band from the scored tiles'
file (``heatmap_cli.pipeline.slides.bands``); ``--grid-format npz`` gathers it whole for the
``.npz`` (the only way a zip of whole arrays is written). This runs the command on one slide
with each format, in a fresh process each, and reports the peak resident memory
(``ru_maxrss`` of the child, from ``os.wait4``), the wall time, the grid and the output sizes.

The slide is written by ``tests.helpers.slides.write_huge_slide`` (Aperio layout, JPEG tiles,
0.5 um/px); the network is a seeded CNN with a 32-pixel window and native stride 8 (``grid_net``,
two classes), so that the grid, not the network, is what the output stage holds. A centred
square mask file (``--tissue-square``, a fraction of the area) keeps the scoring short while the
grid and every output keep the whole slide's size.

Run: .venv/bin/python -m benchmarks.studies.slide_grid [--size 100000] [--stride 8]
     [--tissue-square 0.02] [--formats zarr npz] [--keep DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30


def grid_net() -> nn.Module:
    """A seeded CNN, window 32, native stride 8, two classes: cheap, so the grid dominates."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    channels = 3
    for width in (8, 16, 16):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100000)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--tissue-square", type=float, default=0.02)
    parser.add_argument("--formats", nargs="+", default=["zarr", "npz"])
    parser.add_argument("--keep", type=Path, help="write the slide and outputs here (kept)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # imported here: the command imports this file for grid_net, without the repository's path
    from benchmarks.studies.slides import run_command, square_mask
    from benchmarks.support.common import cpu_model
    from tests.helpers.slides import write_huge_slide

    folder = args.keep or Path(tempfile.mkdtemp(prefix="heatmap-slide-grid-"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {
        "cpu": cpu_model(),
        "size": args.size,
        "stride": args.stride,
        "tissue_square": args.tissue_square,
    }
    slide = write_huge_slide(folder / f"slide{args.size}.svs", (args.size, args.size))
    mask = square_mask(folder, args.tissue_square)
    for grid_format in args.formats:
        extra = ["--tissue", str(mask), "--grid-format", grid_format]
        load_before = os.getloadavg()
        model = f"{Path(__file__).resolve()}:grid_net"
        out = folder / f"out-{grid_format}"
        run = run_command(slide, out, extra, model=model, window=32, stride=args.stride)
        run["tissue_cells"] = (run["slide"] or {}).get("tissue", {}).get("cells")
        run["load_before"], run["load_after"] = load_before, os.getloadavg()
        results[grid_format] = run
        print(json.dumps({grid_format: run}), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
