"""Which torch.export programs convert: ResNet-18, MobileNetV3-Small, EfficientNet-B0.

Each torchvision model (random weights, 3 classes) is exported at batch 1 and 64 x 64 pixels,
as ``torch.export.export`` gives it (the training IR: ``aten.conv2d``, ``aten.linear``...) and
after ``run_decompositions()`` (core ATen: ``aten.convolution``, ``aten.addmm``...), saved,
and loaded back as ``--model FILE.pt2`` loads it. For each: whether the command's engine
converts it (``dense``) or falls back to ``crops``, the stride it measures, the largest logit
difference from the Python model's own conversion on a 192 x 160 input, and the median time of
the dense pass and of crops (one image, CPU).

Run: .venv/bin/python -m benchmarks.studies.exported_models
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from heatmap_cli.convert.network import convolutionalize
from heatmap_cli.grid import score_grid
from heatmap_cli.models import load_model
from heatmap_cli.pipeline.engine import build_grid_network

MODELS = ("resnet18", "mobilenet_v3_small", "efficientnet_b0")
WINDOW = (64, 64)


def median_seconds(call: Callable[[], object], repeat: int = 5) -> float:
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(name: str, decompose: bool, folder: Path) -> str:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=3).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(1, 3, *WINDOW),))
        if decompose:
            program = program.run_decompositions()
        path = folder / f"{name}-{int(decompose)}.pt2"
        torch.export.save(program, path)
        loaded = load_model(str(path))
        built = build_grid_network(loaded.model, WINDOW, method="auto", stride=None, batch_size=8)
        reference = convolutionalize(model, WINDOW)
    x = torch.randn(1, 3, 192, 160, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        grid = built.network(x) if built.method == "dense" else None
        difference = (grid - reference(x)).abs().max().item() if grid is not None else float("nan")
        dense = median_seconds(lambda: built.network(x)) if grid is not None else float("nan")
        crops = median_seconds(
            lambda: score_grid(loaded.model, x, method="crops", stride=32, input_size=WINDOW), 3
        )
    ir = "core ATen" if decompose else "training IR"
    nodes = len(loaded.model.graph.nodes)
    grid_shape = "x".join(map(str, grid.shape[2:])) if grid is not None else "-"
    return (
        f"| {name} | {ir} | {nodes} | {built.method} | {built.stride} | {grid_shape} | "
        f"{difference:.1e} | {dense:.4f} | {crops:.4f} |"
    )


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # no options; --help
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    print("| model | IR | nodes | method | stride | grid | max abs diff | dense s | crops s |")
    print("|---|---|---:|---|---:|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for name in MODELS:
            for decompose in (False, True):
                print(measure(name, decompose, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
