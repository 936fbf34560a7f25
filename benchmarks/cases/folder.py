"""folder: 32 photos of mixed sizes, whole job from file names to logits; a loop against the loader.

The photos are made from ``sample_images/`` into a temporary folder (six aspect ratios, 480 to
4000 pixels on the long side, JPEG and PNG); the default model at ``--size 384``, stride 32,
batches of up to 8 same-size images.

* ``sequential loop``: ``read_image`` -> ``plan_geometry`` -> ``resize_for_grid`` for every
  file, then ``normalize`` + ``score_grid`` per same-size batch (contiguous layout);
* ``pipeline (2 loader threads)`` (the command's default) and ``(1 loader thread)``:
  ``heatmap_cli.pipeline.scoring.score_images`` with the command's ``GridEngine`` (channels_last,
  folded batch norms; loader threads read and resize while the network runs; it also keeps a display
  copy of each photo, as the command needs).

Run: .venv/bin/python -m benchmarks.cases.folder [--quick] [--markdown] [--repeat N]
"""

from __future__ import annotations

import copy
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.support.common import (
    SAMPLES,
    MatmulPeak,
    Method,
    convert,
    count_flops,
    log,
    run_interleaved,
)
from benchmarks.support.harness import Case, Options, run_alone
from benchmarks.support.report import Report, timing_row
from heatmap_cli import ConvolutionalizedNet, score_grid
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.io import find_images, read_image
from heatmap_cli.models import LoadedModel, load_model
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.preprocess import plan_geometry, resize_for_grid
from heatmap_cli.pipeline.scoring import score_images

SHORTER_SIDE = 384
BATCH_SIZE = 8
_ASPECTS = ((4, 3), (3, 4), (16, 9), (1, 1), (3, 2), (2, 3))
_LONG_SIDES = (480, 640, 800, 1024, 1600, 2048, 3000, 4000)


def make_photos(folder: Path, count: int = 32, seed: int = 0) -> list[Path]:
    """Writes ``count`` photos of mixed sizes and aspect ratios, made from ``sample_images/``.

    Each is a centre crop of one sample photo to one of six aspect ratios, resized so that its
    long side is 480 to 4000 pixels; most are JPEG (quality 90), every eighth is PNG.

    Args:
        folder: Where to write them (created).
        count: How many.
        seed: Seed of the size choices.

    Returns:
        The written files.
    """
    rng = random.Random(seed)
    sources = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        source = sources[index % len(sources)]
        aw, ah = _ASPECTS[index % len(_ASPECTS)]
        scale = min(source.width / aw, source.height / ah)
        cw, ch = round(aw * scale), round(ah * scale)
        left, top = (source.width - cw) // 2, (source.height - ch) // 2
        long_side = rng.choice(_LONG_SIDES)
        if aw >= ah:
            size = (long_side, round(long_side * ah / aw))
        else:
            size = (round(long_side * aw / ah), long_side)
        photo = source.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC)
        suffix = ".png" if index % 8 == 7 else ".jpg"
        path = folder / f"photo_{index:02d}{suffix}"
        photo.save(path, quality=90) if suffix == ".jpg" else photo.save(path)
        paths.append(path)
    return paths


def sequential_batch(
    paths: Sequence[Path],
    loaded: LoadedModel,
    net: ConvolutionalizedNet,
    phases: dict[str, list[float]] | None = None,
) -> list[torch.Tensor]:
    """The naive library loop: read and resize every image, then score same-size batches.

    Args:
        paths: Image files.
        loaded: The model's metadata (mean, std, interpolation).
        net: The converted network.
        phases: If given, the seconds of this call's two phases are appended under ``"read"``
            (decode + resize) and ``"network"`` (normalize + score_grid).

    Returns:
        One ``(n, K, rows, cols)`` logit tensor per batch.
    """
    started = time.perf_counter()
    groups: dict[tuple[int, int], list[np.ndarray]] = {}
    for path in paths:
        image = read_image(path)
        geometry = plan_geometry(
            (image.height, image.width),
            shorter_side=SHORTER_SIDE,
            window=net.window,
            stride=net.stride,
        )
        pixels = resize_for_grid(image, geometry.input_size, loaded.interpolation)
        groups.setdefault(geometry.input_size, []).append(pixels)
    read_done = time.perf_counter()
    grids = []
    for group in groups.values():
        for start in range(0, len(group), BATCH_SIZE):
            x = normalize(np.stack(group[start : start + BATCH_SIZE]), loaded.mean, loaded.std)
            grids.append(score_grid(net, x, method="dense", input_size=net.window))
    if phases is not None:
        phases.setdefault("read", []).append(read_done - started)
        phases.setdefault("network", []).append(time.perf_counter() - read_done)
    return grids


def loader_run(folder: Path, loaded: LoadedModel, workers: int) -> Callable[[], None]:
    """The command's path over the folder: its ``GridEngine`` and ``loader.score_images``.

    The engine gets its own copy of the model, so that nothing it does to its network (the
    channels_last layout) can reach the sequential loop's.

    Args:
        folder: The photos.
        loaded: The default model.
        workers: Loader threads.

    Returns:
        Scores every photo once; raises if any failed.
    """
    loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    settings = GridSettings(size=SHORTER_SIDE, device="cpu", method="dense", batch_size=BATCH_SIZE)
    engine = GridEngine(loaded, settings)
    items = find_images([folder])

    def run() -> None:
        outcomes = list(score_images(items, engine, workers=workers))
        failed = [outcome for outcome in outcomes if isinstance(outcome.result, Exception)]
        if failed or len(outcomes) != len(items):
            raise RuntimeError(f"loader: {len(failed)} failures, {len(outcomes)} results")

    return run


def dense_call(net: ConvolutionalizedNet, size: tuple[int, int]) -> torch.Tensor:
    """One dense ``score_grid`` call on a blank ``(1, 3, H, W)`` input of ``size``."""
    return score_grid(net, torch.zeros(1, 3, *size), method="dense", input_size=net.window)


def input_sizes(
    paths: Sequence[Path], net: ConvolutionalizedNet
) -> tuple[dict[tuple[int, int], int], float]:
    """How many photos get each network input size, and the megapixels they decode to."""
    sizes: dict[tuple[int, int], int] = {}
    megapixels = 0.0
    for path in paths:
        with Image.open(path) as image:
            megapixels += image.width * image.height / 1e6
            geometry = plan_geometry(
                (image.height, image.width),
                shorter_side=SHORTER_SIDE,
                window=net.window,
                stride=net.stride,
            )
        sizes[geometry.input_size] = sizes.get(geometry.input_size, 0) + 1
    return sizes, megapixels


def run(options: Options, peak: MatmulPeak, report: Report) -> None:
    """Times the sequential loop against the command's loader with 2 and 1 threads."""
    loaded = load_model()
    net = convert(loaded.model, loaded.input_size)
    phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="heatmap-bench-") as tmp:
        folder = Path(tmp) / "photos"
        paths = make_photos(folder)
        sizes, megapixels = input_sizes(paths, net)
        # Counting the FLOPs runs every input size once and the photos were just written (in
        # the page cache): --quick skips the extra warm-up run.
        flops = sum(
            count * count_flops(lambda size=size: dense_call(net, size))
            for size, count in sizes.items()
        )
        calls: list[tuple[str, Callable[[], object]]] = [
            ("sequential loop", lambda: sequential_batch(paths, loaded, net, phases))
        ]
        calls += [  # the command's default, and one thread fewer
            (f"pipeline ({n} loader thread{'s' if n > 1 else ''})", loader_run(folder, loaded, n))
            for n in (2, 1)
        ]
        warmup = 0 if options.quick else 1
        methods = [
            Method(label, call, flops, len(paths), warmup=warmup, budget_s=options.budget_s)
            for label, call in calls
        ]
        log(f"  folder: {len(paths)} photos, {len(sizes)} input sizes")
        run_interleaved(methods, options.repeat, peak, torch.device("cpu"))
    base = methods[0].median_s
    for method in methods:
        row = timing_row(
            method,
            peak,
            case=CASE.name,
            model=loaded.name,
            input_size=f"{len(paths)} photos",
            grid=f"{len(sizes)} sizes",
            stride=net.stride,
        )
        row.note = f"{megapixels:.0f} MP decoded, {base / method.median_s:.2f}x the sequential loop"
        report.rows.append(row)
    read_s, network_s = (statistics.median(phases[k]) for k in ("read", "network"))
    report.notes.append(
        f"folder: the sequential loop spends {read_s:.2f} s reading, decoding and resizing and "
        f"{network_s:.2f} s in normalize + score_grid (medians over its calls)"
    )


CASE = Case(
    "folder",
    "32 photos of mixed sizes: a sequential library loop against the command's loader",
    run,
)

if __name__ == "__main__":
    sys.exit(run_alone(CASE))
