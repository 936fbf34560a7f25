"""vgg16-384: VGG16 on a 384x384 input, one dense pass against a forward pass per window.

VGG16 (torchvision architecture, random weights: timing does not need trained ones). Stride 32:
``dense`` against ``crops``, and ``dense, head as a convolution (before)``: the same model
converted with ``matmul_max_cells=-1``, which computes the converted head as ``F.conv2d`` at
every grid size, the library's form before small head grids became ``F.unfold`` + one matmul.
Stride 16: the finer-stride methods against crops. Checks the targets of issue 5.

Run: .venv/bin/python -m benchmarks.cases.vgg16_384 [--quick] [--markdown] [--repeat N]
"""

from __future__ import annotations

import sys

from benchmarks.support.common import MatmulPeak, convert, random_torchvision
from benchmarks.support.grid_case import GridCase, run_grid_case
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report

# Targets from GitHub issue 5 (CPU, float32, as this harness measures them).
TARGET_SPEEDUP = 10.0
TARGET_PEAK_FRACTION = 0.75


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times the case and records the issue's targets."""
    model = random_torchvision("vgg16")
    net = convert(model)
    variants = {"head as a convolution (before)": convert(model, matmul_max_cells=-1)}
    strides = (net.stride, net.stride // 2)
    case = GridCase("vgg16-384", "vgg16", net, (384, 384), strides, variants=variants)
    run_grid_case(case, options, peak, report)
    check_targets(report)


def check_targets(report: Report) -> None:
    """Records the issue's targets for VGG16 at 384, stride 32, and how each variant compares."""
    rows = {r.method: r for r in report.rows if r.case == CASE.name and r.stride == 32}
    dense, crops = rows.get("dense"), rows.get("crops")
    if dense is None or crops is None:
        return
    speedup = crops.median_s / dense.median_s
    report.checks.append(
        (
            f"VGG16 @384 stride 32: dense >= {TARGET_SPEEDUP:.0f}x faster than crops",
            f"{speedup:.1f}x (work ratio {crops.gflop / dense.gflop:.1f}: "
            f"{crops.gflop:.1f} / {dense.gflop:.1f} GFLOP)",
            speedup >= TARGET_SPEEDUP,
        )
    )
    report.checks.append(
        (
            f"VGG16 @384 stride 32: dense >= {TARGET_PEAK_FRACTION:.0%} of the fp32 matmul peak",
            f"{dense.peak_fraction:.0%} ({dense.gflops:.1f} GFLOP/s)",
            dense.peak_fraction >= TARGET_PEAK_FRACTION,
        )
    )
    for method, row in rows.items():
        if method.startswith("dense, "):
            report.notes.append(
                f"{CASE.name} stride 32, {method.removeprefix('dense, ')}: "
                f"{crops.median_s / row.median_s:.1f}x faster than crops, "
                f"{row.peak_fraction:.0%} of the matmul peak"
            )


CASE = Case("vgg16-384", "VGG16 at 384: dense and finer strides against crops (issue 5)", run)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
