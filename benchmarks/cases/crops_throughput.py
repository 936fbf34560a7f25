"""Exact windows at full speed: ``--method crops`` against the same windows fed straight in.

The reference is the best one can do with the unmodified classifier: the same windows, cut and
normalized beforehand (outside the timing), fed in batches through a copy of the model with its
batch norms folded into the convolutions, in channels_last, at the batch size that is fastest
(every size in ``--batches`` is timed and the best kept). The library is the command's engine
(``GridEngine(method="crops").score_batch``) on the uint8 resized photo: cutting the windows,
normalizing them and batching them are inside its timing. ``before`` is the path the engine
took before (``score_grid(method="crops")`` on the whole normalized image with the unfolded
model, 8 windows per pass).

Target (issue 23): the engine at >= 80% of the reference's throughput.

Runs alone, from the repository root::

    .venv/bin/python benchmarks/cases/crops_throughput.py            # default model + ResNet-18
    .venv/bin/python benchmarks/cases/crops_throughput.py --quick    # fewer rounds

Timings are interleaved round-robin (one round times every variant once), medians reported,
wall and process CPU seconds; the machine line says the CPU, threads and load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torchvision

from heatmap_cli.convert.folding import fold_classifier_norms
from heatmap_cli.grid import score_grid
from heatmap_cli.grid.crops import PixelWindows, cell_corners
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.models import LoadedModel, load_model
from heatmap_cli.pipeline.engine import GridEngine, GridSettings

STRIDE = 32


def _machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} threads, load average {load:.1f}, torch {torch.__version__}"


def _timed(call: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def _resnet18() -> LoadedModel:
    """A torchvision ResNet-18 with seeded random weights (timing needs no trained ones)."""
    torch.manual_seed(0)
    return LoadedModel(
        name="resnet18 (random weights)",
        model=torchvision.models.resnet18().eval(),
        categories=tuple(str(k) for k in range(1000)),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        input_size=(224, 224),
        interpolation="bilinear",
        source="random",
    )


def _variants(
    loaded: LoadedModel, pixels: np.ndarray, batches: tuple[int, ...]
) -> dict[str, tuple[Callable[[], object], int]]:
    """Every timed variant: name -> (call, windows it evaluates)."""
    window = loaded.input_size
    rows, cols = grid_shape(pixels.shape[:2], window, STRIDE)
    count = rows * cols
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    source = PixelWindows(pixels[None], loaded.mean, loaded.std, torch.device("cpu"))
    windows = source.cut(cell_corners(cells, STRIDE), window)  # cut once, outside the timing
    folded = (fold_classifier_norms(loaded.model) or (loaded.model, 0))[0]
    folded = folded.to(memory_format=torch.channels_last)
    variants: dict[str, tuple[Callable[[], object], int]] = {}
    for batch in batches:

        def straight(batch: int = batch) -> None:
            with torch.inference_mode():
                for start in range(0, count, batch):
                    folded(windows[start : start + batch])

        variants[f"reference, batch {batch}"] = (straight, count)
    engine = GridEngine(loaded, GridSettings(method="crops", stride=STRIDE), figures=None)
    variants[f"engine crops ({engine.exact.batch_size} per pass)"] = (
        lambda: engine.score_batch(pixels[None]),
        count,
    )
    x = normalize(pixels, loaded.mean, loaded.std)
    variants["before: score_grid crops, unfolded, 8 per pass"] = (
        lambda: score_grid(loaded.model, x, STRIDE, "crops", window, batch_size=8),
        count,
    )
    return variants


def run_model(
    loaded: LoadedModel, size: tuple[int, int], rounds: int, batches: tuple[int, ...]
) -> None:
    """Times every variant for one model on a random photo of ``size``; prints a table."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    variants = _variants(loaded, pixels, batches)
    for call, _ in variants.values():
        call()  # warm-up: oneDNN primitives, lazy builds
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (call, _) in variants.items():
            wall, cpu = _timed(call)
            walls[name].append(wall)
            cpus[name].append(cpu)
    rows = {
        name: (
            statistics.median(walls[name]) / count * 1000,
            statistics.median(cpus[name]) / count * 1000,
        )
        for name, (_, count) in variants.items()
    }
    reference = min(rows[name][0] for name in rows if name.startswith("reference"))
    print(
        f"\n{loaded.name}, {size[1]}x{size[0]} input, stride {STRIDE}, "
        f"{next(iter(variants.values()))[1]} windows, {rounds} rounds"
    )
    print("| variant | ms/window (wall) | CPU ms/window | throughput vs best reference |")
    print("|---|---|---|---|")
    for name, (wall, cpu) in rows.items():
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {reference / wall:.0%} |")


def main() -> None:
    """Parses the options and runs both models."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--batches", default="4,8,16,32,64", help="reference batch sizes")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    batches = tuple(int(b) for b in args.batches.split(","))
    print(_machine())
    run_model(load_model(), (384, 544), rounds, batches)
    run_model(_resnet18(), (512, 512), rounds, batches)


if __name__ == "__main__":
    main()
