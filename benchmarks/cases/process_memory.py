"""process-memory: peak resident memory of whole ``heatmap`` processes (issue 14).

``--memory-budget B`` bounds one pass's activations and its grid; the whole process must stay
within B plus about 1 GiB (the runtime and model, the decoded photo, rendering and writing).
Each run is one fresh ``heatmap`` process on a photo the case makes in a temporary folder:

* ``8192x8192 --size native --memory-budget 1`` and ``2`` (tiled: the grid is 250x250 cells of
  1000 classes, 250 MB), a mosaic of a sample photo saved as a JPEG (left out by ``--quick``);
* a 12-megapixel JPEG (4032x3024) with default options;
* the runtime alone: the 600x400 ``coffee.jpg`` with default options.

A process's peak is its kernel high-water mark (``ru_maxrss``) read by a small launcher process
(``os.wait4`` on its one child), so the benchmark's own memory never counts. A 3072x3072 photo
scored tiled (``--memory-budget 0.5``) and whole checks that the tiled npz equals the untiled one.

Before/after: ``HEATMAP_BENCH_BEFORE=/path/to/other/checkout`` also runs every photo with that
checkout's code (``PYTHONPATH``, ``python -m heatmap_cli``), interleaved with this one's.

Run: .venv/bin/python -m benchmarks.cases.process_memory [--quick] [--markdown]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.support.common import ROOT, SAMPLES, MatmulPeak, log
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report

GIB = 2**30
GOAL_OVER_BUDGET = 1.0
"""GiB a process may hold beyond ``--memory-budget`` (runtime, model, photo, rendering)."""

# Runs `heatmap` as its only child and prints that child's peak RSS (KiB) and wall seconds.
_LAUNCHER = """
import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
_, status, usage = os.wait4(child.pid, 0)
error = child.stderr.read().decode(errors="replace")[-2000:]
print(usage.ru_maxrss, time.perf_counter() - start, os.waitstatus_to_exitcode(status))
print(error, file=sys.stderr)
"""


@dataclass(frozen=True)
class Run:
    """One ``heatmap`` invocation of the case."""

    label: str
    photo: str
    options: tuple[str, ...]
    budget_gib: float | None = None


def mosaic(size: tuple[int, int]) -> Image.Image:
    """A ``(H, W)`` mosaic of ``chelsea.jpg`` shrunk to a shorter side of 1024, as a photo."""
    photo = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    scale = 1024 / min(photo.size)
    photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
    tile = np.asarray(photo)
    reps = (-(-size[0] // tile.shape[0]), -(-size[1] // tile.shape[1]), 1)
    return Image.fromarray(np.ascontiguousarray(np.tile(tile, reps)[: size[0], : size[1]]))


def heatmap_command(code: Path | None) -> tuple[list[str], dict[str, str]]:
    """The command that runs ``heatmap`` from ``code`` (default: this checkout) and its env."""
    env = {**os.environ, "PYTHONPATH": str(code or ROOT)}
    return [sys.executable, "-m", "heatmap_cli"], env


def measure(run: Run, folder: Path, code: Path | None) -> tuple[float, float]:
    """Peak resident GiB and wall seconds of one fresh process; raises if it failed."""
    out = folder / f"out-{abs(hash((run.label, str(code))))}"
    command, env = heatmap_command(code)
    argv = [*command, str(folder / run.photo), "--out", str(out), "-q", *run.options]
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=ROOT,
    )
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 3 or fields[2] != "0":
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return int(fields[0]) * 1024 / GIB, float(fields[1])


def grid_of(folder: Path, photo: str, options: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """The npz logits of one run of this checkout, and how many tiles it took (0: untiled)."""
    out = folder / f"grid-{abs(hash(options))}"
    command, env = heatmap_command(None)
    argv = [*command, str(folder / photo), "--out", str(out), "-q", "--outputs", "npz", *options]
    subprocess.run(argv, check=True, env=env, cwd=ROOT, capture_output=True)
    stem = Path(photo).stem
    tiling = json.loads((out / f"{stem}.json").read_text())["tiling"]
    with np.load(out / f"{stem}.npz") as grid:
        return grid["logits"], tiling["tiles"] if tiling["tiled"] else 0


def runs_for(options: Options) -> list[Run]:
    """The photos and options measured: without ``--quick``, the two 8192x8192 budgets too."""
    runs = [
        Run("runtime: 600x400 coffee.jpg, default options", "coffee.jpg", ()),
        Run("12 MP JPEG (4032x3024), default options", "phone.jpg", ()),
    ]
    if not options.quick:
        for budget in (1.0, 2.0):
            runs.append(
                Run(
                    f"8192x8192 JPEG, --size native --memory-budget {budget:g}",
                    "huge.jpg",
                    ("--size", "native", "--memory-budget", f"{budget:g}"),
                    budget,
                )
            )
    return runs


def make_photos(folder: Path, quick: bool) -> None:
    """The case's inputs: coffee.jpg, a 12 MP JPEG, a 3072 square and (full) an 8192 square."""
    (folder / "coffee.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    mosaic((3024, 4032)).save(folder / "phone.jpg", quality=90)
    mosaic((3072, 3072)).save(folder / "square.jpg", quality=90)
    if not quick:
        mosaic((8192, 8192)).save(folder / "huge.jpg", quality=90)


def check_tiled_grid(folder: Path, report: Report) -> None:
    """The tiled run's npz against the untiled one's, through the command."""
    native = ("--size", "native")
    (tiled, tiles), (whole, untiled) = (
        grid_of(folder, "square.jpg", (*native, "--memory-budget", budget))
        for budget in ("0.5", "64")
    )
    difference = float(np.abs(tiled - whole).max())
    share = difference / float(whole.max() - whole.min())
    report.checks.append(
        (
            "3072x3072 native: the npz tiled (`--memory-budget 0.5`) equals the untiled one",
            f"{tiles} tiles against {untiled}; max abs logit difference {difference:.1e} "
            f"({share:.0e} of the range)",
            tiles > 1 and untiled == 0 and share < 1e-5,
        )
    )


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Measures every run (median of 3, 1 for the 8192 ones) and checks the budgets."""
    del peak  # nothing here is timed against it
    before = os.environ.get("HEATMAP_BENCH_BEFORE")
    codes: list[Path | None] = [None] + ([Path(before)] if before else [])
    with tempfile.TemporaryDirectory(prefix="heatmap-bench-memory-") as name:
        folder = Path(name)
        log("  process-memory: making the photos")
        make_photos(folder, options.quick)
        results: dict[tuple[str, Path | None], list[tuple[float, float]]] = {}
        for entry in runs_for(options):
            repeats = 1 if entry.budget_gib else 3
            for _ in range(repeats):
                for code in codes:  # interleaved: this checkout, then the other one
                    log(f"  process-memory: {entry.label} ({code or 'this checkout'})")
                    results.setdefault((entry.label, code), []).append(
                        measure(entry, folder, code)
                    )
        report_runs(report, runs_for(options), results, codes)
        log("  process-memory: tiled against untiled, 3072x3072")
        check_tiled_grid(folder, report)


def report_runs(
    report: Report,
    runs: list[Run],
    results: dict[tuple[str, Path | None], list[tuple[float, float]]],
    codes: list[Path | None],
) -> None:
    """One note per run and code; one check per budgeted run of this checkout."""
    for entry in runs:
        for code in codes:
            measured = results[(entry.label, code)]
            rss = statistics.median(r for r, _ in measured)
            wall = statistics.median(s for _, s in measured)
            who = "this checkout" if code is None else f"before ({code})"
            report.notes.append(
                f"process memory, {entry.label}, {who}: peak RSS {rss:.2f} GiB, "
                f"{wall:.1f} s wall (median of {len(measured)})"
            )
            if code is None and entry.budget_gib is not None:
                goal = entry.budget_gib + GOAL_OVER_BUDGET
                report.checks.append(
                    (
                        f"{entry.label}: peak RSS below {goal:g} GiB",
                        f"{rss:.2f} GiB",
                        rss < goal,
                    )
                )


CASE = Case(
    "process-memory",
    "peak resident memory of whole heatmap processes: 8192x8192 under --memory-budget, 12 MP",
    run,
    in_quick=False,
)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
