"""Runs several benchmark cases in one process and prints their tables together.

Usage::

    .venv/bin/python benchmarks/run.py                 # every case (about 11 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick         # every case but tuning, about 2 minutes
    .venv/bin/python benchmarks/run.py --cases vgg16-384 help --repeat 9 --markdown

Each case is one file, ``case_<name>.py``, that also runs alone with the same options. Here the
matmul peak is measured once for the whole run and sampled between every case's timed rounds.
See ``benchmarks/README.md`` for what each case and column means.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import case_cuda
import case_end_to_end
import case_folder
import case_help
import case_instant
import case_lite0_384
import case_memory
import case_process_memory
import case_ray_folder
import case_resnet50_512
import case_tuning
import case_vgg16_384
from _harness import Case, command_line, options_from, run_cases

CASES: tuple[Case, ...] = (
    case_vgg16_384.CASE,
    case_lite0_384.CASE,
    case_resnet50_512.CASE,
    case_folder.CASE,
    case_ray_folder.CASE,
    case_memory.CASE,
    case_process_memory.CASE,
    case_help.CASE,
    case_instant.CASE,
    case_end_to_end.CASE,
    case_tuning.CASE,
    case_cuda.CASE,
)
"""Every case, in table order: a new case is a ``case_<name>.py`` file and one line here."""


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the options, picks the cases and runs them."""
    parser = command_line("Time dense score grids against per-window crops (GitHub issue 5).")
    names = [case.name for case in CASES]
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=names,
        metavar="CASE",
        help=f"cases to run (default: all; --quick: all but tuning): {', '.join(names)}",
    )
    args = parser.parse_args(argv)
    options = options_from(args, parser)
    if args.cases:
        chosen = [case for case in CASES if case.name in args.cases]
    else:
        chosen = [case for case in CASES if case.in_quick or not options.quick]
    return run_cases(chosen, options)


if __name__ == "__main__":
    sys.exit(main())
