"""What a method and the fidelity check cost, as whole ``heatmap`` processes on a 12 MP photo.

Every variant is one fresh ``heatmap`` process on the same 4032x3024 JPEG (two sample photos
side by side, upscaled), default options unless the variant says otherwise; rounds are
interleaved (one round runs every variant once) and medians reported: wall seconds, and the
CPU seconds of the process (user + system, from ``os.wait4``), which a loaded machine disturbs
less; and, within each process that checks fidelity, the check's own wall seconds (its
``fidelity`` stage under ``HEATMAP_PROFILE=1``) as a share of that process's wall time: a ratio
measured inside one process, which the load changes far less than a difference between two
processes. Issue 23's targets: ``--fidelity`` at its default costs at most 10% of the run; ``auto``
adds at most a quarter.

Runs alone, from the repository root::

    .venv/bin/python benchmarks/cases/fidelity_cost.py [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_images"

VARIANTS: dict[str, tuple[str, ...]] = {
    "dense, --fidelity 0": ("--method", "dense", "--fidelity", "0"),
    "dense, default --fidelity": ("--method", "dense"),
    "auto (default), --fidelity 0": ("--fidelity", "0"),
    "auto (default), default --fidelity": (),
    "crops, --fidelity 0": ("--method", "crops", "--fidelity", "0"),
}


def phone_photo(folder: Path) -> Path:
    """A 4032x3024 JPEG: chelsea and coffee side by side (two objects), quality 90."""
    left = Image.open(SAMPLES / "chelsea.jpg").convert("RGB")
    right = Image.open(SAMPLES / "coffee.jpg").convert("RGB")
    photo = Image.new("RGB", (4032, 3024))
    photo.paste(ImageOps.fit(left, (2016, 3024)), (0, 0))
    photo.paste(ImageOps.fit(right, (2016, 3024)), (2016, 0))
    path = folder / "two.jpg"
    photo.save(path, quality=90)
    return path


def run_once(
    photo: Path, extra: tuple[str, ...], out: Path, threads: int | None
) -> tuple[float, float, float]:
    """One process: ``(wall seconds, CPU seconds, the fidelity stage's wall seconds)``."""
    script = Path(sys.executable).with_name("heatmap")
    env = dict(os.environ, HEATMAP_PROFILE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    process = subprocess.Popen(
        [str(script), str(photo), "--out", str(out), "-q", *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if status != 0:
        raise RuntimeError(f"heatmap {' '.join(extra)} failed: {stderr}")
    return wall, usage.ru_utime + usage.ru_stime, fidelity_seconds(stderr)


def fidelity_seconds(stderr: str) -> float:
    """The ``fidelity`` stage's seconds in a ``HEATMAP_PROFILE=1`` line (0 when absent)."""
    found = re.search(r"\bfidelity ([0-9.]+)", stderr)
    return float(found.group(1)) if found else 0.0


def main() -> None:
    """Runs every variant in interleaved rounds; prints one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fidelity-cost-") as folder:
        photo = phone_photo(Path(folder))
        times: dict[str, list[tuple[float, float, float]]] = {n: [] for n in args.variants}
        for index in range(args.rounds + 1):  # round 0 warms the caches, not counted
            for name in args.variants:
                out = Path(folder) / f"out{index}"
                measured = run_once(photo, VARIANTS[name], out, args.threads)
                if index:
                    times[name].append(measured)
    load = os.getloadavg()[0]
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if "model name" in line), "?")
    print(
        f"{cpu}, {os.cpu_count()} cores, OMP_NUM_THREADS={args.threads or 'default'}, "
        f"load average {load:.1f} at the end, {args.rounds} rounds"
    )
    print("| variant | wall s (median) | CPU s (median) | fidelity check, share of its run |")
    print("|---|---|---|---|")
    for name, measured in times.items():
        wall = statistics.median(m[0] for m in measured)
        cpu_s = statistics.median(m[1] for m in measured)
        shares = [m[2] / m[0] for m in measured]
        share = (
            "-"
            if not any(shares)
            else f"{statistics.median(shares):.1%} ({min(shares):.1%}-{max(shares):.1%})"
        )
        print(f"| {name} | {wall:.2f} | {cpu_s:.2f} | {share} |")


if __name__ == "__main__":
    main()
