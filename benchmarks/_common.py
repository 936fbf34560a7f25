"""Shared pieces of the benchmark harness: timing, FLOP counting, the matmul peak, tables.

Nothing here knows about particular models; ``run.py`` builds the cases from these parts.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "MatmulPeak",
    "MemoryRow",
    "Method",
    "TimingRow",
    "count_flops",
    "format_table",
    "machine_description",
    "run_interleaved",
    "synchronize",
]


def synchronize(device: torch.device) -> None:
    """Waits for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _GlobalOnlyTracker:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP goes to ``"Global"``.

    The real tracker (``torch.utils.module_tracker.ModuleTracker``) registers autograd hooks on
    module inputs that require grad, which fails under ``torch.inference_mode`` (which
    ``score_grid`` enters) when a module receives a parameter as input. Only the total is needed
    here, so no per-module attribution is kept.
    """

    parents: frozenset[str] = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnlyTracker:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def count_flops(fn: Callable[[], object], *, first_call: bool = False) -> int:
    """Floating-point operations of one call of ``fn``, as ``FlopCounterMode`` counts them.

    Only matrix products and convolutions are counted, two FLOPs per multiply-accumulate;
    pooling, normalization, activations and elementwise arithmetic are not. The counted call
    really runs, so it doubles as a warm-up.

    Args:
        fn: A callable doing the work once.
        first_call: Count the very first call. By default ``fn`` is called once before the
            counted call: a first call may do one-time work that later calls skip (building and
            checking a dilated network on the meta device, for example, which the counter would
            otherwise add as if it had been computed).

    Returns:
        The total FLOP count of one steady-state call.
    """
    if not first_call:
        fn()
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnlyTracker()
    with counter:
        fn()
    return int(counter.get_total_flops())


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class MatmulPeak:
    """This machine's float32 matrix-multiply rate, sampled repeatedly during the run.

    Each sample is the best of ``burst`` back-to-back ``torch.mm`` of two ``n x n`` matrices
    (``2 n^3`` FLOPs each) on the same threads as everything else: the best, because a peak is
    what the machine can do at that moment, and one short product is easily slowed by a burst of
    other work. Samples are taken between the timed runs of every case, so a case's percentage
    of peak compares it with the matmul rate measured next to it, under the same load from other
    processes.

    Args:
        size: ``n``, the side of the square matrices.
        device: Where to multiply.
        dtype: Element type (float32 for the CPU targets).
        burst: Products per sample.
    """

    def __init__(
        self,
        size: int = 2048,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        burst: int = 3,
    ) -> None:
        self.size = size
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.burst = burst
        generator = torch.Generator().manual_seed(0)
        self._a = torch.randn(size, size, generator=generator).to(self.device, dtype)
        self._b = torch.randn(size, size, generator=generator).to(self.device, dtype)
        self._out = torch.empty(size, size, device=self.device, dtype=dtype)
        self.samples: list[float] = []
        self.sample(record=False)  # warm-up: first call pays for allocation and packing

    @property
    def flops(self) -> int:
        """FLOPs of one sample (``2 n^3``)."""
        return 2 * self.size**3

    def sample(self, *, record: bool = True) -> float:
        """Runs ``burst`` multiplications.

        Args:
            record: Whether to keep the result among :attr:`samples`.

        Returns:
            The best rate of the burst in GFLOP/s.
        """
        seconds = min(
            _timed(lambda: torch.mm(self._a, self._b, out=self._out), self.device)
            for _ in range(self.burst)
        )
        rate = self.flops / seconds / 1e9
        if record:
            self.samples.append(rate)
        return rate

    def median(self, samples: Sequence[float] | None = None) -> float:
        """Median GFLOP/s of ``samples`` (default: all recorded samples)."""
        values = list(self.samples if samples is None else samples)
        return statistics.median(values) if values else float("nan")


@dataclass
class Method:
    """One way of computing a result, timed alongside the others of its case.

    Attributes:
        label: Short name shown in the table (``"dense"``, ``"crops"``...).
        fn: Does the work once.
        flops: FLOPs one call executes (see ``count_flops``).
        images: Images processed per call (for images/s).
        warmup: Untimed calls before timing.
        budget_s: After the first timed run, no further run starts once this many seconds have
            been spent on this method (so slow methods may get fewer runs than the others).
        times: Wall seconds of the timed runs, filled in by ``run_interleaved``.
        peak_samples: Matmul-peak samples taken in the rounds this method ran in.
    """

    label: str
    fn: Callable[[], object]
    flops: int
    images: int = 1
    warmup: int = 1
    budget_s: float = float("inf")
    times: list[float] = field(default_factory=list)
    peak_samples: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        """Median wall seconds of the timed runs."""
        return statistics.median(self.times) if self.times else float("nan")


def run_interleaved(
    methods: Sequence[Method],
    repeat: int,
    peak: MatmulPeak | None,
    device: torch.device,
) -> None:
    """Times several methods round-robin, with a matmul-peak sample at the start of each round.

    Interleaving spreads slow drifts in machine load (other processes, clock changes) evenly
    over the methods being compared, instead of giving one method the quiet minute and the
    other the busy one.

    Args:
        methods: The methods; their ``times`` and ``peak_samples`` are filled in.
        repeat: Timed runs per method (fewer for a method past its ``budget_s``).
        peak: Sampled once per round, or None.
        device: Drained before and after every timed call.
    """
    for method in methods:
        for _ in range(method.warmup):
            method.fn()
    for round_index in range(repeat):
        active = [m for m in methods if round_index == 0 or sum(m.times) + m.median_s <= m.budget_s]
        if not active:
            break
        rate = peak.sample() if peak is not None else None
        for method in active:
            gc.collect()
            method.times.append(_timed(method.fn, device))
            if rate is not None:
                method.peak_samples.append(rate)


@dataclass
class TimingRow:
    """One line of the timing table.

    Attributes:
        case: Case name (what ``--cases`` selects).
        model: Model name.
        input: Input description, e.g. ``"384x384"`` or ``"32 photos"``.
        grid: Output grid description, e.g. ``"6x6"``.
        stride: Output stride in input pixels (0 when not applicable).
        method: Method label.
        gflop: Work one call executes, in GFLOP.
        runs: Number of timed runs.
        median_s: Median wall seconds per call.
        images_per_s: Images per second.
        gflops: Achieved GFLOP/s (``gflop / median_s``).
        peak_fraction: ``gflops`` over the matmul peak measured next to it.
        speedup: Time of the reference method (crops) over this one; None without reference.
        note: A short remark (``"est."`` for an extrapolated time...).
    """

    case: str
    model: str
    input: str
    grid: str
    stride: int
    method: str
    gflop: float
    runs: int
    median_s: float
    images_per_s: float
    gflops: float
    peak_fraction: float
    speedup: float | None = None
    note: str = ""


@dataclass
class MemoryRow:
    """Peak memory of one dense pass, measured in a fresh process.

    Attributes:
        model: Model name.
        input: Input size, e.g. ``"2048x2048"``.
        grid: Output grid, e.g. ``"58x58"``.
        baseline_mib: Resident memory with the converted model loaded, before the pass.
        peak_mib: Peak resident memory of the process after the pass (``ru_maxrss``).
        extra_mib: ``peak_mib - baseline_mib``: what the pass itself needed.
        largest_layer_mib: Input plus output of the largest convolution: a lower bound.
        seconds: Wall time of that single (cold) pass.
        note: Why a size was skipped or failed.
    """

    model: str
    input: str
    grid: str
    baseline_mib: float = float("nan")
    peak_mib: float = float("nan")
    extra_mib: float = float("nan")
    largest_layer_mib: float = float("nan")
    seconds: float = float("nan")
    note: str = ""


def _cpu_model() -> str:
    """CPU model name, family and model numbers from ``/proc/cpuinfo`` (or ``platform``)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.processor() or platform.machine())
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine_description() -> str:
    """One line naming the CPU, its cores, torch and its threading, for table headers."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    capability = torch.backends.cpu.get_cpu_capability()
    onednn = (
        "on" if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "off"
    )
    return (
        f"{_cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {capability}, oneDNN {onednn}, Python {platform.python_version()}"
    )


def _fmt(value: float | None, spec: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


TIMING_HEADERS = (
    "case",
    "model",
    "input",
    "grid",
    "stride",
    "method",
    "GFLOP",
    "runs",
    "median s",
    "img/s",
    "GFLOP/s",
    "% peak",
    "vs crops",
    "note",
)

MEMORY_HEADERS = (
    "model",
    "input",
    "grid",
    "baseline MiB",
    "peak MiB",
    "pass MiB",
    "largest conv in+out MiB",
    "pass s",
    "note",
)


def timing_cells(row: TimingRow) -> list[str]:
    """The table cells of a timing row."""
    return [
        row.case,
        row.model,
        row.input,
        row.grid,
        str(row.stride) if row.stride else "-",
        row.method,
        _fmt(row.gflop, ".1f"),
        str(row.runs),
        _fmt(row.median_s, ".3f"),
        _fmt(row.images_per_s, ".2f"),
        _fmt(row.gflops, ".1f"),
        _fmt(100 * row.peak_fraction, ".0f"),
        f"{row.speedup:.1f}x" if row.speedup is not None else "-",
        row.note,
    ]


def memory_cells(row: MemoryRow) -> list[str]:
    """The table cells of a memory row."""
    return [
        row.model,
        row.input,
        row.grid,
        _fmt(row.baseline_mib, ".0f"),
        _fmt(row.peak_mib, ".0f"),
        _fmt(row.extra_mib, ".0f"),
        _fmt(row.largest_layer_mib, ".0f"),
        _fmt(row.seconds, ".1f"),
        row.note,
    ]


_NUMERIC_COLUMNS = frozenset(
    {
        "stride",
        "GFLOP",
        "runs",
        "median s",
        "img/s",
        "GFLOP/s",
        "% peak",
        "vs crops",
        "baseline MiB",
        "peak MiB",
        "pass MiB",
        "largest conv in+out MiB",
        "pass s",
        "s",
    }
)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    """Renders rows of cells as an aligned plain-text table or a markdown table.

    Args:
        headers: Column names.
        rows: Cells per row, as strings, one per header.
        markdown: GitHub markdown (numbers right-aligned) instead of plain text.

    Returns:
        The table, without a trailing newline.
    """
    if markdown:
        align = ["---:" if h in _NUMERIC_COLUMNS else "---" for h in headers]
        lines = [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join(align) + "|",
        ]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if h in _NUMERIC_COLUMNS else cell.ljust(w)
            for cell, w, h in zip(cells, widths, headers, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])
