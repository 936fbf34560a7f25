"""Huge images: peak memory, time and overlap of exact tiled evaluation (issue 6).

Every measurement runs in a fresh Python subprocess that does just that one thing, so its peak
resident memory (``ru_maxrss``, i.e. VmHWM) is the cost of that run alone, including the
Python/torch runtime and the model, which the parent prints separately as the baseline.

The image is synthetic and needs no download: a sample photo, resized so that its shorter side is
1024 pixels and repeated as a mosaic up to the requested size (uint8, like a decoded photo).

Run: .venv/bin/python -m benchmarks.studies.huge_images [--size 8192] [--tiles 4096 2048]
     [--budgets 2.0] [--untiled 1024 2048] [--check-size 1504] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.support.common import ROOT, SAMPLES, convert, peak_rss_mib, status_mib
from heatmap_cli.convert.network import ConvolutionalizedNet
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.grid.tiling import (
    MEMORY_SAFETY_FACTOR,
    choose_tile,
    estimate_activation_bytes,
    grid_bytes,
    minimum_tile,
    plan_tiles,
    receptive_field,
    tiled_score_grid,
)
from heatmap_cli.models import load_model

SAMPLE = SAMPLES / "chelsea.jpg"
GIB = 2**30


def synthetic_image(size: int) -> np.ndarray:
    """A ``size`` x ``size`` uint8 RGB mosaic of a sample photo, snapped to the default grid."""
    photo = Image.open(SAMPLE).convert("RGB")
    scale = 1024 / min(photo.size)
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
    tile = np.asarray(photo)
    reps = (-(-size // tile.shape[0]), -(-size // tile.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:size, :size])


def default_net() -> tuple[ConvolutionalizedNet, Any]:
    loaded = load_model()
    return convert(loaded.model, loaded.input_size), loaded


def peak_rss() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``), in bytes."""
    return round(peak_rss_mib() * 2**20)


def current_rss() -> int:
    """Resident memory of this process now (``VmRSS``), in bytes."""
    return round(status_mib("VmRSS") * 2**20)


# --- Children: each runs one measurement and prints one JSON line --------------------------------


def child_baseline(_: argparse.Namespace) -> dict[str, Any]:
    net, _ = default_net()
    del net
    return {"peak_rss": peak_rss()}


def child_tiled(args: argparse.Namespace) -> dict[str, Any]:
    """One tiled run; with ``--budget`` the tile is what ``choose_tile`` picks for it."""
    net, loaded = default_net()
    pixels = synthetic_image(args.size)
    tile = args.tile
    if args.budget is not None:
        tile = choose_tile(net, (args.size, args.size), int(args.budget * GIB)) or args.size
    before = current_rss()
    start = time.perf_counter()
    grid = tiled_score_grid(net, pixels, mean=loaded.mean, std=loaded.std, tile=tile)
    seconds = time.perf_counter() - start
    return {
        "size": args.size,
        "tile": tile,
        "budget": args.budget,
        "grid": list(grid.shape),
        "seconds": seconds,
        "rss_before": before,
        "peak_rss": peak_rss(),
    }


def child_untiled(args: argparse.Namespace) -> dict[str, Any]:
    net, loaded = default_net()
    pixels = synthetic_image(args.size)
    before = current_rss()
    start = time.perf_counter()
    with torch.inference_mode():
        x = normalize(pixels, loaded.mean, loaded.std)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        grid = net(x)
    seconds = time.perf_counter() - start
    return {
        "size": args.size,
        "channels_last": args.channels_last,
        "grid": list(grid.shape),
        "seconds": seconds,
        "rss_before": before,
        "peak_rss": peak_rss(),
        "estimate": estimate_activation_bytes(net, (args.size, args.size)),
    }


def child_check(args: argparse.Namespace) -> dict[str, Any]:
    """Tiled against untiled on the shipped weights and a real photo mosaic."""
    net, loaded = default_net()
    pixels = synthetic_image(args.size)
    with torch.inference_mode():
        reference = net(normalize(pixels, loaded.mean, loaded.std))
    rows = []
    for tile in args.check_tiles:
        for channels_last in (False, True):
            grid = tiled_score_grid(
                net,
                pixels,
                mean=loaded.mean,
                std=loaded.std,
                tile=tile,
                channels_last=channels_last,
            )
            plan = plan_tiles(net, (args.size, args.size), tile)
            difference = (grid - reference).abs().max().item()
            rows.append(
                {
                    "tile": tile,
                    "channels_last": channels_last,
                    "tiles": len(plan.tiles),
                    "max_abs_diff": difference,
                    "of_range": difference / (reference.max() - reference.min()).item(),
                    "top1_agree": (grid.argmax(1) == reference.argmax(1)).float().mean().item(),
                }
            )
    return {"size": args.size, "rows": rows}


CHILDREN = {
    "baseline": child_baseline,
    "tiled": child_tiled,
    "untiled": child_untiled,
    "check": child_check,
}


MODULE = "benchmarks.studies.huge_images"
"""This study, run again as a module for each measurement (from the repository root)."""


def run_child(kind: str, *options: str) -> dict[str, Any]:
    command = [sys.executable, "-m", MODULE, "--child", kind, *options]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- Parent --------------------------------------------------------------------------------------


def table_row(label: str, row: dict[str, Any], baseline: int) -> str:
    estimate = f"{row['estimate'] / GIB:.2f} GiB" if "estimate" in row else ""
    return (
        f"| {label} | {row['seconds']:.1f} | {row['peak_rss'] / GIB:.2f} GiB "
        f"| {row['rss_before'] / GIB:.2f} GiB | {(row['peak_rss'] - baseline) / GIB:.2f} GiB "
        f"| {estimate} |"
    )


def plans(net: ConvolutionalizedNet, size: int, tiles: list[int]) -> list[dict[str, Any]]:
    field = receptive_field(net, (size, size))
    rows = []
    for tile in tiles:
        plan = plan_tiles(net, (size, size), tile, field=field)
        rows.append(
            {
                "tile": tile,
                "tiles": len(plan.tiles),
                "tile_size": list(plan.tile_size),
                "overhead": plan.overhead,
                "estimate": estimate_activation_bytes(net, plan.tile_size),
            }
        )
    return rows


def print_plans(size: int, tiles: list[int]) -> list[dict[str, Any]]:
    """Prints the default model's geometry at ``size`` and a plan per tile; returns the plans."""
    net, _ = default_net()
    field = receptive_field(net, (size, size))
    rows, cols = grid_shape((size, size), net.window, net.stride)
    print(f"default model: window {net.window}, stride {net.stride}, receptive field {field}")
    print(f"minimum tile: {minimum_tile(net, (size, size))} px; grid at {size}: {rows}x{cols}")
    print(f"full grid: {grid_bytes(net, (size, size), torch.float32) / GIB:.3f} GiB float32")
    print(f"torch threads: {torch.get_num_threads()}\n")
    planned = plans(net, size, tiles)
    print(
        f"| tile | tiles | tile size | overlap overhead (area) | estimate x{MEMORY_SAFETY_FACTOR} |"
    )
    print("|---|---|---|---|---|")
    for row in planned:
        print(
            f"| {row['tile']} | {row['tiles']} | {row['tile_size'][1]}x{row['tile_size'][0]} "
            f"| {row['overhead']:.2f} | {row['estimate'] * MEMORY_SAFETY_FACTOR / GIB:.2f} GiB |"
        )
    return planned


def memory_runs(args: argparse.Namespace, baseline: int) -> dict[str, list[dict[str, Any]]]:
    """Every untiled and tiled run, one child process each, printed as a table."""
    print("\n| run | wall s | peak RSS | RSS before run | increment over baseline | estimate |")
    print("|---|---|---|---|---|---|")
    results: dict[str, list[dict[str, Any]]] = {"untiled": [], "tiled": []}
    for untiled in args.untiled:
        for channels_last in (False, True):
            options = ["--size", str(untiled)] + (["--channels-last"] if channels_last else [])
            row = run_child("untiled", *options)
            results["untiled"].append(row)
            layout = "channels_last" if channels_last else "NCHW"
            label = f"untiled {untiled}x{untiled} ({layout})"
            print(table_row(label, row, baseline), flush=True)
    runs = [(["--tile", str(tile)], f"tile {tile}") for tile in args.tiles]
    runs += [(["--budget", str(b)], f"--memory-budget {b} GiB") for b in args.budgets]
    for options, label in runs:
        row = run_child("tiled", "--size", str(args.size), *options)
        results["tiled"].append(row)
        if row["budget"] is not None:
            label += f" -> tile {row['tile']}"
        print(table_row(f"tiled {args.size}x{args.size}, {label}", row, baseline), flush=True)
    return results


def exactness_check(size: int, tiles: list[int]) -> dict[str, Any]:
    """Tiled against untiled on the shipped weights (a child process), printed as a table."""
    check = run_child("check", "--size", str(size), "--check-tiles", *map(str, tiles))
    print(f"\ntiled vs untiled, shipped weights, {size}px photo mosaic:")
    print("| tile | layout | tiles | max abs logit diff | of logit range | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for row in check["rows"]:
        layout = "channels_last" if row["channels_last"] else "NCHW"
        print(
            f"| {row['tile']} | {layout} | {row['tiles']} | {row['max_abs_diff']:.2e} "
            f"| {row['of_range']:.2e} | {row['top1_agree']:.0%} |"
        )
    return check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--tile", type=int, default=4096)
    parser.add_argument("--tiles", type=int, nargs="*", default=[4096, 3072, 2048])
    parser.add_argument("--untiled", type=int, nargs="*", default=[1024, 2048])
    parser.add_argument("--budgets", type=float, nargs="*", default=[2.0], help="GiB")
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--check-size", type=int, default=1504)
    parser.add_argument("--check-tiles", type=int, nargs="*", default=[1280, 1184])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return

    results: dict[str, Any] = {"threads": torch.get_num_threads()}
    results["plans"] = print_plans(args.size, sorted({*args.tiles, 1088, 1536, 3072, 8192}))
    baseline = run_child("baseline")["peak_rss"]
    results["baseline_peak_rss"] = baseline
    print(f"\nbaseline (python + torch + timm + model, nothing run): {baseline / GIB:.2f} GiB")
    results.update(memory_runs(args, baseline))
    if args.check_size:
        results["check"] = exactness_check(args.check_size, args.check_tiles)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
