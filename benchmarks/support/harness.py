"""Running benchmark cases: the shared options, the case type, and one run with one matmul peak.

Every case module (``benchmarks/cases/<name>.py``) defines ``CASE = Case(...)`` and ends with
``sys.exit(run_alone(CASE))``, so it runs on its own (``python -m benchmarks.cases.<name>``)
with the shared options (``--quick``, ``--markdown``, ``--repeat``...); ``benchmarks.run``
lists the cases and runs the chosen ones in one process through :func:`run_cases`. Either way
the matmul peak is measured once per run and sampled between every case's timed rounds, and
the tables are printed once at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from benchmarks.support.common import MatmulPeak, log, machine_description
from benchmarks.support.report import Report, print_report

__all__ = ["Case", "Options", "command_line", "options_from", "run_alone", "run_cases"]


@dataclass(frozen=True)
class Options:
    """Command-line choices shared by every case.

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


@dataclass(frozen=True)
class Case:
    """One benchmark case: its name, what it measures, and the function that measures it.

    Attributes:
        name: What ``run.py --cases`` selects and the ``case`` column shows.
        summary: One line: what it measures (``--help``).
        run: Measures, appending rows, checks and notes to the report; it may sample the
            matmul peak (``run_interleaved`` does, once per round).
        in_quick: Whether ``run.py --quick`` without ``--cases`` includes it.
    """

    name: str
    summary: str
    run: Callable[[Options, MatmulPeak, Report], None]
    in_quick: bool = True


def command_line(description: str) -> argparse.ArgumentParser:
    """The parser of the options every case shares; ``run.py`` adds ``--cases``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer runs, smaller time budgets")
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
    return parser


def options_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Options:
    """The options of parsed arguments; reports impossible ones through ``parser.error``."""
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    return Options(
        quick=args.quick,
        repeat=repeat,
        markdown=args.markdown,
        device=args.device,
        budget_s=8.0 if args.quick else 45.0,
        peak_size=args.peak_size,
        memory_sizes=(384, 1024) if args.quick else (384, 1024, 2048),
    )


def run_cases(cases: Sequence[Case], options: Options) -> int:
    """Runs the cases one after the other in this process and prints their tables.

    Args:
        cases: The cases, in table order.
        options: The shared options.

    Returns:
        0: timings on a shared machine are too noisy to fail on, met targets or not.
    """
    torch.manual_seed(0)
    started = time.perf_counter()
    mode = "quick" if options.quick else "full"
    log(f"heatmap-cli benchmarks ({mode}): {', '.join(case.name for case in cases)}")
    log(f"  {machine_description()}")
    report = Report(load=[os.getloadavg()[0]], settings=f"{mode}, --repeat {options.repeat}")
    # A larger product once, to show whether the per-round size underestimates the GEMM rate.
    big = MatmulPeak(2 * options.peak_size, burst=3)
    report.big_peak = (big.size, big.sample())
    del big
    peak = MatmulPeak(options.peak_size)
    for _ in range(5):
        peak.sample()
    for case in cases:
        log(f"case {case.name}")
        case_started = time.perf_counter()
        case.run(options, peak, report)
        gc.collect()  # the case's models go before the next case's arrive
        log(f"  done in {time.perf_counter() - case_started:.0f} s")
    for _ in range(5):
        peak.sample()
    report.peak_samples = list(peak.samples)
    report.load.append(os.getloadavg()[0])
    report.elapsed_s = time.perf_counter() - started
    print_report(report, peak, markdown=options.markdown)
    return 0


def run_alone(case: Case, argv: Sequence[str] | None = None) -> int:
    """The command line of one case file: its options, then :func:`run_cases` on it alone."""
    parser = command_line(f"{case.name}: {case.summary}")
    return run_cases([case], options_from(parser.parse_args(argv), parser))
