"""The HTML report: bytes per image, build time, and how fast 1000 images open in Chromium.

Two parts:

* ``sizes``: the command with ``--report`` on ``sample_images/coffee.jpg`` (600x400) with the
  shipped default model at stride 32 and 8; prints the bytes of each per-image file, the
  image's share of ``index.html``, how many class maps were stored, and the npz for scale.
* ``load``: ``--images`` synthetic finished images (json + npz with 1000 classes on a 6x12
  grid, as the default model writes for a 600x400 photo at stride 32; the photos are the
  sample photos), the report written cold (every file new) and warm (all cached), then
  ``index.html`` opened in a fresh headless Chromium ``--repeat`` times. It prints the median
  time from navigation to the gallery being built (the page's ``heatmap-report-ready`` mark),
  to the load event, the number of thumbnails loaded (lazy: only those in view), and three
  interactions: opening the last image (its data script loaded and map drawn), filtering the
  gallery, and scrolling to its end until the last thumbnail shows.

Needs Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``) and
selenium (the ``test`` extra); the browser helper is ``tests/helpers/browser.py``.

Run: .venv/bin/python -m benchmarks.studies.report_load [--images 1000] [--repeat 5]
     [--part sizes|load]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.support.common import SAMPLES, cpu_model
from heatmap_cli.report import ASSETS_DIR_NAME, REPORT_FILE, write_report
from tests.helpers.browser import headless_chromium

CLASSES = 1000
GRID = (6, 12)
WINDOW_CENTRES = (116.667, 116.667)  # original pixels: 600x400 photo, 576x384 input
STEP = 33.333

OPEN_IMAGE_JS = """
const [key, done] = [arguments[0], arguments[arguments.length - 1]];
const viewer = document.getElementById('viewer');
const canvas = document.getElementById('v-map');
const start = performance.now();
location.hash = key;
(function poll() {
  if (viewer.dataset.state === 'ready' && canvas.dataset.cls) {
    requestAnimationFrame(() => done(performance.now() - start));
  } else {
    requestAnimationFrame(poll);
  }
})();
"""

FILTER_JS = """
const [text, done] = [arguments[0], arguments[arguments.length - 1]];
const input = document.getElementById('filter');
const start = performance.now();
input.value = text;
input.dispatchEvent(new Event('input'));
requestAnimationFrame(() => setTimeout(() => done(performance.now() - start)));
"""

SCROLL_JS = """
const done = arguments[arguments.length - 1];
const images = document.querySelectorAll('img.thumb');
const last = images[images.length - 1];
const start = performance.now();
scrollTo(0, document.documentElement.scrollHeight);
(function poll() {
  if (last.complete && last.naturalWidth) done(performance.now() - start);
  else requestAnimationFrame(poll);
})();
"""


def cpu_name() -> str:
    """The CPU and its number of logical CPUs, for the headers."""
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs"


def sizes() -> None:
    from click.testing import CliRunner

    from heatmap_cli.cli.options import main

    print("| stride | grid | maps stored | data .d.js | thumbnail | photo | index entry | npz |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    labels = 0
    for stride in (32, 8):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder)
            args = [str(SAMPLES / "coffee.jpg"), "--out", folder, "--stride", str(stride)]
            result = CliRunner().invoke(main, [*args, "--report", "-q", "--device", "cpu"])
            assert result.exit_code == 0, result.output
            assets = out / ASSETS_DIR_NAME
            data = next(assets.glob("*.d.js")).read_text(encoding="ascii")
            payload = json.loads(data[data.index("{") : data.rindex("}") + 1])
            html = (out / REPORT_FILE).read_text(encoding="utf-8")
            start = html.index(">", html.index('id="report-data"')) + 1
            embedded = json.loads(html[start : html.index("</script>", start)])
            entry = json.dumps(embedded["images"][0], ensure_ascii=True, separators=(",", ":"))
            labels = next(assets.glob("labels-*.js")).stat().st_size
            row = [
                str(stride),
                "x".join(map(str, payload["grid"])),
                str(len(payload["maps"]["index"])),
                _kb(len(data)),
                _kb(next(assets.glob("*.t.jpg")).stat().st_size),
                _kb(next(assets.glob("*.p.jpg")).stat().st_size),
                _kb(len(entry)),
                _kb((out / "coffee.npz").stat().st_size),
            ]
            print("| " + " | ".join(row) + " |")
    print(f"\nclass names (labels-*.js, once per model): {_kb(labels)}")


def _kb(size: int) -> str:
    return f"{size / 1000:.1f} kB"


def synthetic_folder(out: Path, count: int) -> None:
    """``count`` finished images as the command writes them (json + npz), photos shared."""
    rng = np.random.default_rng(0)
    rows, cols = GRID
    xs = WINDOW_CENTRES[0] + STEP * np.arange(cols)
    ys = WINDOW_CENTRES[1] + STEP * np.arange(rows)
    centers = np.stack(np.meshgrid(xs, ys), axis=-1).astype(np.float32)
    names = np.array([f"class {i}" for i in range(CLASSES)])
    photos = [SAMPLES / "coffee.jpg", SAMPLES / "chelsea.jpg"]
    for i in range(count):
        folder = out / f"set_{i // 100:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        logits = rng.normal(0.0, 1.5, (CLASSES, rows, cols)).astype(np.float32)
        logits[rng.integers(0, CLASSES, 3)] += 6.0
        probs = np.exp(logits - logits.max(axis=0))
        probs /= probs.sum(axis=0)
        np.savez_compressed(
            folder / f"img_{i:04d}.npz",
            logits=logits,
            probs=probs,
            centers=centers,
            window=np.array([233.333, 233.333], dtype=np.float32),
            stride=np.int64(32),
            input_size=np.array([384, 576]),
            classes=names,
        )
        peaks = probs.reshape(CLASSES, -1).max(axis=1)
        best = np.argsort(-peaks)[:5].tolist()
        record = {
            "image": str(photos[i % 2]),
            "model": "efficientnet_lite0",
            "method": "dense",
            "stride": 32,
            "original_size": {"width": 600, "height": 400},
            "grid": {"rows": rows, "cols": cols},
            "classes": [
                {"index": c, "name": str(names[c]), "peak": float(peaks[c]), "x": 0, "y": 0}
                for c in best[:3]
            ],
            "top_k": [{"index": c, "name": str(names[c]), "score": float(peaks[c])} for c in best],
        }
        (folder / f"img_{i:04d}.json").write_text(json.dumps(record), encoding="utf-8")


def load(count: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        started = time.perf_counter()
        synthetic_folder(out, count)
        print(f"{count} synthetic images written in {time.perf_counter() - started:.1f} s")
        for label in ("cold (every file new)", "warm (all cached)"):
            started = time.perf_counter()
            index = write_report(out)
            print(f"write_report, {label}: {time.perf_counter() - started:.2f} s")
        print(f"index.html: {_kb(index.stat().st_size)}")
        assets = sum(p.stat().st_size for p in (out / ASSETS_DIR_NAME).iterdir())
        print(f"index_files/: {_kb(assets)} ({_kb(assets // count)} per image)\n")

        keys = json.loads((out / ASSETS_DIR_NAME / "cache.json").read_text(encoding="utf-8"))[
            "images"
        ]
        last = sorted(keys)[-1]
        rows = []
        for _ in range(repeat):
            with headless_chromium(width=1400, height=900) as browser:
                browser.open(index)
                driver = browser.driver
                ready = driver.execute_script(
                    "return performance.getEntriesByName('heatmap-report-ready')[0].startTime;"
                )
                loaded = driver.execute_script(
                    "return performance.getEntriesByType('navigation')[0].loadEventEnd;"
                )
                thumbs = driver.execute_script(
                    "return [...document.querySelectorAll('img.thumb')]"
                    ".filter((i) => i.complete && i.naturalWidth).length;"
                )
                opened = driver.execute_async_script(OPEN_IMAGE_JS, last)
                driver.execute_script("history.replaceState(null, '', '#');")
                driver.execute_script("document.getElementById('viewer').hidden = true;")
                filtered = driver.execute_async_script(FILTER_JS, "class 7")
                driver.execute_async_script(FILTER_JS, "")
                scrolled = driver.execute_async_script(SCROLL_JS)
                problems = browser.errors() + browser.remote_requests()
                assert not problems, problems
                rows.append((ready, loaded, thumbs, opened, filtered, scrolled))
        medians = [statistics.median(column) for column in zip(*rows, strict=True)]
        print(f"Chromium headless, {count} images, median of {repeat} fresh browsers; {cpu_name()}")
        print(
            "| gallery built | load event | thumbnails loaded | open last image | filter | "
            "scroll to end, last thumbnail shown |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        ready, loaded, thumbs, opened, filtered, scrolled = medians
        print(
            f"| {ready:.0f} ms | {loaded:.0f} ms | {thumbs:.0f} of {count} | {opened:.0f} ms | "
            f"{filtered:.0f} ms | {scrolled:.0f} ms |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--part", choices=["sizes", "load", "all"], default="all")
    options = parser.parse_args()
    print(cpu_name() + "\n")
    if options.part in ("sizes", "all"):
        sizes()
        print()
    if options.part in ("load", "all"):
        load(options.images, options.repeat)


if __name__ == "__main__":
    main()
