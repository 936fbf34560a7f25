"""Benchmark harness for heatmap-cli: how much faster one dense pass is than a forward per window.

Usage::

    .venv/bin/python benchmarks/run.py                 # full run (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick         # about 2 minutes, for iteration
    .venv/bin/python benchmarks/run.py --cases vgg16-384 help --repeat 9 --markdown

Every timed call goes through the library (``score_grid``, the image reading and preprocessing
functions, the pipeline), on a network converted once beforehand, as the CLI does. See
``benchmarks/README.md`` for what each column means and how FLOPs are counted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from _common import (
    MEMORY_HEADERS,
    TIMING_HEADERS,
    MatmulPeak,
    MemoryRow,
    Method,
    TimingRow,
    count_flops,
    format_table,
    machine_description,
    memory_cells,
    run_interleaved,
    timing_cells,
)
from heatmap_cli.lean import folded_copy
from PIL import Image
from torch import nn

import heatmap_cli.surgery as surgery
from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.grid import METHODS
from heatmap_cli.io import find_images, read_image
from heatmap_cli.models import LoadedModel, load_model
from heatmap_cli.preprocess import normalize, plan_geometry, resize_for_grid
from heatmap_cli.surgery import ConvolutionalizedNet

# Run as a script, so ``_common`` comes from this folder (sys.path[0]).
_ROOT = Path(__file__).resolve().parent.parent
WINDOW = (224, 224)
CASES = (
    "vgg16-384",
    "lite0-384",
    "resnet50-512",
    "folder",
    "memory",
    "help",
    "tuning",
    "cuda",
)
# Targets from GitHub issue 5 (CPU, float32, as this harness measures them).
TARGET_SPEEDUP = 10.0
TARGET_PEAK_FRACTION = 0.75
TARGET_HELP_S = 0.5
# A crops run above this much work gets no untimed warm-up run: at several seconds per run,
# first-call costs (oneDNN primitive creation) are well under one percent of it.
_NO_WARMUP_GFLOP = 200.0


@dataclass(frozen=True)
class Options:
    """Command-line choices.

    Attributes:
        quick: Fewer runs, smaller time budgets, no 2048 memory case.
        repeat: Timed runs per method (slow methods stop earlier, see ``budget_s``).
        markdown: Print markdown tables.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (for the ``cuda`` case).
        budget_s: Seconds after which a slow method gets no further timed run.
        peak_size: Side of the square matrices of the matmul peak.
        memory_sizes: Input sides for the memory case.
    """

    quick: bool
    repeat: int
    markdown: bool
    device: str
    budget_s: float
    peak_size: int
    memory_sizes: tuple[int, ...]


@dataclass
class Report:
    """Everything the run measured, printed at the end.

    Attributes:
        rows: Timing rows in the order measured.
        memory: Memory rows.
        cli: ``(what, seconds or None, remark)`` per CLI start-up check.
        notes: Skipped cases and other remarks.
        checks: ``(target, measured, met)`` per target of the issue.
        peak_samples: Every matmul-peak sample of the run, GFLOP/s.
        big_peak: ``(n, GFLOP/s)`` of a larger ``n x n`` product, measured once at the start.
        load: The 1-minute load average at the start and at the end of the run.
    """

    rows: list[TimingRow] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    cli: list[tuple[str, float | None, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, bool]] = field(default_factory=list)
    peak_samples: list[float] = field(default_factory=list)
    big_peak: tuple[int, float] | None = None
    load: list[float] = field(default_factory=list)


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silences the library's one-time warnings (e.g. squeeze-and-excitation notices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def random_torchvision(name: str) -> nn.Module:
    """A torchvision classifier with random weights (timing does not need trained ones)."""
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def method_available(method: str) -> bool:
    """Whether ``score_grid`` knows ``method`` in this tree (finer strides arrive separately)."""
    return method in METHODS


# ---------------------------------------------------------------------------------------------
# Grid cases: dense against crops (and the finer-stride methods)
# ---------------------------------------------------------------------------------------------


@dataclass
class GridCase:
    """A model at one input size, timed with several methods at one or more strides.

    Attributes:
        name: Case name.
        model_name: Shown in the table.
        net: The converted network (converted once, outside the timings).
        size: ``(H, W)`` input.
        strides: Strides to time; the native one with ``dense``, finer ones with ``dilate`` and
            ``stitch``; ``crops`` at each.
        batch: Images per call.
        device: Where it runs.
        variants: Extra ``dense`` rows at the native stride: label -> a context manager
            factory entered around the ``score_grid`` call (the library set another way, e.g.
            a form it used before, timed next to it).
    """

    name: str
    model_name: str
    net: ConvolutionalizedNet
    size: tuple[int, int]
    strides: tuple[int, ...]
    batch: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    variants: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = field(
        default_factory=dict
    )


def grid_methods(case: GridCase, stride: int, x: torch.Tensor, options: Options) -> list[Method]:
    """The methods of one stride of a case, with their FLOPs counted (and warmed up)."""
    net = case.net
    classifier = net.source_model
    assert classifier is not None
    methods: list[Method] = []
    labels = ["dense"] if stride == net.stride else ["dilate", "stitch"]
    for label in [*labels, "crops"]:
        if not method_available(label):
            continue

        def call(label: str = label) -> torch.Tensor:
            return score_grid(net, x, stride=stride, method=label, input_size=net.window)

        if label == "crops":
            rows, cols = crops_grid_shape(case.size, net.window, stride)
            one_window = x[:1, :, : net.window[0], : net.window[1]]

            def one(one_window: torch.Tensor = one_window) -> None:
                with torch.inference_mode():
                    classifier(one_window)

            flops = count_flops(one, first_call=True) * rows * cols * x.shape[0]
            warmup = 0 if flops / 1e9 > _NO_WARMUP_GFLOP else 1
        else:
            flops = count_flops(call)  # two calls: both warm-up
            warmup = 0
        methods.append(
            Method(label, call, flops, images=x.shape[0], warmup=warmup, budget_s=options.budget_s)
        )
        if label == "dense":
            for name, context in case.variants.items():

                def variant(
                    context: Callable[[], contextlib.AbstractContextManager[None]] = context,
                    dense: Callable[[], torch.Tensor] = call,
                ) -> torch.Tensor:
                    with context():
                        return dense()

                count = count_flops(variant)
                methods.append(Method(f"dense, {name}", variant, count, budget_s=options.budget_s))
    return methods


def crops_grid_shape(
    size: tuple[int, int], window: tuple[int, int], stride: int
) -> tuple[int, int]:
    """``(rows, cols)`` of windows at ``stride`` in an input of ``size``."""
    return (size[0] - window[0]) // stride + 1, (size[1] - window[1]) // stride + 1


def run_grid_case(case: GridCase, options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times every method of a case, stride by stride, and appends the rows.

    ``vs crops`` compares each method with ``crops`` at the same stride. In ``--quick``, a
    finer-stride crops run that would take longer than the time budget is not run; its time is
    extrapolated from the native-stride crops (crops time is proportional to the number of
    windows) and its row says so.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(case.batch, 3, *case.size, generator=generator).to(case.device)
    native = case.net.stride
    crops_s_per_window: float | None = None
    for stride in case.strides:
        wanted = ["dense"] if stride == native else ["dilate", "stitch"]
        missing = [m for m in wanted if not method_available(m)]
        if missing:
            report.notes.append(
                f"{case.name} stride {stride}: {', '.join(missing)} skipped, score_grid has no "
                f"such method in this tree yet"
            )
        if len(missing) == len(wanted):
            continue
        rows, cols = crops_grid_shape(case.size, case.net.window, stride)
        methods = grid_methods(case, stride, x, options)
        crops = methods[-1]
        estimate_s: float | None = None
        if options.quick and stride != native and crops_s_per_window is not None:
            estimate_s = crops_s_per_window * rows * cols
            if estimate_s > options.budget_s:
                methods.remove(crops)
                crops.times = [estimate_s]
            else:
                estimate_s = None
        log(f"  {case.name} stride {stride}: {', '.join(m.label for m in methods)}")
        run_interleaved(methods, options.repeat, peak, case.device)
        if stride == native:
            crops_s_per_window = crops.median_s / (rows * cols)
        grid = f"{rows}x{cols}"
        for method in methods:
            report.rows.append(timing_row(case, stride, grid, method, peak, crops.median_s))
        if estimate_s is not None:
            row = timing_row(case, stride, grid, crops, peak, crops.median_s)
            row.runs = 0
            row.note = f"time estimated from stride-{native} crops x {rows * cols} windows"
            row.peak_fraction = float("nan")
            report.rows.append(row)


def timing_row(
    case: GridCase,
    stride: int,
    grid: str,
    method: Method,
    peak: MatmulPeak,
    reference_s: float | None,
    note: str = "",
) -> TimingRow:
    """A table row from a timed method."""
    seconds = method.median_s
    gflops = method.flops / seconds / 1e9
    peak_rate = peak.median(method.peak_samples) if method.peak_samples else peak.median()
    batch = f"{case.batch}x" if case.batch > 1 else ""
    return TimingRow(
        case=case.name,
        model=case.model_name,
        input=f"{batch}{case.size[0]}x{case.size[1]}",
        grid=grid,
        stride=stride,
        method=method.label,
        gflop=method.flops / 1e9,
        runs=len(method.times),
        median_s=seconds,
        images_per_s=method.images / seconds,
        gflops=gflops,
        peak_fraction=gflops / peak_rate,
        speedup=(reference_s / seconds) if reference_s else None,
        note=note,
    )


def convert(model: nn.Module, window: tuple[int, int] = WINDOW) -> ConvolutionalizedNet:
    """Converts once, outside every timing, without the library's one-time warnings."""
    with quiet_warnings():
        return convolutionalize(model, window)


def case_vgg16(options: Options, peak: MatmulPeak, report: Report) -> None:
    net = convert(random_torchvision("vgg16"))
    variants = {"head as a convolution (before)": head_as_convolution}
    case = GridCase(
        "vgg16-384", "vgg16", net, (384, 384), (net.stride, net.stride // 2), variants=variants
    )
    run_grid_case(case, options, peak, report)
    check_vgg16_targets(report)


def case_lite0(options: Options, peak: MatmulPeak, report: Report) -> None:
    loaded = load_model()
    net = convert(loaded.model, loaded.input_size)
    case = GridCase("lite0-384", loaded.name, net, (384, 384), (net.stride, net.stride // 2))
    run_grid_case(case, options, peak, report)


def case_resnet50(options: Options, peak: MatmulPeak, report: Report) -> None:
    net = convert(random_torchvision("resnet50"))
    run_grid_case(
        GridCase("resnet50-512", "resnet50", net, (512, 512), (32,)), options, peak, report
    )


def check_vgg16_targets(report: Report) -> None:
    """Records the issue's targets for VGG16 at 384, stride 32."""
    rows = {r.method: r for r in report.rows if r.case == "vgg16-384" and r.stride == 32}
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
            speedup = crops.median_s / row.median_s
            report.notes.append(
                f"vgg16-384 stride 32, {method.removeprefix('dense, ')}: {speedup:.1f}x faster "
                f"than crops, {row.peak_fraction:.0%} of the matmul peak"
            )


# ---------------------------------------------------------------------------------------------
# Tuning: what moves the dense VGG16 number
# ---------------------------------------------------------------------------------------------


def case_tuning(options: Options, peak: MatmulPeak, report: Report) -> None:
    """VGG16 dense at 384 under settings that could change its speed, timed side by side."""
    net = convert(random_torchvision("vgg16"))
    # channels_last converts parameters in place, and a converted network shares them with its
    # model: give that variant a model of its own.
    net_cl = convert(random_torchvision("vgg16")).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 384, 384, generator=generator)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x4 = torch.randn(4, 3, 384, 384, generator=generator)
    threads = torch.get_num_threads()

    def library() -> torch.Tensor:
        return score_grid(net, x, method="dense", input_size=WINDOW)

    def channels_last() -> torch.Tensor:
        return score_grid(net_cl, x_cl, method="dense", input_size=WINDOW)

    def no_grad() -> torch.Tensor:
        with torch.no_grad():
            return net(x)

    def plain() -> torch.Tensor:  # autograd recording: what a forgotten no_grad costs
        return net(x).detach()

    def onednn_off() -> torch.Tensor:
        with quiet_warnings(), torch.backends.mkldnn.flags(enabled=False):
            return score_grid(net, x, method="dense", input_size=WINDOW)

    def one_thread() -> torch.Tensor:
        torch.set_num_threads(1)
        try:
            return score_grid(net, x, method="dense", input_size=WINDOW)
        finally:
            torch.set_num_threads(threads)

    def batch4() -> torch.Tensor:
        return score_grid(net, x4, method="dense", input_size=WINDOW)

    def conv_head() -> torch.Tensor:
        with head_as_convolution():
            return score_grid(net, x, method="dense", input_size=WINDOW)

    def bf16() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return score_grid(net, x, method="dense", input_size=WINDOW)

    with torch.inference_mode():
        reference = library()
        convolution = conv_head()
    difference = (reference - convolution).abs().max().item() / reference.abs().max().item()
    report.notes.append(
        f"tuning: the library's unfold + matmul head differs from the conv head by "
        f"{difference:.1e} (max abs difference / max abs logit)"
    )

    # torch.compile with inductor's freezing: weights become constants, prepacked for oneDNN,
    # and convolutions fused with their ReLUs. The network is called directly (score_grid would
    # try to convert the compiled wrapper again); compiling happens on the first call.
    compiled = torch.compile(net)

    def inductor() -> torch.Tensor:
        with torch.inference_mode():
            return compiled(x)

    compiled_variant: Callable[[], torch.Tensor] | None = inductor
    start = time.perf_counter()
    try:
        import torch._inductor.config as inductor_config

        with quiet_warnings(), inductor_config.patch(freezing=True):
            inductor()
        compile_note = f"compiling took {time.perf_counter() - start:.0f} s"
    except Exception as error:  # no C++ compiler, unsupported platform...
        compile_note = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
        compiled_variant = None
    report.notes.append(f"tuning: torch.compile(net) with inductor freezing: {compile_note}")

    # Cold: the very first call in this process for these shapes (oneDNN creates its primitives).
    cold_net = convert(random_torchvision("vgg16"))
    start = time.perf_counter()
    score_grid(cold_net, torch.randn(1, 3, 416, 416), method="dense", input_size=WINDOW)
    cold_s = time.perf_counter() - start
    del cold_net

    variants: list[tuple[str, Callable[[], torch.Tensor], int]] = [
        ("dense (library: score_grid, contiguous, inference_mode)", library, 1),
        ("channels_last model and input", channels_last, 1),
        ("torch.no_grad instead of inference_mode", no_grad, 1),
        ("autograd on (no no_grad/inference_mode)", plain, 1),
        ("oneDNN off (torch.backends.mkldnn.flags(enabled=False))", onednn_off, 1),
        (f"1 thread instead of {threads}", one_thread, 1),
        ("batch of 4 images", batch4, 4),
        ("head Linears as a convolution (before unfold + matmul)", conv_head, 1),
        ("bf16 autocast (not fp32: % of the fp32 peak)", bf16, 1),
    ]
    if compiled_variant is not None:
        variants.append(("torch.compile, inductor freezing (called directly)", compiled_variant, 1))
    flops = count_flops(library)
    methods = [
        Method(label, fn, flops * images, images=images, warmup=2, budget_s=options.budget_s)
        for label, fn, images in variants
    ]
    log(f"  tuning: {len(methods)} variants")
    run_interleaved(methods, options.repeat, peak, torch.device("cpu"))
    base = methods[0].median_s
    case = GridCase("tuning", "vgg16", net, (384, 384), (32,))
    for method in methods:
        row = timing_row(case, 32, "6x6", method, peak, None)
        row.input = f"{method.images}x384x384" if method.images > 1 else "384x384"
        row.note = f"{base * method.images / method.median_s:.2f}x the library's img/s"
        report.rows.append(row)
    report.notes.append(
        f"tuning: the first dense call on a new network and input shape (416x416) took "
        f"{cold_s:.2f} s, against {base * (416 / 384) ** 2:.2f} s expected from the steady 384 "
        "time: the difference is first-call cost (oneDNN primitive creation); every case warms "
        "up before it is timed"
    )
    tune_default_model(options, peak, report)


def tune_default_model(options: Options, peak: MatmulPeak, report: Report) -> None:
    """The default model's dense pass at 384, batch 1 and 8, step by step to the command's.

    Variants: the library's ``score_grid`` call (contiguous); channels_last (depthwise
    convolutions, most of EfficientNet-Lite0's layers, are much faster in oneDNN in that
    layout); channels_last with the batch norms folded into the convolutions
    (``heatmap_cli.lean.folded_copy``): what the command's ``GridEngine`` runs; and that through
    ``torch.compile`` with inductor's freezing: what ``heatmap --compile`` runs, compiled once per
    input shape. ``score_grid`` itself leaves the caller's layout and layers as they are.
    """
    import torch._inductor.config as inductor_config

    loaded = load_model()
    net = convert(loaded.model, loaded.input_size)
    # channels_last rewrites parameters in place: a separate model for those variants.
    net_cl = convert(copy.deepcopy(loaded.model), loaded.input_size)
    net_cl = net_cl.to(memory_format=torch.channels_last)
    folded = folded_copy(net_cl)
    assert folded is not None
    net_folded, folded_count = folded
    net_folded = net_folded.to(memory_format=torch.channels_last)
    compiled = torch.compile(net_folded, dynamic=False)
    generator = torch.Generator().manual_seed(0)
    methods = []
    for batch in (1, 8):
        x = torch.randn(batch, 3, 384, 384, generator=generator)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def call_compiled(inputs: torch.Tensor = x_cl) -> torch.Tensor:
            with torch.inference_mode(), inductor_config.patch(freezing=True):
                return compiled(inputs)

        start = time.perf_counter()
        try:
            with quiet_warnings():
                call_compiled()
        except Exception as error:  # no C++ compiler, unsupported platform...
            report.notes.append(f"tuning: {loaded.name} --compile failed: {type(error).__name__}")
            compiled_calls = []
        else:
            report.notes.append(
                f"tuning: {loaded.name} batch {batch}: compiling took "
                f"{time.perf_counter() - start:.0f} s (once per input shape)"
            )
            compiled_calls = [("dense, the command's + torch.compile (--compile)", call_compiled)]
        for label, call in (
            (
                "dense (library)",
                functools.partial(score_grid, net, x, method="dense", input_size=WINDOW),
            ),
            (
                "dense, channels_last model and input",
                functools.partial(score_grid, net_cl, x_cl, method="dense", input_size=WINDOW),
            ),
            (
                f"dense, channels_last + {folded_count} batch norms folded (the command's)",
                functools.partial(score_grid, net_folded, x_cl, method="dense", input_size=WINDOW),
            ),
            *compiled_calls,
        ):
            methods.append(
                Method(label, call, count_flops(call), images=batch, budget_s=options.budget_s)
            )
    log(f"  tuning: {loaded.name}, {len(methods)} variants")
    run_interleaved(methods, options.repeat, peak, torch.device("cpu"))
    base = methods[0]
    for method in methods:
        if method.label == "dense (library)":
            base = method
        case = GridCase("tuning", loaded.name, net, (384, 384), (32,), batch=method.images)
        row = timing_row(case, net.stride, "6x6", method, peak, None)
        row.note = f"{base.median_s / method.median_s:.2f}x the library's img/s"
        report.rows.append(row)


@contextlib.contextmanager
def head_as_convolution() -> Iterator[None]:
    """Computes converted heads as ``F.conv2d`` at every grid size while it is entered.

    The library's form before it took ``F.unfold`` + one matmul for small grids
    (``heatmap_cli.surgery.windowed_linear``): kept in the table to show what that change is
    worth.
    """
    limit = surgery.MATMUL_HEAD_MAX_CELLS
    surgery.MATMUL_HEAD_MAX_CELLS = -1  # read by windowed_linear on every call
    try:
        yield
    finally:
        surgery.MATMUL_HEAD_MAX_CELLS = limit


# ---------------------------------------------------------------------------------------------
# Folder batch: 32 photos of mixed sizes through the library path
# ---------------------------------------------------------------------------------------------

_ASPECTS = ((4, 3), (3, 4), (16, 9), (1, 1), (3, 2), (2, 3))
_LONG_SIDES = (480, 640, 800, 1024, 1600, 2048, 3000, 4000)


def make_photos(folder: Path, count: int = 32, seed: int = 0) -> list[Path]:
    """Writes ``count`` photos of mixed sizes and aspect ratios, made from ``sample_images/``.

    Each is a centre crop of one sample photo to one of six aspect ratios, resized so that its
    long side is 480 to 4000 pixels; most are JPEG (quality 90), every eighth is PNG.

    Args:
        folder: Where to write them (created).
        count: How many.
        seed: Seed of the size choices.

    Returns:
        The written files.
    """
    rng = random.Random(seed)
    sources = [
        Image.open(p).convert("RGB") for p in sorted((_ROOT / "sample_images").glob("*.jpg"))
    ]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        aw, ah = _ASPECTS[index % len(_ASPECTS)]
        scale = min(source.width / aw, source.height / ah)
        cw, ch = round(aw * scale), round(ah * scale)
        left, top = (source.width - cw) // 2, (source.height - ch) // 2
        long_side = rng.choice(_LONG_SIDES)
        size = (
            (long_side, round(long_side * ah / aw))
            if aw >= ah
            else (
                round(long_side * aw / ah),
                long_side,
            )
        )
        photo = source.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC)
        suffix = ".png" if index % 8 == 7 else ".jpg"
        path = folder / f"photo_{index:02d}{suffix}"
        photo.save(path, quality=90) if suffix == ".jpg" else photo.save(path)
        paths.append(path)
    return paths


def sequential_batch(
    paths: Sequence[Path],
    loaded: LoadedModel,
    net: ConvolutionalizedNet,
    shorter_side: int,
    batch_size: int,
    phases: dict[str, list[float]] | None = None,
) -> list[torch.Tensor]:
    """The naive library loop: read and resize every image, then score same-size batches.

    Args:
        paths: Image files.
        loaded: The model's metadata (mean, std, interpolation).
        net: The converted network.
        shorter_side: Resize target of the shorter side (``--size``).
        batch_size: Most images per forward pass.
        phases: If given, the seconds of this call's two phases are appended under ``"read"``
            (decode + resize) and ``"network"`` (normalize + score_grid).

    Returns:
        One ``(n, K, rows, cols)`` logit tensor per batch.
    """
    started = time.perf_counter()
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for path in paths:
        image = read_image(path)
        geometry = plan_geometry(
            (image.height, image.width),
            shorter_side=shorter_side,
            window=net.window,
            stride=net.stride,
        )
        pixels = resize_for_grid(image, geometry.input_size, loaded.interpolation)
        groups.setdefault(geometry.input_size, []).append(pixels)
    read_done = time.perf_counter()
    grids = []
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            x = normalize(np.stack(group[start : start + batch_size]), loaded.mean, loaded.std)
            grids.append(score_grid(net, x, method="dense", input_size=net.window))
    if phases is not None:
        phases.setdefault("read", []).append(read_done - started)
        phases.setdefault("network", []).append(time.perf_counter() - read_done)
    return grids


def pipeline_runner(
    folder: Path, loaded: LoadedModel, shorter_side: int, batch_size: int, workers: int
) -> tuple[Callable[[], None] | None, str]:
    """The lead's end-to-end pipeline over the folder, if this tree has it.

    This is the hook for ``heatmap_cli.pipeline``: it needs ``GridSettings``, ``GridEngine`` and
    ``score_images(items, engine)`` yielding ``(item, result or error)``. Adapt it here if that
    interface changes.

    The engine gets its own copy of the model: it switches the parameters to channels_last in
    place, which would otherwise change the sequential loop's network too.

    Returns:
        ``(run, "")`` or ``(None, why it was skipped)``.
    """
    loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    try:
        from heatmap_cli import pipeline
    except ImportError as error:
        return None, f"heatmap_cli.pipeline not importable ({error})"
    needed = ("GridSettings", "GridEngine", "score_images")
    if not all(hasattr(pipeline, name) for name in needed):
        return None, f"heatmap_cli.pipeline lacks one of {', '.join(needed)}"
    try:
        settings = pipeline.GridSettings(
            size=shorter_side, device="cpu", method="dense", batch_size=batch_size
        )
        with quiet_warnings():
            engine = pipeline.GridEngine(loaded, settings)
    except Exception as error:  # an interface in flux: report, do not crash the harness
        return None, f"pipeline.GridEngine failed: {type(error).__name__}: {error}"
    items = find_images([folder])

    def run() -> None:
        results = list(pipeline.score_images(items, engine, workers=workers))
        failed = [(item, r) for item, r in results if isinstance(r, Exception)]
        if failed or len(results) != len(items):
            raise RuntimeError(f"pipeline: {len(failed)} failures, {len(results)} results")

    return run, ""


def case_folder(options: Options, peak: MatmulPeak, report: Report) -> None:
    """32 photos of mixed sizes, default model, stride 32: sequential loop against pipeline."""
    shorter_side, batch_size = 384, 8
    loaded = load_model()
    net = convert(loaded.model, loaded.input_size)
    with tempfile.TemporaryDirectory(prefix="heatmap-bench-") as tmp:
        paths = make_photos(Path(tmp) / "photos")
        sizes: dict[tuple[int, int], int] = {}
        megapixels = 0.0
        for path in paths:
            with Image.open(path) as image:
                megapixels += image.width * image.height / 1e6
                geometry = plan_geometry(
                    (image.height, image.width),
                    shorter_side=shorter_side,
                    window=net.window,
                    stride=net.stride,
                )
            sizes[geometry.input_size] = sizes.get(geometry.input_size, 0) + 1
        phases: dict[str, list[float]] = {}
        # The photos were just written (in the page cache) and counting the FLOPs below ran
        # every input size once: --quick skips the extra warm-up run.
        warmup = 0 if options.quick else 1
        flops = 0
        for (h, w), count in sizes.items():
            x = torch.zeros(1, 3, h, w)
            flops += count * count_flops(
                lambda x=x: score_grid(net, x, method="dense", input_size=net.window)
            )
        methods = [
            Method(
                "sequential loop",
                lambda: sequential_batch(paths, loaded, net, shorter_side, batch_size, phases),
                flops,
                images=len(paths),
                warmup=warmup,
                budget_s=options.budget_s,
            )
        ]
        for workers in (2, 1):  # the command's default, and one thread fewer
            folder = Path(tmp) / "photos"
            run, why = pipeline_runner(folder, loaded, shorter_side, batch_size, workers)
            if run is None:
                report.notes.append(f"folder: pipeline not timed: {why}")
                break
            methods.append(
                Method(
                    f"pipeline ({workers} loader thread{'s' if workers > 1 else ''})",
                    run,
                    flops,
                    images=len(paths),
                    warmup=warmup,
                    budget_s=options.budget_s,
                )
            )
        log(f"  folder: {len(paths)} photos, {len(sizes)} input sizes")
        run_interleaved(methods, options.repeat, peak, torch.device("cpu"))
    case = GridCase("folder", loaded.name, net, (0, 0), (32,))
    base = methods[0].median_s
    for method in methods:
        row = timing_row(case, net.stride, f"{len(sizes)} sizes", method, peak, None)
        row.input = f"{len(paths)} photos"
        row.note = f"{megapixels:.0f} MP decoded, {base / method.median_s:.2f}x the sequential loop"
        report.rows.append(row)
    read_s, network_s = (statistics.median(phases[k]) for k in ("read", "network"))
    report.notes.append(
        f"folder: the sequential loop spends {read_s:.2f} s reading, decoding and resizing and "
        f"{network_s:.2f} s in normalize + score_grid (medians over its calls)"
    )


# ---------------------------------------------------------------------------------------------
# Memory: VGG16 dense, one fresh process per size
# ---------------------------------------------------------------------------------------------


def case_memory(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Peak resident memory of one VGG16 dense pass at each size, each in a fresh process."""
    del peak
    probe = Path(__file__).resolve().parent / "_memory_probe.py"
    for size in options.memory_sizes:
        log(f"  memory: vgg16 {size}x{size}")
        command = [sys.executable, str(probe), "--model", "vgg16", "--size", str(size)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        row = MemoryRow("vgg16", f"{size}x{size}", "-")
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            row.note = f"probe failed ({done.returncode}): {tail}"
        else:
            result = json.loads(done.stdout.strip().splitlines()[-1])
            row.grid = "x".join(str(v) for v in result["grid"])
            row.baseline_mib = result["baseline_mib"]
            row.peak_mib = result["peak_mib"]
            row.extra_mib = result["extra_mib"]
            row.largest_layer_mib = result["largest_layer_mib"]
            row.seconds = result["seconds"]
            if not result["peak_reset"]:
                row.note = "peak not reset after loading (no /proc/self/clear_refs): a bound"
        report.memory.append(row)
    if 2048 not in options.memory_sizes:
        report.notes.append("memory: 2048x2048 skipped (--quick)")


# ---------------------------------------------------------------------------------------------
# CLI start-up: `heatmap --help` must answer fast, without importing torch
# ---------------------------------------------------------------------------------------------


def help_command() -> list[str] | None:
    """How to run ``heatmap --help`` here: the console script, else ``-m heatmap_cli``."""
    script = Path(sys.executable).parent / "heatmap"
    if script.is_file():
        return [sys.executable, str(script), "--help"]
    if (_ROOT / "heatmap_cli" / "__main__.py").is_file():
        return [sys.executable, "-m", "heatmap_cli", "--help"]
    return None


def case_help(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times ``heatmap --help`` and checks with ``-X importtime`` that it imports no torch."""
    del peak
    if not (_ROOT / "heatmap_cli" / "cli.py").is_file():
        report.notes.append("help: skipped, heatmap_cli/cli.py does not exist yet")
        return
    command = help_command()
    assert command is not None
    runs = 5 if options.quick else 11
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "")}

    def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=_ROOT)
        return time.perf_counter() - start, done

    log("  help: heatmap --help, python -c pass")
    timed(command)  # warm the file cache
    help_times, bare_times = [], []
    failure = ""
    for _ in range(runs):
        seconds, done = timed(command)
        help_times.append(seconds)
        if done.returncode != 0 or "Usage" not in done.stdout:
            failure = f"exit {done.returncode}: {(done.stderr.strip().splitlines() or [''])[-1]}"
        bare_times.append(timed([sys.executable, "-c", "pass"])[0])
    help_s = statistics.median(help_times)
    shown = " ".join(["heatmap" if "heatmap" in command[1] else "python -m heatmap_cli", "--help"])
    report.cli.append((f"`{shown}` (median of {runs})", help_s, failure or "ok"))
    report.cli.append(
        (
            f"`python -c pass` (interpreter start, median of {runs})",
            statistics.median(bare_times),
            "",
        )
    )
    importtime = [sys.executable, "-X", "importtime", *command[1:]]
    done = subprocess.run(
        importtime, capture_output=True, text=True, check=False, env=env, cwd=_ROOT
    )
    modules = [
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    heavy = sorted(
        {m.strip() for m in modules if re.match(r"^(torch|torchvision|timm)\b", m.strip())}
    )
    total_us = sum(
        int(line.split("|")[0].split(":")[1])
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and line.split("|")[0].split(":")[1].strip().isdigit()
    )
    report.cli.append(
        (
            f"`python -X importtime {' '.join(command[1:]).replace(str(_ROOT) + '/', '')}`",
            total_us / 1e6,
            f"{len(modules)} modules imported (self time summed); "
            + (f"HEAVY: {', '.join(heavy[:5])}" if heavy else "no torch/torchvision/timm"),
        )
    )
    report.checks.append(
        (
            f"`heatmap --help` answers in < {TARGET_HELP_S} s",
            f"{help_s:.3f} s" + (f" ({failure})" if failure else ""),
            help_s < TARGET_HELP_S and not failure,
        )
    )
    report.checks.append(
        ("`heatmap --help` imports no torch", "torch imported" if heavy else "no torch", not heavy)
    )


# ---------------------------------------------------------------------------------------------
# CUDA: fp32 against channels_last + bf16 autocast (only where a GPU is present)
# ---------------------------------------------------------------------------------------------


def case_cuda(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Dense VGG16, ResNet-50 and the default model on the GPU: fp32 against channels_last+bf16.

    Runs only where ``torch.cuda.is_available()``; says it was skipped otherwise.
    """
    del peak
    if options.device == "cpu":
        report.notes.append("cuda: skipped (--device cpu)")
        return
    if not torch.cuda.is_available():
        report.notes.append("cuda: skipped, torch.cuda.is_available() is False on this machine")
        return
    time_dense_on_device(
        torch.device("cuda"), options, report, peak_size=8192, batches=(1, 16), repeat=10
    )


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

    Each row's % peak compares it with the device's ``torch.mm`` rate in its own precision
    (``peak_size`` square, float32 or bfloat16), measured here. Models, inputs and results stay
    on the device. (Written for CUDA; ``device`` may be the CPU to try the code path.)

    Args:
        device: Where to run.
        options: Command-line choices (time budget).
        report: Receives the rows and a note.
        peak_size: Side of the matmul-peak matrices.
        batches: Batch sizes to time.
        repeat: Timed runs per variant.
    """
    peaks = {
        "fp32": MatmulPeak(peak_size, device, torch.float32),
        "bf16": MatmulPeak(peak_size, device, torch.bfloat16),
    }
    for device_peak in peaks.values():
        for _ in range(5):
            device_peak.sample()
    loaded = load_model()
    models: list[tuple[str, nn.Module, tuple[int, int], tuple[int, int]]] = [
        ("vgg16", random_torchvision("vgg16"), WINDOW, (384, 384)),
        ("resnet50", random_torchvision("resnet50"), WINDOW, (512, 512)),
        (loaded.name, loaded.model, loaded.input_size, (384, 384)),
    ]
    for name, model, window, size in models:
        for batch in batches:
            methods: list[Method] = []
            nets: list[ConvolutionalizedNet] = []
            for precision in ("fp32", "bf16"):
                # A copy per variant: channels_last rewrites the shared parameters in place.
                net = convert(copy.deepcopy(model).eval().to(device), window)
                x = torch.randn(batch, 3, *size, device=device)
                if precision == "bf16":
                    net = net.to(memory_format=torch.channels_last)
                    x = x.contiguous(memory_format=torch.channels_last)
                call = _dense_call(net, x, window, bf16=precision == "bf16")
                label = "dense fp32" if precision == "fp32" else "dense channels_last + bf16"
                methods.append(
                    Method(
                        label,
                        call,
                        count_flops(call),
                        images=batch,
                        warmup=2,
                        budget_s=options.budget_s,
                    )
                )
                nets.append(net)
            log(f"  {device.type}: {name} batch {batch}")
            run_interleaved(methods, repeat, None, device)
            for precision, method, net in zip(("fp32", "bf16"), methods, nets, strict=True):
                rows, cols = net.grid_size(size)
                case = GridCase(
                    device.type, name, net, size, (net.stride,), batch=batch, device=device
                )
                reference = methods[0].median_s  # the "vs crops" column: here, vs fp32
                row = timing_row(
                    case, net.stride, f"{rows}x{cols}", method, peaks[precision], reference
                )
                row.note = "vs column: fp32 time / this time"
                report.rows.append(row)
            del methods, nets
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report.notes.append(
        f"{device.type}: % peak is against the device's own torch.mm rate in the same precision "
        f"(fp32 {peaks['fp32'].median():.0f}, bf16 {peaks['bf16'].median():.0f} GFLOP/s, "
        "with torch's default TF32 setting)"
    )


def _dense_call(
    net: nn.Module, x: torch.Tensor, window: tuple[int, int], *, bf16: bool
) -> Callable[[], torch.Tensor]:
    """A dense ``score_grid`` call, under bfloat16 autocast on ``x``'s device if asked."""

    def call() -> torch.Tensor:
        context = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if bf16
            else contextlib.nullcontext()
        )
        with context:
            return score_grid(net, x, method="dense", input_size=window)

    return call


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

CASE_FUNCTIONS: dict[str, Callable[[Options, MatmulPeak, Report], None]] = {
    "vgg16-384": case_vgg16,
    "lite0-384": case_lite0,
    "resnet50-512": case_resnet50,
    "folder": case_folder,
    "memory": case_memory,
    "help": case_help,
    "tuning": case_tuning,
    "cuda": case_cuda,
}


def parse_args(argv: Sequence[str] | None) -> tuple[Options, list[str]]:
    parser = argparse.ArgumentParser(
        description="Time dense score grids against per-window crops (GitHub issue 5).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer runs, about 2 minutes")
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES,
        default=list(CASES),
        metavar="CASE",
        help=f"cases to run (default: all): {', '.join(CASES)}",
    )
    parser.add_argument("--repeat", type=int, help="timed runs per method (default 7, quick 3)")
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="the cuda case runs with auto (if a GPU is present) or cuda; CPU cases always run",
    )
    parser.add_argument(
        "--peak-size", type=int, default=2048, help="side of the matmul-peak matrices (2048)"
    )
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    cases = [c for c in CASES if c in args.cases]
    if args.quick and "tuning" in cases and args.cases == list(CASES):
        cases.remove("tuning")
    options = Options(
        quick=args.quick,
        repeat=repeat,
        markdown=args.markdown,
        device=args.device,
        budget_s=8.0 if args.quick else 45.0,
        peak_size=args.peak_size,
        memory_sizes=(384, 1024) if args.quick else (384, 1024, 2048),
    )
    return options, cases


def print_report(report: Report, options: Options, peak: MatmulPeak, elapsed_s: float) -> None:
    """Prints the tables, checks and notes to stdout."""
    md = options.markdown
    samples = report.peak_samples
    peak_line = "fp32 matmul peak: not sampled"
    if samples:
        peak_line = (
            f"fp32 matmul peak: torch.mm {peak.size}x{peak.size} (best of {peak.burst}), median "
            f"{statistics.median(samples):.1f} GFLOP/s over {len(samples)} samples "
            f"(min {min(samples):.1f}, max {max(samples):.1f}), same threads as the cases"
        )
        if report.big_peak is not None:
            size, rate = report.big_peak
            peak_line += f"; {size}x{size} (best of 3) once at the start: {rate:.1f} GFLOP/s"
    mode = "quick" if options.quick else "full"

    def bold(text: str) -> str:
        return f"**{text}:** " if md else f"{text}: "

    print(f"{bold('Machine')}{machine_description()}")
    print(f"{bold('Peak')}{peak_line}")
    load = " -> ".join(f"{value:.1f}" for value in report.load)
    print(
        f"{bold('Run')}{mode}, --repeat {options.repeat}, {elapsed_s / 60:.1f} min; 1-minute "
        f"load average {load} on {os.cpu_count()} CPUs (this run adds up to 2; other processes "
        "slow every row, the many small operations of EfficientNet-Lite0 most)"
    )
    print(
        f"{bold('Columns')}GFLOP = work one call of the method executes, counted once per "
        "method with FlopCounterMode (convolutions and matmuls, 2 FLOPs per multiply-add); "
        "GFLOP/s = GFLOP / median s; % peak = GFLOP/s over the matmul peak sampled between the "
        "same runs; vs crops = crops time / this time, at the same stride"
    )
    print()
    if report.rows:
        print(format_table(TIMING_HEADERS, [timing_cells(r) for r in report.rows], markdown=md))
        print()
    if report.memory:
        print(
            "Peak memory, VGG16 dense, one fresh process per size (peak resident memory after "
            "the pass, VmHWM; baseline = VmRSS with model and input loaded):"
        )
        print()
        print(format_table(MEMORY_HEADERS, [memory_cells(r) for r in report.memory], markdown=md))
        print()
    if report.cli:
        cells = [
            [what, f"{s:.3f}" if s is not None else "-", remark] for what, s, remark in report.cli
        ]
        print(format_table(("CLI start-up", "s", "remark"), cells, markdown=md))
        print()
    if report.checks:
        cells = [[t, m, "met" if ok else "NOT MET"] for t, m, ok in report.checks]
        print(format_table(("target (issue 5)", "measured", "status"), cells, markdown=md))
        print()
    for note in report.notes:
        print(f"- {note}" if md else f"note: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    options, cases = parse_args(argv)
    torch.manual_seed(0)
    started = time.perf_counter()
    log(f"heatmap-cli benchmarks ({'quick' if options.quick else 'full'}): {', '.join(cases)}")
    log(f"  {machine_description()}")
    report = Report(load=[os.getloadavg()[0]])
    # A larger product once, to show whether the per-round size underestimates the GEMM rate.
    big = MatmulPeak(2 * options.peak_size, burst=3)
    report.big_peak = (big.size, big.sample())
    del big
    peak = MatmulPeak(options.peak_size)
    for _ in range(5):
        peak.sample()
    for name in cases:
        log(f"case {name}")
        case_started = time.perf_counter()
        CASE_FUNCTIONS[name](options, peak, report)
        gc.collect()  # the case's models go before the next case's arrive
        log(f"  done in {time.perf_counter() - case_started:.0f} s")
    for _ in range(5):
        peak.sample()
    report.peak_samples = list(peak.samples)
    report.load.append(os.getloadavg()[0])
    print_report(report, options, peak, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
