"""bfloat16 on the CPU (issue 26, item 5): is it worth an opt-in on this machine?

The default model's network as the command runs it (``engine.build_grid_network``: batch norms
folded, channels_last), at ``--size 384`` (a 12-megapixel photo's 384x512 input) and at
``--size 768``, batch 1 and 8, three ways, interleaved round-robin:

* ``float32``: what the command runs;
* ``autocast bf16``: ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the float32
  network (oneDNN picks bf16 kernels where the CPU has them);
* ``bf16 weights``: the network converted to bfloat16, input too.

Each is compared cell by cell with float32 on real photos (the samples, resized): top-1
agreement and the largest probability difference. The CPU's flags say what it can do:
``avx512_bf16`` (bf16 dot products in AVX-512, Zen 4 and Cooper Lake on) and ``amx_bf16``
(Intel's tile units, Sapphire Rapids on). Without ``amx_bf16``, oneDNN runs bf16 convolutions
through AVX-512 BF16 or converts to float32.

Run: .venv/bin/python -m benchmarks.studies.bf16_cpu [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.support.common import SAMPLES
from heatmap_cli.grid.geometry import covered_input
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.models import load_model
from heatmap_cli.pipeline.engine import build_grid_network
from heatmap_cli.pipeline.preprocess import plan_geometry, resize_for_grid


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``), empty where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def inputs(size: int, batch: int, mean: tuple, std: tuple) -> torch.Tensor:
    """``batch`` normalized photos (the samples in turn) resized for ``--size``."""
    photos = [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.jpg"))]
    arrays = []
    for index in range(batch):
        photo = photos[index % len(photos)].resize((4032, 3024), Image.Resampling.BICUBIC)
        geometry = plan_geometry(photo.size[::-1], shorter_side=size, window=(224, 224), stride=32)
        arrays.append(resize_for_grid(photo, geometry.input_size, "bicubic"))
    x = normalize(np.stack(arrays), mean, std, device=torch.device("cpu"), dtype=torch.float32)
    return covered_input(x.contiguous(memory_format=torch.channels_last), (224, 224), 32)


def timed(run: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    flags = cpu_flags()
    print(f"CPU flags: avx512_bf16={'avx512_bf16' in flags} amx_bf16={'amx_bf16' in flags}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()}")
    loaded = load_model()
    built = build_grid_network(
        loaded.model, loaded.input_size, method="auto", stride=None, batch_size=8
    )
    fp32 = built.network.to(memory_format=torch.channels_last)
    bf16 = build_grid_network(
        load_model().model, loaded.input_size, method="auto", stride=None, batch_size=8
    ).network.to(torch.bfloat16, memory_format=torch.channels_last)
    for size, batch in ((384, 1), (384, 8), (768, 1)):
        x = inputs(size, batch, loaded.mean, loaded.std)
        x16 = x.to(torch.bfloat16)
        ways = {
            "float32": lambda x=x: fp32(x),
            "autocast bf16": lambda x=x: _autocast(fp32, x),
            "bf16 weights": lambda x16=x16: bf16(x16),
        }
        with torch.inference_mode():
            reference = fp32(x).float()
            results = {name: run().float() for name, run in ways.items()}
            times: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.repeat):  # round-robin: the same load for each
                for name, run in ways.items():
                    times[name] += timed(run, 1)
        base = statistics.median(times["float32"])
        print(f"\n--size {size}, batch {batch}, input {tuple(x.shape[2:])}")
        for name in ways:
            median = statistics.median(times[name])
            agree, worst = _agreement(reference, results[name])
            print(
                f"  {name:14s} {median * 1000:8.1f} ms  {base / median:5.2f}x float32  "
                f"top-1 agreement {agree:6.2%}  max |dp| {worst:.4f}"
            )
    print(f"\nload at the end {os.getloadavg()}")


def _autocast(network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return network(x)


def _agreement(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Per-cell top-1 agreement, and the largest softmax probability difference."""
    agree = (reference.argmax(1) == other.argmax(1)).float().mean().item()
    worst = (reference.softmax(1) - other.softmax(1)).abs().max().item()
    return agree, worst


if __name__ == "__main__":
    sys.exit(main())
