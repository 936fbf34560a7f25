"""Bytes per photo for each output choice: picture formats, npz classes and dtype, the json.

Scores each sample photo with the default model at stride 32 and 8, writes its outputs with
``heatmap_cli.cli.writers.write_outputs`` under each choice, and prints the sizes: one overlay and
the contact sheet per ``--format``, the npz per ``--npz-classes`` and ``--npz-dtype``, the json.
With the default ``--top-k 3`` a photo gets three overlays and a sheet.

Run: .venv/bin/python -m benchmarks.studies.output_sizes [--photos sample_images/*.jpg]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.support.paths import SAMPLES
from heatmap_cli.cli.writers import write_outputs
from heatmap_cli.io import ImageInput, read_image
from heatmap_cli.models import load_model
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.multiscale import score_multiscale
from heatmap_cli.pipeline.rendering import OutputOptions
from heatmap_cli.pipeline.scoring import ImageResult, display_image

FORMATS = ("png", "jpg", "webp")
NPZ_CHOICES = [
    ("all", "float32"),
    ("all", "float16"),
    ("top100", "float16"),
    ("rendered", "float16"),
]


def sizes(result: ImageResult, engine: GridEngine, folder: Path) -> dict[str, float]:
    """The size of each output under each choice, in kB."""
    found: dict[str, float] = {}
    for image_format in FORMATS:
        options = OutputOptions(outputs=("png", "json"), image_format=image_format)
        written = write_outputs(result, engine, options, folder / image_format)
        overlays = [p for p in written if p.suffix == f".{image_format}" and "_sheet" not in p.name]
        found[f"overlay {image_format}"] = np.mean([p.stat().st_size for p in overlays]) / 1e3
        sheet = next(p for p in written if "_sheet" in p.name)
        found[f"sheet {image_format}"] = sheet.stat().st_size / 1e3
        found["json"] = written[-1].stat().st_size / 1e3
    for classes, dtype in NPZ_CHOICES:
        options = OutputOptions(outputs=("npz", "json"), npz_classes=classes, npz_dtype=dtype)
        written = write_outputs(result, engine, options, folder / f"{classes}-{dtype}")
        found[f"npz {classes} {dtype}"] = written[0].stat().st_size / 1e3
    return found


def main() -> None:
    """Prints a markdown table: one row per photo and stride."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, nargs="+", default=sorted(SAMPLES.glob("*.jpg")))
    args = parser.parse_args()
    loaded = load_model()
    rows = []
    for stride in (32, 8):
        engine = GridEngine(loaded, GridSettings(stride=stride, device="cpu"))
        for path in args.photos:
            image = read_image(path)
            grid = score_multiscale(engine, image)
            result = ImageResult(
                ImageInput(path, Path(path.stem)), grid, display_image(image, 4096),
                image.info.get("icc_profile"),
            )  # fmt: skip
            with tempfile.TemporaryDirectory() as folder:
                found = sizes(result, engine, Path(folder))
            rows.append((f"{path.name} {image.width}x{image.height}", stride, grid, found))
    keys = list(rows[0][3])
    print("| photo | stride | grid | " + " | ".join(keys) + " |")
    print("|---|---:|---|" + "---:|" * len(keys))
    for name, stride, grid, found in rows:
        cells = " | ".join(f"{found[key]:.1f}" for key in keys)
        shape = "x".join(map(str, grid.geometry.shape))
        print(f"| {name} | {stride} | {shape} | {cells} |")


if __name__ == "__main__":
    main()
