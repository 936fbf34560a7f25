"""end-to-end: what a user waits for, whole ``heatmap`` processes from a cold start (issue 14).

Makes its inputs from ``sample_images/`` in a temporary folder: a 600x400 photo (``coffee.jpg``),
one 4032x3024 JPEG with EXIF (a sample photo upscaled, quality 90, camera tags), and a folder of
24 such photos (crops and mirror images of the samples, every third EXIF-rotated: orientation 6,
8 or 3, its pixels stored turned). Each is run as a new ``heatmap`` process with default options
(the folder also with ``--max-overlay-side 512``), output to a fresh folder every run; the median
of the runs is reported, rounds interleaved. Each run sets ``HEATMAP_PROFILE=1``, so the command
says its stage times (``heatmap_cli.pipeline.profiling``: import, load, convert, decode, network,
render, encode+write) on stderr: their medians are the breakdown. Decoding and encoding run in
threads next to the main one, so stages can add up to more than the wall time.

``--before SCRIPT`` (or ``E2E_BEFORE=SCRIPT``) also times another checkout's ``heatmap`` console
script in the same rounds, interleaved run for run: the figures before a change, on the same
machine under the same load (a version without the stage line gets no breakdown).

Run: .venv/bin/python -m benchmarks.cases.end_to_end [--quick] [--markdown] [--repeat N]
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from benchmarks.support.common import ROOT, SAMPLES, MatmulPeak, log
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report

PHONE_SIZE = (4032, 3024)
FOLDER_COUNT = 24
GOALS = {"small": 2.0, "12mp": 2.5}
"""Wall-time goals of issue 14, in seconds (2-core machine, default options)."""
GOAL_FOLDER_RATE = 1.5
GOAL_OVERLAY_RATIO = 2.5
_STAGE_LINE = re.compile(r"^stages \(s\): (.*)$", re.MULTILINE)
_ROTATIONS = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.ROTATE_180}
"""EXIF orientation -> how the stored pixels are turned, so that the photo shows upright."""


@dataclass
class Timings:
    """One scenario under one ``heatmap``: wall seconds and stage seconds per run."""

    walls: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    failure: str = ""

    def stage_medians(self) -> dict[str, float]:
        """Median seconds per stage over the runs that said their stages."""
        names = [name for run in self.stages for name in run]
        return {
            name: statistics.median(run[name] for run in self.stages if name in run)
            for name in dict.fromkeys(names)
        }


def camera_exif(orientation: int = 1) -> Image.Exif:
    """A phone's EXIF: make, model, date, and the orientation."""
    exif = Image.Exif()
    exif[0x010F] = "heatmap-cli benchmark"  # Make
    exif[0x0110] = "12 MP phone"  # Model
    exif[0x0132] = "2026:01:01 12:00:00"  # DateTime
    exif[0x0112] = orientation
    return exif


def phone_photo(source: Image.Image, path: Path, orientation: int = 1) -> Path:
    """Writes ``source`` as a 4032x3024 JPEG (quality 90) with EXIF, turned for ``orientation``."""
    photo = ImageOps.fit(source, PHONE_SIZE, Image.Resampling.BICUBIC)
    if orientation in _ROTATIONS:
        photo = photo.transpose(_ROTATIONS[orientation])
    photo.save(path, quality=90, exif=camera_exif(orientation))
    return path


def make_inputs(folder: Path) -> dict[str, Path]:
    """The benchmark's photos: ``small``, ``12mp`` and the ``folder`` of 24."""
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    small = folder / "coffee.jpg"
    shutil.copyfile(SAMPLES / "coffee.jpg", small)
    single = phone_photo(sources[-1], folder / "phone.jpg")
    photos = folder / "photos"
    photos.mkdir()
    for index in range(FOLDER_COUNT):
        source = sources[index % len(sources)]
        width, height = source.size
        margin = (index // len(sources)) % 4 * 0.04  # crops of 0 to 12 % per side
        box = (width * margin, height * margin, width * (1 - margin), height * (1 - margin))
        picture = source.crop(tuple(round(v) for v in box))
        if index % 2:
            picture = ImageOps.mirror(picture)
        orientation = (6, 8, 3)[index // 3 % 3] if index % 3 == 2 else 1
        phone_photo(picture, photos / f"photo_{index:02d}.jpg", orientation)
    return {"small": small, "12mp": single, "folder": photos}


SCENARIOS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("small", "one 600x400 photo", ()),
    ("12mp", "one 12 MP JPEG (4032x3024, EXIF)", ()),
    ("folder", f"a folder of {FOLDER_COUNT} 12 MP photos", ()),
    ("folder", "the folder, --max-overlay-side 512", ("--max-overlay-side", "512")),
)
"""``(input, description, extra options)``; every run also gets ``-q`` and a fresh ``-o``."""


def run_once(script: Path, target: Path, extra: tuple[str, ...], out: Path) -> tuple[float, str]:
    """Wall seconds of one ``heatmap`` process, and its stderr (or the failure)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [str(script), str(target), "-o", str(out), "-q", *extra]
    env = {**os.environ, "HEATMAP_PROFILE": "1"}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-300:]}")
    return seconds, done.stderr


def parse_stages(stderr: str) -> dict[str, float]:
    """``{stage: seconds}`` from the command's ``stages (s): ...`` line; empty without it."""
    found = _STAGE_LINE.search(stderr)
    if found is None:
        return {}
    pairs = (part.rsplit(" ", 1) for part in found.group(1).split(", "))
    return {name: float(value) for name, value in pairs}


def commands(extra_before: str | None) -> dict[str, Path]:
    """``{"after": this checkout's heatmap, "before": the other one's}`` (before if given)."""
    scripts = {"after": Path(sys.executable).parent / "heatmap"}
    before = extra_before or os.environ.get("E2E_BEFORE")
    if before:
        scripts["before"] = Path(before)
    return scripts


def measure(options: Options, before: str | None = None) -> dict[tuple[str, int], Timings]:
    """Runs every scenario under every script, in interleaved rounds."""
    rounds = 1 if options.quick else max(1, min(options.repeat, 3))
    scripts = commands(before)
    results = {(label, i): Timings() for label in scripts for i in range(len(SCENARIOS))}
    with tempfile.TemporaryDirectory(prefix="heatmap-e2e-") as temp:
        folder = Path(temp)
        inputs = make_inputs(folder)
        for script in scripts.values():  # warm the file cache, compile bytecode
            run_once(script, inputs["small"], (), folder / "warm")
        for round_index in range(rounds):
            for index, (key, description, extra) in enumerate(SCENARIOS):
                for label, script in scripts.items():
                    timings = results[(label, index)]
                    if timings.failure:
                        continue
                    try:
                        wall, stderr = run_once(script, inputs[key], extra, folder / "out")
                    except RuntimeError as error:
                        timings.failure = str(error)
                        continue
                    timings.walls.append(wall)
                    timings.stages.append(parse_stages(stderr))
                    log(f"  round {round_index + 1}: {description} ({label}): {wall:.2f} s")
    return results


def run(options: Options, peak: MatmulPeak, report: Report, before: str | None = None) -> None:
    """Times the four scenarios (and those of ``before``) and checks the goals."""
    del peak  # whole processes: nothing here is a matrix product
    results = measure(options, before)
    medians: dict[tuple[str, int], float] = {}
    for (label, index), timings in results.items():
        _, description, _ = SCENARIOS[index]
        if not timings.walls:
            report.cli.append((f"{description} ({label})", None, timings.failure or "no run"))
            continue
        wall = medians[(label, index)] = statistics.median(timings.walls)
        count = FOLDER_COUNT if SCENARIOS[index][0] == "folder" else 1
        stages = ", ".join(f"{k} {v:.2f}" for k, v in timings.stage_medians().items())
        remark = f"{count / wall:.2f} images/s, {len(timings.walls)} runs"
        report.cli.append(
            (f"{description} ({label})", wall, f"{remark}; {stages}" if stages else remark)
        )
    _check_goals(report, medians)
    report.notes.append(f"end-to-end: load average at the end {os.getloadavg()}")


def _check_goals(report: Report, medians: dict[tuple[str, int], float]) -> None:
    """The goals of issue 14 against this checkout's medians."""
    for index, (key, description, extra) in enumerate(SCENARIOS):
        wall = medians.get(("after", index))
        if wall is None or extra:
            continue
        if key in GOALS:
            goal = GOALS[key]
            report.checks.append((f"{description} <= {goal} s", f"{wall:.2f} s", wall <= goal))
        if key == "folder":
            rate = FOLDER_COUNT / wall
            met = rate >= GOAL_FOLDER_RATE
            report.checks.append(
                (f"{description} >= {GOAL_FOLDER_RATE} images/s", f"{rate:.2f}", met)
            )
            small = medians.get(("after", index + 1))
            if small is not None:
                ratio = wall / small
                report.checks.append(
                    (
                        f"default overlays <= {GOAL_OVERLAY_RATIO}x --max-overlay-side 512",
                        f"{ratio:.2f}x",
                        ratio <= GOAL_OVERLAY_RATIO,
                    )
                )


CASE = Case(
    "end-to-end",
    "whole `heatmap` processes on real photos, with stage times",
    run,
    in_quick=False,  # minutes: run.py --quick leaves it out unless --cases names it
)

if __name__ == "__main__":
    arguments = sys.argv[1:]
    before_script = None
    if "--before" in arguments:
        at = arguments.index("--before")
        before_script = arguments[at + 1]
        del arguments[at : at + 2]
    sys.exit(
        run_alone(
            Case(CASE.name, CASE.summary, lambda o, p, r: run(o, p, r, before_script)),
            arguments,
        )
    )
