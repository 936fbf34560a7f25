"""help: ``heatmap --help`` must answer fast, without importing torch (issue 5).

Times ``heatmap --help`` (median of 11 runs, 5 in ``--quick``) next to the bare interpreter
start-up, and runs it under ``python -X importtime`` to check that no torch, torchvision or timm
module is imported.

Run: .venv/bin/python -m benchmarks.cases.help [--quick] [--markdown]
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.support.common import ROOT, MatmulPeak, log
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report

TARGET_HELP_S = 0.5
_ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "")}


def help_command() -> list[str]:
    """How to run ``heatmap --help`` here: the console script, else ``-m heatmap_cli``."""
    script = Path(sys.executable).parent / "heatmap"
    if script.is_file():
        return [sys.executable, str(script), "--help"]
    return [sys.executable, "-m", "heatmap_cli", "--help"]


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of one run of ``command`` from the repository root, and its result."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=_ENV, cwd=ROOT)
    return time.perf_counter() - start, done


def imported_modules(command: list[str]) -> tuple[list[str], float]:
    """The modules ``command`` imports (``-X importtime``) and their summed self time in s."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *command[1:]],
        capture_output=True,
        text=True,
        check=False,
        env=_ENV,
        cwd=ROOT,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    modules = [line.split("|")[-1].strip() for line in lines if "|" in line]
    self_us = [line.split("|")[0].split(":")[1].strip() for line in lines]
    return modules, sum(int(us) for us in self_us if us.isdigit()) / 1e6


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times ``heatmap --help`` and checks what it imports."""
    del peak  # nothing here is timed against it
    command = help_command()
    runs = 5 if options.quick else 11
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
    shown = "heatmap --help" if "heatmap" in command[1] else "python -m heatmap_cli --help"
    report.cli.append((f"`{shown}` (median of {runs})", help_s, failure or "ok"))
    interpreter = f"`python -c pass` (interpreter start, median of {runs})"
    report.cli.append((interpreter, statistics.median(bare_times), ""))
    modules, import_s = imported_modules(command)
    heavy = sorted({m for m in modules if re.match(r"^(torch|torchvision|timm)\b", m)})
    imports = ("HEAVY: " + ", ".join(heavy[:5])) if heavy else "no torch/torchvision/timm"
    report.cli.append(
        (
            f"`python -X importtime {' '.join(command[1:]).replace(str(ROOT) + '/', '')}`",
            import_s,
            f"{len(modules)} modules imported (self time summed); {imports}",
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


CASE = Case("help", "`heatmap --help`: start-up time, and that it imports no torch", run)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
