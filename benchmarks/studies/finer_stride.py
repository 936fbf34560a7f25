"""Finer output stride: shift-and-stitch against the dilated ("a trous") network.

VGG16 (torchvision architecture, random weights: the cost does not depend on them) at 384x384,
batch 1, fp32 on the CPU, under ``torch.inference_mode``. For every stride, the methods run
interleaved in one process, each round in a rotated order, after one warm-up call each (oneDNN
builds its kernels on the first call for a shape); the table shows the median over rounds and
the median of the per-round ratio stitch / dilate, which is robust to a machine whose load
drifts during the run. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``.

    .venv/bin/python -m benchmarks.studies.finer_stride [--reps 5] [--strides 16 8]
        [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.support.common import count_flops, machine_description, random_torchvision
from heatmap_cli import ConvolutionalizedNet, convolutionalize
from heatmap_cli.grid.dilate import DilatedNet, dilate
from heatmap_cli.grid.stitch import shift_and_stitch


def rotated_rounds(
    methods: dict[str, Callable[[], torch.Tensor]], reps: int
) -> dict[str, list[float]]:
    """Seconds of every method in each of ``reps`` rounds, each round in a rotated order."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for round_ in range(reps):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    return times


def time_stride(net: ConvolutionalizedNet, x: torch.Tensor, stride: int, reps: int) -> list[float]:
    """Prints the stitch and dilate rows of one stride; returns the dense times of its rounds."""
    dilated = dilate(net, stride)
    if not isinstance(dilated, DilatedNet):
        raise SystemExit(f"the model could not be dilated for stride {stride}")
    methods: dict[str, Callable[[], torch.Tensor]] = {
        "stitch": lambda: shift_and_stitch(net, x, stride, batch_size=1),
        "dilate": lambda: dilated(x),
        "dense": lambda: net(x),
    }
    flops = {name: count_flops(fn, first_call=True) for name, fn in methods.items()}
    with torch.inference_mode():
        grids = {name: fn() for name, fn in methods.items()}  # warm-up, and a check
        assert grids["stitch"].shape == grids["dilate"].shape
        times = rotated_rounds(methods, reps)
    for name in ("stitch", "dilate"):
        print(
            f"{name:<12} {stride:>6} {'x'.join(map(str, grids[name].shape[2:])):>7} "
            f"{flops[name] / 1e9:>8.1f} {statistics.median(times[name]):>9.3f} "
            f"{min(times[name]):>7.3f}"
        )
    ratios = [s / d for s, d in zip(times["stitch"], times["dilate"], strict=True)]
    print(
        f"{'':<12} {'':>6} stitch/dilate: time {statistics.median(ratios):.2f}x (median of "
        f"{reps} paired rounds, {min(ratios):.2f}-{max(ratios):.2f}); "
        f"FLOPs {flops['stitch'] / flops['dilate']:.2f}x"
    )
    return times["dense"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16", help="torchvision model name")
    parser.add_argument("--size", type=int, default=384, help="square input side in pixels")
    parser.add_argument("--strides", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--reps", type=int, default=5, help="timed rounds per stride")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC weights and input")
    parser.add_argument("--no-mkldnn", action="store_true", help="disable oneDNN convolutions")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    model = random_torchvision(args.model).requires_grad_(False)
    x = torch.randn(1, 3, args.size, args.size)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    net = convolutionalize(model)

    print(
        f"{args.model} {args.size}x{args.size}, batch 1, fp32, "
        f"{'channels_last' if args.channels_last else 'contiguous (NCHW)'}; {machine_description()}"
    )
    rows, cols = net.grid_size((args.size, args.size))
    print(f"native stride {net.stride}; dense grid {(rows, cols)}")
    header = f"{'method':<12} {'stride':>6} {'grid':>7} {'GFLOP':>8} {'median s':>9} {'min s':>7}"
    print(header)
    print("-" * len(header))
    dense_flops = count_flops(lambda: net(x), first_call=True)
    dense_times = [t for stride in args.strides for t in time_stride(net, x, stride, args.reps)]
    print(
        f"{'dense':<12} {net.stride:>6} {f'{rows}x{cols}':>7} {dense_flops / 1e9:>8.1f} "
        f"{statistics.median(dense_times):>9.3f} {min(dense_times):>7.3f}"
    )


if __name__ == "__main__":
    main()
