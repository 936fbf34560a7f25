"""Grid cases: one model at one input size, every grid method against crops, stride by stride.

The methods come from the library's registry (``heatmap_cli.grid.registry``): at the native stride
those that run only there (``dense``), at a finer stride those that reach it (``dilate``,
``stitch``), each against the exact reference, ``crops``, at the same stride. A method registered
later is timed here without a change. Every call is ``score_grid`` on a network converted once,
outside the timings, as the library is used.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from benchmarks.support.common import MatmulPeak, Method, count_flops, log, run_interleaved
from benchmarks.support.harness import Options
from benchmarks.support.report import Report, input_label, timing_row
from heatmap_cli import ConvolutionalizedNet, score_grid
from heatmap_cli.grid import get_method, method_names
from heatmap_cli.grid.geometry import grid_shape

__all__ = ["REFERENCE", "GridCase", "compared_methods", "run_grid_case"]

REFERENCE = "crops"
"""The method every other is compared with: the unmodified model on every window."""

# A crops run above this much work gets no untimed warm-up run: at several seconds per run,
# first-call costs (oneDNN primitive creation) are well under one percent of it.
_NO_WARMUP_GFLOP = 200.0


@dataclass
class GridCase:
    """A model at one input size, timed with every method at one or more strides.

    Attributes:
        name: Case name.
        model_name: Shown in the table.
        net: The converted network (converted once, outside the timings).
        size: ``(H, W)`` input.
        strides: Strides to time (see :func:`compared_methods`); ``crops`` at each.
        batch: Images per call.
        device: Where it runs.
        variants: Extra ``dense`` rows at the native stride, ``"dense, <label>"``: label -> the
            same model converted another way (e.g. ``matmul_max_cells=-1``, the head as a
            convolution as the library computed it before), timed next to ``dense``.
    """

    name: str
    model_name: str
    net: ConvolutionalizedNet
    size: tuple[int, int]
    strides: tuple[int, ...]
    batch: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    variants: dict[str, ConvolutionalizedNet] = field(default_factory=dict)


def compared_methods(stride: int, native_stride: int) -> list[str]:
    """The registered methods timed against crops at ``stride``, in registration order.

    At the native stride, the methods that run only there; at a finer one, those whose strides
    divide the native stride (they would be a slower ``dense`` at the native stride itself).
    """
    rule = "native" if stride == native_stride else "divisors"
    return [
        name for name in method_names() if name != REFERENCE and get_method(name).strides == rule
    ]


def _method(
    label: str, net: ConvolutionalizedNet, method: str, stride: int, x: torch.Tensor, budget: float
) -> Method:
    """A ``score_grid`` call of ``method`` on ``net``, its FLOPs counted (two calls: warm-up)."""

    def call() -> torch.Tensor:
        return score_grid(net, x, stride=stride, method=method, input_size=net.window)

    return Method(label, call, count_flops(call), images=x.shape[0], warmup=0, budget_s=budget)


def _crops_method(case: GridCase, stride: int, x: torch.Tensor, budget: float) -> Method:
    """Crops at ``stride``, charged one window's FLOPs times the number of windows."""
    net = case.net
    classifier = net.source_model
    assert classifier is not None
    rows, cols = grid_shape(case.size, net.window, stride)
    one_window = x[:1, :, : net.window[0], : net.window[1]]

    def one() -> None:
        with torch.inference_mode():
            classifier(one_window)

    def call() -> torch.Tensor:
        return score_grid(net, x, stride=stride, method=REFERENCE, input_size=net.window)

    flops = count_flops(one, first_call=True) * rows * cols * x.shape[0]
    warmup = 0 if flops / 1e9 > _NO_WARMUP_GFLOP else 1
    return Method(REFERENCE, call, flops, images=x.shape[0], warmup=warmup, budget_s=budget)


def grid_methods(case: GridCase, stride: int, x: torch.Tensor, options: Options) -> list[Method]:
    """The methods of one stride of a case, warmed up and with their FLOPs counted; crops last."""
    methods: list[Method] = []
    for name in compared_methods(stride, case.net.stride):
        methods.append(_method(name, case.net, name, stride, x, options.budget_s))
        if name == "dense":
            for label, net in case.variants.items():
                methods.append(_method(f"dense, {label}", net, name, stride, x, options.budget_s))
    methods.append(_crops_method(case, stride, x, options.budget_s))
    return methods


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
        rows, cols = grid_shape(case.size, case.net.window, stride)
        methods = grid_methods(case, stride, x, options)
        crops = methods[-1]
        estimated = False
        if options.quick and stride != native and crops_s_per_window is not None:
            estimate_s = crops_s_per_window * rows * cols
            if estimate_s > options.budget_s:
                methods.remove(crops)
                crops.times = [estimate_s]
                estimated = True
        log(f"  {case.name} stride {stride}: {', '.join(m.label for m in methods)}")
        run_interleaved(methods, options.repeat, peak, case.device)
        if stride == native:
            crops_s_per_window = crops.median_s / (rows * cols)
        row_of = functools.partial(
            timing_row,
            peak=peak,
            case=case.name,
            model=case.model_name,
            input_size=input_label(case.size, case.batch),
            grid=f"{rows}x{cols}",
            stride=stride,
            reference_s=crops.median_s,
        )
        report.rows += [row_of(method) for method in methods]
        if estimated:
            row = row_of(crops)
            row.runs = 0
            row.note = f"time estimated from stride-{native} crops x {rows * cols} windows"
            row.peak_fraction = float("nan")
            report.rows.append(row)
