"""What a benchmark run measured, and its tables: timing rows, memory rows, checks and notes.

Every case appends to one :class:`Report`; :func:`print_report` prints it once at the end, as
aligned text or as GitHub markdown (``--markdown``).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.support.common import MatmulPeak, Method, machine_description

__all__ = [
    "MemoryRow",
    "Report",
    "TimingRow",
    "format_table",
    "input_label",
    "print_report",
    "timing_row",
]


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


def input_label(size: tuple[int, int], batch: int = 1) -> str:
    """``"384x384"`` for one image, ``"4x384x384"`` for a batch of 4."""
    return f"{batch}x{size[0]}x{size[1]}" if batch > 1 else f"{size[0]}x{size[1]}"


def timing_row(
    method: Method,
    peak: MatmulPeak,
    *,
    case: str,
    model: str,
    input_size: str,
    grid: str,
    stride: int,
    reference_s: float | None = None,
    note: str = "",
) -> TimingRow:
    """A table row from a timed method.

    Args:
        method: The method, timed (``run_interleaved``).
        peak: The matmul peak; the row divides by the median of the samples taken in the
            method's own rounds (all samples if it has none).
        case: Case name.
        model: Model name.
        input_size: Input description (:func:`input_label`, ``"32 photos"``).
        grid: Output grid description.
        stride: Output stride in input pixels.
        reference_s: The reference method's median seconds (crops at the same stride), for
            the ``vs crops`` column; None leaves it empty.
        note: A short remark.

    Returns:
        The row.
    """
    seconds = method.median_s
    gflops = method.flops / seconds / 1e9
    peak_rate = peak.median(method.peak_samples) if method.peak_samples else peak.median()
    return TimingRow(
        case=case,
        model=model,
        input=input_size,
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


def _fmt(value: float | None, spec: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


_TIMING_HEADERS = (
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

_MEMORY_HEADERS = (
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


def _timing_cells(row: TimingRow) -> list[str]:
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


def _memory_cells(row: MemoryRow) -> list[str]:
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


@dataclass
class Report:
    """Everything a run measured, printed at the end.

    Attributes:
        rows: Timing rows in the order measured.
        memory: Memory rows.
        cli: ``(what, seconds or None, remark)`` per CLI start-up check.
        notes: Skipped cases and other remarks.
        checks: ``(target, measured, met)`` per target of the issue.
        peak_samples: Every matmul-peak sample of the run, GFLOP/s.
        big_peak: ``(n, GFLOP/s)`` of a larger ``n x n`` product, measured once at the start.
        load: The 1-minute load average at the start and at the end of the run.
        settings: How the run was made, e.g. ``"quick, --repeat 3"``.
        elapsed_s: Wall seconds of the whole run.
    """

    rows: list[TimingRow] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    cli: list[tuple[str, float | None, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[tuple[str, str, bool]] = field(default_factory=list)
    peak_samples: list[float] = field(default_factory=list)
    big_peak: tuple[int, float] | None = None
    load: list[float] = field(default_factory=list)
    settings: str = ""
    elapsed_s: float = float("nan")


def _peak_line(report: Report, peak: MatmulPeak) -> str:
    samples = report.peak_samples
    if not samples:
        return "fp32 matmul peak: not sampled"
    line = (
        f"fp32 matmul peak: torch.mm {peak.size}x{peak.size} (best of {peak.burst}), median "
        f"{statistics.median(samples):.1f} GFLOP/s over {len(samples)} samples "
        f"(min {min(samples):.1f}, max {max(samples):.1f}), same threads as the cases"
    )
    if report.big_peak is not None:
        size, rate = report.big_peak
        line += f"; {size}x{size} (best of 3) once at the start: {rate:.1f} GFLOP/s"
    return line


def _print_header(report: Report, peak: MatmulPeak, *, markdown: bool) -> None:
    def bold(text: str) -> str:
        return f"**{text}:** " if markdown else f"{text}: "

    load = " -> ".join(f"{value:.1f}" for value in report.load)
    print(f"{bold('Machine')}{machine_description()}")
    print(f"{bold('Peak')}{_peak_line(report, peak)}")
    print(
        f"{bold('Run')}{report.settings}, {report.elapsed_s / 60:.1f} min; 1-minute "
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


def print_report(report: Report, peak: MatmulPeak, *, markdown: bool) -> None:
    """Prints the header lines, the tables, the checks and the notes to stdout.

    Args:
        report: What the run measured.
        peak: The run's matmul peak (its size and burst name it in the header).
        markdown: GitHub markdown tables instead of aligned text.
    """
    _print_header(report, peak, markdown=markdown)
    tables = []
    if report.rows:
        cells = [_timing_cells(r) for r in report.rows]
        tables.append(format_table(_TIMING_HEADERS, cells, markdown=markdown))
    if report.memory:
        cells = [_memory_cells(r) for r in report.memory]
        tables.append(
            "Peak memory, VGG16 dense, one fresh process per size (peak resident memory after "
            "the pass, VmHWM; baseline = VmRSS with model and input loaded):\n\n"
            + format_table(_MEMORY_HEADERS, cells, markdown=markdown)
        )
    if report.cli:
        cells = [[what, f"{s:.3f}" if s is not None else "-", note] for what, s, note in report.cli]
        tables.append(format_table(("CLI start-up", "s", "remark"), cells, markdown=markdown))
    if report.checks:
        cells = [[t, m, "met" if ok else "NOT MET"] for t, m, ok in report.checks]
        tables.append(
            format_table(("target", "measured", "status"), cells, markdown=markdown)
        )
    for table in tables:
        print(table)
        print()
    for note in report.notes:
        print(f"- {note}" if markdown else f"note: {note}")
