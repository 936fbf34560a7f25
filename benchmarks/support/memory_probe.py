"""Peak memory of one dense pass, in a process of its own (the ``memory`` case runs one per size).

A process's peak resident memory only goes up, so every size needs a fresh interpreter. Building
the model and converting it can briefly need more memory than the loaded model holds, which would
hide the pass, so the kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``,
Linux >= 4.0) once the model is loaded. The baseline is then the resident memory with the
converted model and the input in place (``VmRSS``, read just before the pass); the pass costs the
peak after it minus that baseline.

The peak is read as ``VmHWM`` from ``/proc/self/status``, the same high-water mark that
``getrusage(RUSAGE_SELF).ru_maxrss`` reports for a process started from a shell. In a child that
a big process forks and executes, ``ru_maxrss`` also includes the parent's peak at the time of
the fork (Linux keeps the larger of the two in the signal struct across ``exec``), and the
benchmark harness holding a few GB of models would then hide the pass; both are reported.

Usage: ``python -m benchmarks.support.memory_probe --model vgg16 --size 1024`` (from the repository
root); prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from benchmarks.support.common import WINDOW, convert, peak_rss_mib, random_torchvision, status_mib
from heatmap_cli import score_grid


def largest_conv_mib(builder: Callable[[], nn.Module], size: int) -> float:
    """Input plus output of the largest convolution of the converted model, in MiB.

    A dense pass must hold at least these two tensors at once, so this is a lower bound on its
    memory. Computed on the meta device: shapes only, nothing allocated.

    Args:
        builder: Builds the classifier (called under the meta device).
        size: Side of the square input.

    Returns:
        The largest ``(input + output) * 4 bytes`` over the ``nn.Conv2d`` modules, in MiB. (The
        head convolutions of a converted network are ``F.conv2d`` calls, not modules; their
        tensors are far smaller than those of the first layers.)
    """
    with torch.device("meta"):
        net = convert(builder().eval())
    largest = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal largest
        largest = max(largest, inputs[0].numel() + output.numel())

    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(hook)
    with torch.inference_mode():
        net(torch.empty(1, 3, size, size, device="meta"))
    return largest * 4 / 2**20


def reset_peak_rss() -> bool:
    """Resets this process's peak resident memory to its current value; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
            file.write("5")
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vgg16", choices=["vgg16"])
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args(argv)

    net = convert(random_torchvision(args.model))  # memory does not need trained weights
    x = torch.randn(1, 3, args.size, args.size)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    reset = reset_peak_rss()
    baseline = status_mib("VmRSS")  # the converted model and the input
    peak_before = status_mib("VmHWM")
    start = time.perf_counter()
    grid = score_grid(net, x, method="dense", input_size=WINDOW)
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    result = {
        "model": args.model,
        "size": args.size,
        "grid": list(grid.shape[2:]),
        "baseline_mib": baseline,
        "peak_before_mib": peak_before,
        "peak_reset": reset,
        "ru_maxrss_mib": peak_rss_mib(),
        "peak_mib": peak,
        "extra_mib": peak - baseline,
        "largest_layer_mib": largest_conv_mib(torchvision.models.vgg16, args.size),
        "seconds": seconds,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
