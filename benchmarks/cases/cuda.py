"""cuda: dense passes on the GPU, float32 against channels_last + bfloat16 autocast.

Dense VGG16 (384), ResNet-50 (512) (random weights) and the default model (384), batch 1 and 16.
Each row's ``% peak`` compares it with the GPU's own ``torch.mm`` rate in its precision
(8192-square float32 and bfloat16 products, measured here); the ``vs crops`` column holds fp32
time / this time. Runs only where ``torch.cuda.is_available()`` (and not with ``--device
cpu``); says it was skipped otherwise.

Run: .venv/bin/python -m benchmarks.cases.cuda [--quick] [--markdown] [--device cuda]
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.support.common import (
    WINDOW,
    MatmulPeak,
    Method,
    convert,
    count_flops,
    log,
    random_torchvision,
    run_interleaved,
)
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report, input_label, timing_row
from heatmap_cli import ConvolutionalizedNet, score_grid
from heatmap_cli.models import load_model

PRECISIONS = {"fp32": "dense fp32", "bf16": "dense channels_last + bf16"}


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times the GPU where there is one; notes why not otherwise."""
    del peak  # the CPU's: every GPU row compares with the GPU's own products
    if options.device == "cpu":
        report.notes.append("cuda: skipped (--device cpu)")
        return
    if not torch.cuda.is_available():
        report.notes.append("cuda: skipped, torch.cuda.is_available() is False on this machine")
        return
    time_dense_on_device(
        torch.device("cuda"), options, report, peak_size=8192, batches=(1, 16), repeat=10
    )


def device_peaks(device: torch.device, size: int) -> dict[str, MatmulPeak]:
    """The device's matmul rate in float32 and bfloat16, five samples each."""
    peaks = {
        "fp32": MatmulPeak(size, device, torch.float32),
        "bf16": MatmulPeak(size, device, torch.bfloat16),
    }
    for device_peak in peaks.values():
        for _ in range(5):
            device_peak.sample()
    return peaks


def time_dense_on_device(
    device: torch.device,
    options: Options,
    report: Report,
    *,
    peak_size: int,
    batches: tuple[int, ...],
    repeat: int,
) -> None:
    """Times dense passes in float32 against channels_last + bfloat16 autocast on ``device``.

    Models, inputs and results stay on the device. (Written for CUDA; ``device`` may be the CPU
    to try the code path.)

    Args:
        device: Where to run.
        options: Command-line choices (time budget).
        report: Receives the rows and a note.
        peak_size: Side of the matmul-peak matrices.
        batches: Batch sizes to time.
        repeat: Timed runs per variant.
    """
    peaks = device_peaks(device, peak_size)
    loaded = load_model()
    models: list[tuple[str, nn.Module, tuple[int, int], tuple[int, int]]] = [
        ("vgg16", random_torchvision("vgg16"), WINDOW, (384, 384)),
        ("resnet50", random_torchvision("resnet50"), WINDOW, (512, 512)),
        (loaded.name, loaded.model, loaded.input_size, (384, 384)),
    ]
    for name, model, window, size in models:
        for batch in batches:
            methods, nets = [], []
            for precision, label in PRECISIONS.items():
                # A copy per variant: channels_last rewrites the shared parameters in place.
                net = convert(copy.deepcopy(model).eval().to(device), window)
                x = torch.randn(batch, 3, *size, device=device)
                if precision == "bf16":
                    net = net.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                call = dense_call(net, x, bf16=precision == "bf16")
                methods.append(
                    Method(
                        label, call, count_flops(call), batch, warmup=2, budget_s=options.budget_s
                    )
                )
                nets.append(net)
            log(f"  {device.type}: {name} batch {batch}")
            run_interleaved(methods, repeat, None, device)
            add_rows(report, device, name, size, peaks, methods, nets)
            del methods, nets
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report.notes.append(
        f"{device.type}: % peak is against the device's own torch.mm rate in the same precision "
        f"(fp32 {peaks['fp32'].median():.0f}, bf16 {peaks['bf16'].median():.0f} GFLOP/s, "
        "with torch's default TF32 setting)"
    )


def add_rows(
    report: Report,
    device: torch.device,
    model: str,
    size: tuple[int, int],
    peaks: dict[str, MatmulPeak],
    methods: list[Method],
    nets: list[ConvolutionalizedNet],
) -> None:
    """A row per precision; the ``vs crops`` column holds fp32 time / this time."""
    reference = methods[0].median_s
    for precision, method, net in zip(PRECISIONS, methods, nets, strict=True):
        rows, cols = net.grid_size(size)
        row = timing_row(
            method,
            peaks[precision],
            case=device.type,
            model=model,
            input_size=input_label(size, method.images),
            grid=f"{rows}x{cols}",
            stride=net.stride,
            reference_s=reference,
            note="vs column: fp32 time / this time",
        )
        report.rows.append(row)


def dense_call(net: nn.Module, x: torch.Tensor, *, bf16: bool) -> Callable[[], torch.Tensor]:
    """A dense ``score_grid`` call, under bfloat16 autocast on ``x``'s device if asked."""

    def call() -> torch.Tensor:
        context = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if bf16
            else contextlib.nullcontext()
        )
        with context:
            return score_grid(net, x, method="dense", input_size=net.window)

    return call


CASE = Case("cuda", "on a GPU: dense fp32 against channels_last + bf16 autocast", run)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
