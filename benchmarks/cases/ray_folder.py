"""ray-folder: 24 photos of 12 MP, the whole command plain against ``--ray`` (Ray's overhead).

The photos are made from ``sample_images/`` into a temporary folder (4000x3000 JPEGs, quality
90, each a different crop); the default model, default options (``--size 384``, three classes:
three full-size overlays, a contact sheet, npz, json per photo). Each configuration is the
installed ``heatmap`` command in a fresh process, from start to summary line, so Ray's
start-up (a local Ray, one actor process per worker, the model converted in every actor) is
in its time:

* ``plain``: ``heatmap photos --out A``;
* ``--ray, N actors``: ``heatmap photos --out B --ray --workers N`` for N = 1 and 2 (each actor
  reserves one CPU, so Ray runs the network with one thread in each).

Also the per-image time split, measured in-process on three of the photos one by one
(``loader.prepare``: decode, orient, resize; the network: ``score_images`` less that;
``writers.write_outputs``: render and write), and the bytes per image that Ray moves (the
row an actor returns) against what the shared file system carries (the photo read, the
outputs written): the figures behind the scaling paragraph of ``docs/ray.md``.

Run: .venv/bin/python -m benchmarks.cases.ray_folder [--quick] [--markdown]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.support.common import SAMPLES, MatmulPeak, log
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report, TimingRow
from heatmap_cli.cli.command import CommandOptions
from heatmap_cli.cli.manifest import MANIFEST_NAME
from heatmap_cli.cli.options import main
from heatmap_cli.io import find_images

PHOTO_SIZE = (4000, 3000)  # 12 MP, a phone camera's
PHOTOS = 24
_QUICK_PHOTOS = 8


def make_photos(folder: Path, count: int) -> list[Path]:
    """Writes ``count`` 12 MP JPEGs made from ``sample_images/`` (crops shifted photo by photo).

    Args:
        folder: Where to write them (created).
        count: How many.

    Returns:
        The written files.
    """
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        shift = index // len(sources)  # a different crop each time: no two photos alike
        box = (shift, shift, source.width - shift, round((source.width - 2 * shift) * 3 / 4))
        photo = source.crop(box).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
        path = folder / f"photo_{index:02d}.jpg"
        photo.save(path, quality=90)
        paths.append(path)
    return paths


def heatmap_command(folder: Path, out: Path, *extra: str) -> float:
    """Wall seconds of one ``heatmap`` command in a fresh process (it must succeed)."""
    script = Path(sys.executable).parent / "heatmap"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(
        [str(script), str(folder), "--out", str(out), "-q", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"heatmap {' '.join(extra)}: exit {done.returncode}: {done.stderr}")
    return seconds


def per_image_split(paths: list[Path], out: Path) -> dict[str, float]:
    """Median seconds per photo of reading, the network, and rendering + writing, one by one.

    ``read``: ``loader.prepare`` (decode, orient, resize, the display copy); ``network``: the
    engine's forward pass on the resized photo (after one warm-up pass); ``render_write``:
    ``writers.write_outputs`` (overlays, sheet, npz, json); ``npz_json_write``: the same with
    ``--outputs npz,json`` (no pictures), what a job that only needs the numbers pays.
    """
    from heatmap_cli.cli.command import start_job
    from heatmap_cli.cli.writers import write_outputs
    from heatmap_cli.pipeline.scoring import prepare, score_images

    job = start_job(_options(out), (1.0,))
    phases: dict[str, list[float]] = {
        "read": [],
        "network": [],
        "render_write": [],
        "npz_json_write": [],
    }
    numbers_only = dataclasses.replace(job.rendering, outputs=("npz", "json"))
    for index, item in enumerate(find_images(paths)):
        started = time.perf_counter()
        prepared = prepare(item, job.engine)
        read_s = time.perf_counter() - started
        inputs = np.stack([p.network_input() for p in prepared.passes])
        for _ in range(2 if index == 0 else 1):  # the first pass also sets up the kernels
            started = time.perf_counter()
            job.engine.score_batch(inputs)
            network_s = time.perf_counter() - started
        [outcome] = score_images([item], job.engine, workers=1)
        started = time.perf_counter()
        write_outputs(outcome.unwrap(), job.engine, job.rendering, out)
        phases["render_write"].append(time.perf_counter() - started)
        started = time.perf_counter()
        write_outputs(outcome.unwrap(), job.engine, numbers_only, out / "numbers")
        phases["npz_json_write"].append(time.perf_counter() - started)
        phases["read"].append(read_s)
        phases["network"].append(network_s)
    return {phase: statistics.median(times) for phase, times in phases.items()}


def _options(out: Path) -> CommandOptions:
    """The command's default options, as ``heatmap photos --out OUT --device cpu`` parses them."""
    context = main.make_context("heatmap", ["photos", "--out", str(out), "--device", "cpu"])
    return CommandOptions(**context.params)


def bytes_per_image(out: Path, count: int) -> tuple[float, float]:
    """Mean bytes of outputs written per image, and of the row an actor returns (the manifest's)."""
    written = sum(p.stat().st_size for p in out.rglob("*") if p.name != MANIFEST_NAME)
    rows = (out / MANIFEST_NAME).read_text(encoding="ascii").splitlines()
    return written / count, statistics.mean(len(row) for row in rows)


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times the command plain and on Ray with one and two actors; splits an image's time."""
    del peak  # the whole command is timed, not a matmul-bound call
    count = _QUICK_PHOTOS if options.quick else PHOTOS
    configurations = {
        "plain": (),
        "--ray, 1 actor": ("--ray", "--workers", "1"),
        "--ray, 2 actors": ("--ray", "--workers", "2"),
    }
    with tempfile.TemporaryDirectory(prefix="heatmap-bench-ray-") as tmp:
        folder = Path(tmp) / "photos"
        paths = make_photos(folder, count)
        photo_mb = sum(p.stat().st_size for p in paths) / count / 1e6
        log(f"  ray-folder: {count} photos of 12 MP ({photo_mb:.1f} MB each)")
        seconds = {}
        for label, extra in configurations.items():
            log(f"  ray-folder: {label}")
            seconds[label] = heatmap_command(folder, Path(tmp) / "out", *extra)
        written, row_bytes = bytes_per_image(Path(tmp) / "out", count)
        split = per_image_split(paths[:3], Path(tmp) / "split")
    load = os.getloadavg()[0]
    for label, wall in seconds.items():
        report.rows.append(_row(label, wall, count, seconds["plain"]))
    total = split["read"] + split["network"] + split["render_write"]
    report.notes.append(
        "ray-folder: per image, one by one in-process: "
        + ", ".join(f"{k} {split[k]:.2f} s ({split[k] / total:.0%})" for k in list(split)[:3])
        + f" (--outputs npz,json: {split['npz_json_write']:.2f} s to write)"
        + f"; {photo_mb:.1f} MB read and {written / 1e6:.1f} MB written per image on the "
        f"shared file system, {row_bytes:.0f} bytes per image back through Ray's object store "
        f"(the path there: under 200 bytes; a decoded photo would be "
        f"{PHOTO_SIZE[0] * PHOTO_SIZE[1] * 3 / 1e6:.0f} MB); load average {load:.1f}"
    )
    report.notes.append(
        "ray-folder: each configuration once, a fresh process each (--ray: Ray's start-up, "
        "the actors' model loading and conversion included)"
    )


def _row(label: str, wall: float, count: int, plain_s: float) -> TimingRow:
    return TimingRow(
        case=CASE.name,
        model="efficientnet_lite0",
        input=f"{count} photos, 12 MP",
        grid="-",
        stride=32,
        method=label,
        gflop=float("nan"),
        runs=1,
        median_s=wall,
        images_per_s=count / wall,
        gflops=float("nan"),
        peak_fraction=float("nan"),
        note=f"{wall / plain_s:.2f}x the plain run's time",
    )


CASE = Case(
    "ray-folder",
    "24 photos of 12 MP: the whole command, plain against --ray with 1 and 2 actors",
    run,
    in_quick=False,
)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
