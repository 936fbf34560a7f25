"""What ``--skip-existing`` costs on a large output folder: the size check against checksums.

Runs the command once on ``sample_images/coffee.jpg`` (default model and settings), then makes
N finished images from its outputs: a json per image naming its own files, which are hard links
to the real ones (the same bytes on disk for every image, so 10,000 images need no 25 GB). Then
times, each a median of ``--repeat`` runs over all N images:

* ``marker exists``: what ``--skip-existing`` checked before (the json is there);
* ``size check``: ``heatmap_cli.cli.resume.check_outputs`` (parse the json, compare its settings,
  one ``stat`` per listed file);
* ``sha256 of every file``: what a checksum would cost, over ``--hashed`` images (page cache
  warm: a lower bound; from a cold disk it is bounded by the disk's read rate), scaled to N;
* ``stale temporaries``: the walk over the output folder that every run makes at start
  (``io.remove_stale_temporaries``), finding nothing to remove.

    .venv/bin/python -m benchmarks.studies.resume_check [--images 10000] [--repeat 3] [--hashed 200]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePath

from benchmarks.support.paths import ROOT
from heatmap_cli.cli.resume import check_outputs
from heatmap_cli.io import remove_stale_temporaries


def template(folder: Path) -> dict:
    """The json of one real image, made by the command with its defaults."""
    heatmap = Path(sys.executable).with_name("heatmap")
    photo = ROOT / "sample_images" / "coffee.jpg"
    subprocess.run([str(heatmap), str(photo), "--out", str(folder), "-q"], check=True)
    return json.loads((folder / "coffee.json").read_bytes())


def make_images(folder: Path, record: dict, source: Path, count: int) -> None:
    """``count`` finished images ``img<i>``, their files hard links to the template's."""
    for i in range(count):
        stem = f"img{i:05d}"
        files = []
        for entry in record["files"]:
            name = entry["name"].replace("coffee", stem, 1)
            os.link(source / entry["name"], folder / name)
            files.append({"name": name, "bytes": entry["bytes"]})
        (folder / f"{stem}.json").write_text(json.dumps({**record, "files": files}))


def timed(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sha256_all(folder: Path, stems: list[str]) -> None:
    for stem in stems:
        record = json.loads((folder / f"{stem}.json").read_bytes())
        for entry in record["files"]:
            digest = hashlib.sha256()
            with open(folder / entry["name"], "rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hashed", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        source, folder = Path(scratch) / "source", Path(scratch) / "out"
        folder.mkdir()
        record = template(source)
        make_images(folder, record, source, args.images)
        stems = [f"img{i:05d}" for i in range(args.images)]
        settings = record["settings"]
        per_image = sum(entry["bytes"] for entry in record["files"])

        exists = timed(lambda: [(folder / f"{s}.json").exists() for s in stems], args.repeat)
        verdicts: list = []
        sizes = timed(
            lambda: verdicts.append([check_outputs(folder, PurePath(s), settings) for s in stems]),
            args.repeat,
        )
        assert all(v.done for v in verdicts[-1])
        cleaning = timed(lambda: remove_stale_temporaries(folder), args.repeat)
        hashed = timed(lambda: sha256_all(folder, stems[: args.hashed]), 1)
    scale = args.images / args.hashed
    print(
        f"{args.images} images, {len(record['files'])} files + json each, "
        f"{per_image / 1e6:.2f} MB per image ({per_image * args.images / 1e9:.1f} GB in all)"
    )
    print(f"marker exists:          {exists:8.3f} s")
    print(f"size check:             {sizes:8.3f} s  ({sizes / args.images * 1e6:.0f} us per image)")
    print(
        f"sha256 of every file:   {hashed * scale:8.1f} s  (measured on {args.hashed} images, "
        f"warm cache, {per_image * args.hashed / hashed / 1e6:.0f} MB/s)"
    )
    print(f"stale temporaries walk: {cleaning:8.3f} s")


if __name__ == "__main__":
    main()
