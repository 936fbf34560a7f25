"""memory: peak resident memory of one VGG16 dense pass at 384, 1024 and 2048, each alone.

A process's peak resident memory only goes up, so every size runs in a fresh process
(:mod:`benchmarks.support.memory_probe`, which says how the peak and the baseline are read);
``--quick`` leaves out 2048.

Run: .venv/bin/python -m benchmarks.cases.memory [--quick] [--markdown]
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.support.common import ROOT, MatmulPeak, log
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import MemoryRow, Report

PROBE = "benchmarks.support.memory_probe"


def probe(size: int) -> MemoryRow:
    """One VGG16 dense pass on a ``size`` x ``size`` input, in a fresh process."""
    command = [sys.executable, "-m", PROBE, "--model", "vgg16", "--size", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    row = MemoryRow("vgg16", f"{size}x{size}", "-")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        row.note = f"probe failed ({done.returncode}): {tail}"
        return row
    result = json.loads(done.stdout.strip().splitlines()[-1])
    row.grid = "x".join(str(v) for v in result["grid"])
    row.baseline_mib = result["baseline_mib"]
    row.peak_mib = result["peak_mib"]
    row.extra_mib = result["extra_mib"]
    row.largest_layer_mib = result["largest_layer_mib"]
    row.seconds = result["seconds"]
    if not result["peak_reset"]:
        row.note = "peak not reset after loading (no /proc/self/clear_refs): a bound"
    return row


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Probes every size of ``options.memory_sizes``."""
    del peak  # nothing here is timed against it
    for size in options.memory_sizes:
        log(f"  memory: vgg16 {size}x{size}")
        report.memory.append(probe(size))
    if 2048 not in options.memory_sizes:
        report.notes.append("memory: 2048x2048 skipped (--quick)")


CASE = Case("memory", "peak memory of one VGG16 dense pass at 384, 1024, 2048", run)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
