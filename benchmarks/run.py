"""Runs several benchmark cases in one process and prints their tables together.

Usage::

    .venv/bin/python -m benchmarks.run          # every case (about 11 minutes on 2 cores)
    .venv/bin/python -m benchmarks.run --quick  # every case but tuning, about 2 minutes
    .venv/bin/python -m benchmarks.run --cases vgg16-384 help --repeat 9 --markdown

Run from the repository root. Each case is one module, ``benchmarks/cases/<name>.py``, that
also runs alone with the same options (``python -m benchmarks.cases.<name>``). Here the
matmul peak is measured once for the whole run and sampled between every case's timed rounds.
See ``benchmarks/README.md`` for what each case and column means.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from benchmarks.cases import (
    cuda,
    end_to_end,
    folder,
    lite0_384,
    memory,
    process_memory,
    ray_folder,
    resnet50_512,
    tuning,
    vgg16_384,
)
from benchmarks.cases import (
    help as help_case,
)
from benchmarks.support.harness import Case, command_line, options_from, run_cases

CASES: tuple[Case, ...] = (
    vgg16_384.CASE,
    lite0_384.CASE,
    resnet50_512.CASE,
    folder.CASE,
    ray_folder.CASE,
    memory.CASE,
    process_memory.CASE,
    help_case.CASE,
    end_to_end.CASE,
    tuning.CASE,
    cuda.CASE,
)
"""Every case, in table order: a new case is a ``cases/<name>.py`` module and one line here."""


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
