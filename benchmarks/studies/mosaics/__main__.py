"""``python -m benchmarks.studies.mosaics``: the texture-mosaic fidelity benchmark.

    .venv/bin/python -m benchmarks.studies.mosaics --quick      # minutes once models are cached
    .venv/bin/python -m benchmarks.studies.mosaics              # full: every model and table

See ``benchmarks/studies/mosaics/README.md``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from .runs import HEATMAP_ENV
from .study import Plan, run_study, write_results

TABLES = ("accuracy", "fidelity", "photos")


def _model_spec(text: str) -> tuple[str, int]:
    arch, _, window = text.partition("@")
    if not window.isdigit():
        raise argparse.ArgumentTypeError(f"expected ARCH@WINDOW (e.g. resnet18@96), got {text!r}")
    return arch, int(window)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.studies.mosaics", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="one model, 6 mosaics")
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--models", nargs="+", type=_model_spec, metavar="ARCH@WINDOW",
                        help="table (a)'s models (default: quick shufflenet_v2_x1_0@96, full "
                        "all four at 96)")  # fmt: skip
    parser.add_argument("--methods", nargs="+", help="table (a)'s --method values (default: "
                        "dense, refine once registered, crops)")  # fmt: skip
    parser.add_argument("--fidelity-models", nargs="+", type=_model_spec, metavar="ARCH@WINDOW")
    parser.add_argument("--mosaics", type=int, help="mosaics in table (a)'s set")
    parser.add_argument("--side", type=int, help="their side (window + 32 k; default 768)")
    parser.add_argument("--repeat", type=int, default=1, help="timed processes per method")
    parser.add_argument("--threads", type=int, help="CPU threads of every process (default: "
                        "torch's; 1 on a shared, oversubscribed machine)")  # fmt: skip
    parser.add_argument("--heatmap", type=Path, help="the heatmap executable to time (another "
                        "checkout's; default this venv's; also MOSAICS_HEATMAP)")  # fmt: skip
    parser.add_argument("--reuse", action="store_true", help="take table (a)'s rows measured "
                        "earlier with the same settings from the cache")  # fmt: skip
    parser.add_argument("--no-peers", action="store_true", help="leave Grad-CAM out")
    parser.add_argument("--cache", type=Path, help="default: MOSAICS_CACHE or ./cache beside")
    parser.add_argument("--results", type=Path, help="markdown out (default "
                        "benchmarks/results/fidelity.md, quick: fidelity-quick.md)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.heatmap:
        os.environ[HEATMAP_ENV] = str(args.heatmap.resolve())
    changes: dict[str, object] = {
        "repeat": args.repeat,
        "threads": args.threads,
        "reuse": args.reuse,
        "methods": args.methods,
        "peers": not args.no_peers,
        "log": _log,
    }
    if args.models:
        changes["accuracy_models"] = args.models
    if args.fidelity_models:
        changes["fidelity_models"] = args.fidelity_models
    if args.mosaics:
        changes["mosaics"] = args.mosaics
    if args.side:
        changes["side"] = args.side
    plan = Plan.make(args.quick, args.cache, **changes)
    torch.set_grad_enabled(True)
    command = shlex.join(["python", "-m", "benchmarks.studies.mosaics", *(argv or sys.argv[1:])])
    markdown, raw = run_study(plan, tuple(args.tables), command)
    name = "fidelity-quick.md" if plan.quick else "fidelity.md"
    results = args.results or Path(__file__).resolve().parents[2] / "results" / name
    write_results(markdown, raw, results)
    print(markdown)
    _log(f"written: {results} (+ .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
