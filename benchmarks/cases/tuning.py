"""tuning: what moves the dense number, each setting timed round-robin next to the library's call.

VGG16 (random weights) dense at 384, one image, stride 32, under settings that could change its
speed: channels_last, ``no_grad`` or autograd instead of ``inference_mode``, oneDNN off, one
thread, a batch of 4, the head as a convolution (``matmul_max_cells=-1``, the library's form
before), bfloat16 autocast, ``torch.compile``. Then the default model at batch 1 and 8, step by
step from the library's call to the command's network (``engine.build_grid_network``: batch
norms folded, channels_last) and to ``--compile``. Not in ``run.py --quick`` unless named.

Run: .venv/bin/python -m benchmarks.cases.tuning [--quick] [--markdown] [--repeat N]
"""

from __future__ import annotations

import copy
import functools
import sys
import time
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
    quiet_warnings,
    random_torchvision,
    run_interleaved,
)
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report, input_label, timing_row
from heatmap_cli import score_grid
from heatmap_cli.errors import first_line
from heatmap_cli.models import load_model
from heatmap_cli.pipeline.engine import build_grid_network

Call = Callable[[], torch.Tensor]


def dense(net: nn.Module, x: torch.Tensor) -> Call:
    """The library's dense call: ``score_grid`` (under ``inference_mode``) on ``net`` and ``x``."""
    return functools.partial(score_grid, net, x, method="dense", input_size=WINDOW)


def compiled_call(net: nn.Module, x: torch.Tensor) -> tuple[Call | None, str]:
    """``net`` through ``torch.compile`` with inductor's freezing, as ``--compile`` runs it.

    Freezing makes the weights constants that inductor prepacks for oneDNN and fuses with the
    operations around them. The network is called directly (``score_grid`` would try to convert
    the compiled wrapper again); it compiles here, on the first call.

    Returns:
        The call, or None if compiling failed; and a note: how long compiling took, or why it
        failed (no C++ compiler, an unsupported platform...).
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(net, dynamic=False)

    def call() -> torch.Tensor:
        with torch.inference_mode(), inductor_config.patch(freezing=True):
            return compiled(x)

    start = time.perf_counter()
    try:
        with quiet_warnings():
            call()
    except Exception as error:
        return None, f"failed: {type(error).__name__}: {first_line(error)[:80]}"
    return call, f"compiling took {time.perf_counter() - start:.0f} s"


def vgg16_settings(
    net: nn.Module, net_cl: nn.Module, conv_head: nn.Module, x: torch.Tensor, x4: torch.Tensor
) -> list[tuple[str, Call, int]]:
    """Every VGG16 setting but ``torch.compile``, the library's call first.

    Args:
        net: The converted VGG16.
        net_cl: The same in channels_last, with weights of its own.
        conv_head: ``net``'s model converted with ``matmul_max_cells=-1``.
        x: ``(1, 3, 384, 384)`` input.
        x4: ``(4, 3, 384, 384)`` input.

    Returns:
        ``(label, call, images per call)`` per setting.
    """
    threads = torch.get_num_threads()
    library = dense(net, x)

    def no_grad() -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    def plain() -> torch.Tensor:  # autograd recording: what a forgotten no_grad costs
        return net(x).detach()

    def onednn_off() -> torch.Tensor:
        with quiet_warnings(), torch.backends.mkldnn.flags(enabled=False):
            return library()

    def one_thread() -> torch.Tensor:
        torch.set_num_threads(1)
        try:
            return library()
        finally:
            torch.set_num_threads(threads)

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return library()

    x_cl = x.contiguous(memory_format=torch.channels_last)
    return [
        ("dense (library: score_grid, contiguous, inference_mode)", library, 1),
        ("channels_last model and input", dense(net_cl, x_cl), 1),
        ("torch.no_grad instead of inference_mode", no_grad, 1),
        ("autograd on (no no_grad/inference_mode)", plain, 1),
        ("oneDNN off (torch.backends.mkldnn.flags(enabled=False))", onednn_off, 1),
        (f"1 thread instead of {threads}", one_thread, 1),
        ("batch of 4 images", dense(net, x4), 4),
        ("head Linears as a convolution (before unfold + matmul)", dense(conv_head, x), 1),
        ("bf16 autocast (not fp32: % of the fp32 peak)", bf16, 1),
    ]


def tune_vgg16(options: Options, peak: MatmulPeak, report: Report) -> None:
    """VGG16 dense at 384 under every setting, round-robin; the notes say what else was seen."""
    model = random_torchvision("vgg16")
    net = convert(model)
    conv_head = convert(model, matmul_max_cells=-1)  # the same weights, the head as F.conv2d
    # channels_last converts parameters in place, and a converted network shares them with its
    # model: give that setting a model of its own (the same seeded weights).
    net_cl = convert(random_torchvision("vgg16")).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 384, 384, generator=generator)
    x4 = torch.randn(4, 3, 384, 384, generator=generator)
    settings = vgg16_settings(net, net_cl, conv_head, x, x4)
    with torch.inference_mode():
        reference, convolution = net(x), conv_head(x)
    difference = (reference - convolution).abs().max().item() / reference.abs().max().item()
    report.notes.append(
        f"tuning: the library's unfold + matmul head differs from the conv head by "
        f"{difference:.1e} (max abs difference / max abs logit)"
    )
    compiled, compile_note = compiled_call(net, x)
    report.notes.append(f"tuning: torch.compile(net) with inductor freezing: {compile_note}")
    if compiled is not None:
        settings.append(("torch.compile, inductor freezing (called directly)", compiled, 1))
    cold_s = first_call_seconds()
    flops = count_flops(settings[0][1])
    methods = [
        Method(label, call, flops * images, images=images, warmup=2, budget_s=options.budget_s)
        for label, call, images in settings
    ]
    log(f"  tuning: vgg16, {len(methods)} variants")
    run_interleaved(methods, options.repeat, peak, torch.device("cpu"))
    base = methods[0].median_s
    add_rows(report, peak, methods, "vgg16", lambda m: base * m.images / m.median_s)
    report.notes.append(
        f"tuning: the first dense call on a new network and input shape (416x416) took "
        f"{cold_s:.2f} s, against {base * (416 / 384) ** 2:.2f} s expected from the steady 384 "
        "time: the difference is first-call cost (oneDNN primitive creation); every case warms "
        "up before it is timed"
    )


def first_call_seconds() -> float:
    """Seconds of the very first dense call of a new VGG16 on a new shape (416x416)."""
    cold_net = convert(random_torchvision("vgg16"))
    x = torch.randn(1, 3, 416, 416)
    start = time.perf_counter()
    dense(cold_net, x)()
    return time.perf_counter() - start


def add_rows(
    report: Report,
    peak: MatmulPeak,
    methods: list[Method],
    model: str,
    against_library: Callable[[Method], float],
) -> None:
    """Appends a row per timed method, noting its speed against the library's call."""
    for method in methods:
        row = timing_row(
            method,
            peak,
            case=CASE.name,
            model=model,
            input_size=input_label((384, 384), method.images),
            grid="6x6",
            stride=32,
        )
        row.note = f"{against_library(method):.2f}x the library's img/s"
        report.rows.append(row)


def tune_default_model(options: Options, peak: MatmulPeak, report: Report) -> None:
    """The default model's dense pass at 384, batch 1 and 8, step by step to the command's.

    Settings: the library's ``score_grid`` call (contiguous); channels_last (depthwise
    convolutions, most of EfficientNet-Lite0's layers, are much faster in oneDNN in that
    layout); the command's network (``build_grid_network``: batch norms folded into the
    convolutions) in channels_last, as ``GridEngine`` runs it; and that through
    ``torch.compile`` with inductor's freezing: what ``heatmap --compile`` runs, compiled once
    per input shape. ``score_grid`` itself leaves the caller's layout and layers as they are.
    """
    loaded = load_model()
    net = convert(loaded.model, loaded.input_size)
    # channels_last rewrites parameters in place: models of their own for those settings.
    net_cl = convert(copy.deepcopy(loaded.model), loaded.input_size)
    net_cl = net_cl.to(memory_format=torch.channels_last)
    built = build_grid_network(
        copy.deepcopy(loaded.model), loaded.input_size, method="dense", stride=None, batch_size=8
    )
    command_net = built.network.to(memory_format=torch.channels_last)
    folded = f"dense, channels_last + {built.folded_norms} batch norms folded (the command's)"
    generator = torch.Generator().manual_seed(0)
    methods = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 384, 384, generator=generator)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        calls = [
            ("dense (library)", dense(net, x)),
            ("dense, channels_last model and input", dense(net_cl, x_cl)),
            (folded, dense(command_net, x_cl)),
        ]
        compiled, compile_note = compiled_call(command_net, x_cl)
        report.notes.append(f"tuning: {loaded.name} batch {batch}: {compile_note}")
        if compiled is not None:
            calls.append(("dense, the command's + torch.compile (--compile)", compiled))
        methods += [
            Method(label, call, count_flops(call), images=batch, budget_s=options.budget_s)
            for label, call in calls
        ]
    log(f"  tuning: {loaded.name}, {len(methods)} variants")
    run_interleaved(methods, options.repeat, peak, torch.device("cpu"))
    library = {m.images: m.median_s for m in methods if m.label == "dense (library)"}
    add_rows(report, peak, methods, loaded.name, lambda m: library[m.images] / m.median_s)


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times VGG16's settings, then the default model's steps."""
    tune_vgg16(options, peak, report)
    tune_default_model(options, peak, report)


CASE = Case(
    "tuning",
    "settings that move the dense number: VGG16 at 384, the default model up to the command's",
    run,
    in_quick=False,
)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
