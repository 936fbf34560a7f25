"""The output record: everything an image's json says, assembled in one place.

One truth for every file of an image (:mod:`heatmap_cli.cli.writers` writes them): the classes drawn
without ``OutputOptions.classes`` are the image-level ranking's top ``top_k`` (the json's
``top_k`` and the stdout table), and each drawn class's peak, its location, its label and its map
come from the scores that are drawn (probabilities or logits, averaged over the passes), on the
colour scale (:mod:`heatmap_cli.render.scale`) that its label and the json name.

Everything the json says is one :class:`OutputRecord`, built in one place (:func:`build_record`):
the run (model, weights, method), the passes that went in (scales, flips) and how each was
evaluated (whole or in tiles), the grid's geometry, the rendered classes, the image-level
ranking, which activation made ``probs`` of the logits and what the model itself returns,
every option that changes a number or a file (the model's own, :func:`model_settings`, among
them) (:func:`run_settings`, resolved: what
``--skip-existing`` compares), the versions of the software (:func:`software_versions`), the
device and the dtype, and ``files``: the name and size in bytes of every other file written for
the image (what ``heatmap_cli.cli.resume`` checks before it calls an image done).
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

from heatmap_cli.cli.run_settings import model_settings, run_settings, size_json
from heatmap_cli.grid.geometry import GridGeometry
from heatmap_cli.io import output_path
from heatmap_cli.pipeline.engine import GridEngine, Tiling
from heatmap_cli.pipeline.fidelity import Fidelity
from heatmap_cli.pipeline.methods import image_method
from heatmap_cli.pipeline.multiscale import Pass
from heatmap_cli.pipeline.rendering import (
    ImageSummary,
    OutputOptions,
    RankedClass,
    RenderedClass,
)
from heatmap_cli.pipeline.scoring import DEFAULT_READING, ImageResult, PhotoReading

__all__ = [
    "OutputFile",
    "OutputRecord",
    "build_record",
    "completion_marker",
    "model_settings",
    "run_settings",
    "software_versions",
]


class OutputFile(NamedTuple):
    """One file written for an image, as its json lists it (``{"name", "bytes"}``).

    Attributes:
        name: File name, in the json's folder.
        size: Its size in bytes.
    """

    name: str
    size: int


@dataclass(frozen=True)
class OutputRecord:
    """Everything the json says about one image.

    Attributes:
        image: The input file.
        model: The model name as given.
        weights: Where the weights came from.
        method: The grid method that made the map: ``crops`` (every cell exact), ``refine``
            (some), ``dense``... (``--method auto`` decides per image).
        method_reason: Why that method ran ("asked for", or ``auto``'s figures).
        native_stride: The converted network's own stride (None when it cannot be converted).
        size: ``--size``, the shorter side before snapping (or ``"native"``).
        passes: Every pass that went in, in evaluation order (one for a plain run).
        common_grid: Which pass's grid the passes were averaged on.
        geometry: The grid of the npz.
        scores: What the overlays show: ``"probs"`` or ``"logits"``.
        classes: The rendered classes.
        top_k: The image-level ranking, best first.
        top_k_pooling: How it pools each class map: ``"max"`` or ``"mean"``.
        activation: What made ``probs`` of the logits: ``"softmax"``, ``"sigmoid"`` or
            ``"none"`` (the npz's ``probs`` are its output).
        model_output: What the model returns: ``"logits"``, or a head's ``"softmax"``,
            ``"sigmoid"`` (probabilities already) or ``"log_softmax"``.
        settings: Every option that changes a number or a file (:func:`run_settings`).
        versions: The software that computed it (:func:`software_versions`).
        device: Where the network ran (``"cpu"``, ``"cuda:0"``...).
        dtype: The dtype it computed in (``"float32"``, ``"bfloat16"`` under CUDA autocast...).
        files: Every other file written for the image, with its size.
        fidelity: The map checked against exact windows (``heatmap_cli.pipeline.fidelity``);
            None when ``--fidelity 0``.
        exact_cells: How many cells of the map were evaluated exactly (as crops); None for a
            method that evaluates none.
    """

    image: Path
    model: str
    weights: str
    method: str
    method_reason: str
    native_stride: int | None
    size: int | str
    passes: tuple[Pass, ...]
    common_grid: str
    geometry: GridGeometry
    scores: str
    classes: tuple[RenderedClass, ...]
    top_k: tuple[RankedClass, ...]
    top_k_pooling: str
    activation: str
    model_output: str
    settings: dict[str, object]
    versions: dict[str, str | None]
    device: str
    dtype: str
    files: tuple[OutputFile, ...] = ()
    fidelity: Fidelity | None = None
    exact_cells: int | None = None

    @property
    def tiling(self) -> Tiling:
        """All passes together: the largest tile side used (None: none tiled), tiles summed."""
        sides = [p.tiling.tile for p in self.passes if p.tiling.tile is not None]
        return Tiling(max(sides) if sides else None, sum(p.tiling.tiles for p in self.passes))

    def to_json(self) -> dict[str, object]:
        """The json document, keys in the order they are written."""
        rows, cols = self.geometry.shape
        window_width, window_height = self.geometry.window_in_original().tolist()
        return {
            "image": str(self.image),
            "model": self.model,
            "weights": self.weights,
            "method": self.method,
            "method_reason": self.method_reason,
            "native_stride": self.native_stride,
            "size": self.size,
            "multiscale": {
                "scales": list(dict.fromkeys(p.scale for p in self.passes)),
                "flip": any(p.flip for p in self.passes),
                "passes": [_pass_json(p) for p in self.passes],
                "common_grid": self.common_grid,
                "averaged": "logits",
            },
            "tiling": _tiling_json(self.tiling),
            "original_size": size_json(self.geometry.original_size),
            "input_size": size_json(self.geometry.input_size),
            # In original pixels, as the npz's window and centres; window_input as the network
            # saw it, in the input pixels of input_size and stride.
            "window": {
                "width": round(window_width, 3),
                "height": round(window_height, 3),
                "units": "original pixels",
            },
            "window_input": {**size_json(self.geometry.window), "units": "input pixels"},
            "stride": self.geometry.stride,
            "grid": {"rows": rows, "cols": cols},
            "scores": self.scores,
            "activation": self.activation,
            "model_output": self.model_output,
            "exact_cells": self.exact_cells,
            "fidelity": None if self.fidelity is None else self.fidelity.to_json(),
            "classes": [asdict(c) for c in self.classes],
            "top_k": [asdict(r) for r in self.top_k],
            "top_k_pooling": self.top_k_pooling,
            "settings": self.settings,
            "versions": self.versions,
            "device": self.device,
            "dtype": self.dtype,
            "files": [{"name": f.name, "bytes": f.size} for f in self.files],
        }


def _tiling_json(tiling: Tiling) -> dict[str, object]:
    return {"tiled": tiling.tiled, "tile": tiling.tile, "tiles": tiling.tiles}


def _pass_json(p: Pass) -> dict[str, object]:
    rows, cols = p.geometry.shape
    return {
        "scale": p.scale,
        "flip": p.flip,
        "input_size": size_json(p.geometry.input_size),
        "grid": {"rows": rows, "cols": cols},
        "tiling": _tiling_json(p.tiling),
    }


def completion_marker(out_dir: Path, stem: Path) -> Path:
    """The file whose presence means an image's outputs are complete."""
    return output_path(out_dir, stem, ".json")


@functools.lru_cache(maxsize=1)
def software_versions() -> dict[str, str | None]:
    """The versions of heatmap-cli, Python and the libraries that compute and draw the maps.

    Returns:
        ``{"heatmap-cli", "torch", "torchvision", "timm", "numpy", "pillow", "python"}``; None
        for a library that is not installed.
    """
    found: dict[str, str | None] = {}
    for name, distribution in (
        ("heatmap-cli", "heatmap-cli"),
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("timm", "timm"),
        ("numpy", "numpy"),
        ("pillow", "Pillow"),
    ):
        try:
            found[name] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def build_record(
    result: ImageResult,
    engine: GridEngine,
    options: OutputOptions,
    summary: ImageSummary,
    files: Sequence[OutputFile] = (),
    reading: PhotoReading = DEFAULT_READING,
    fidelity: Fidelity | None = None,
) -> OutputRecord:
    """The one place an image's json record is assembled.

    Args:
        result: The image's grid and passes.
        engine: The engine that scored it (model, weights, method, size, device, dtype).
        options: The ranking's pooling, and what is drawn and written.
        summary: The image's ranking and rendered classes
            (:func:`~heatmap_cli.pipeline.rendering.summarize_image`).
        files: The other files written for the image, with their sizes.
        reading: How the photo was decoded (the overlays' largest side, in the settings).
        fidelity: The image's fidelity check, if any.

    Returns:
        The record; :meth:`OutputRecord.to_json` is what the json holds.
    """
    passes = result.grid.passes
    scales = [p.scale for p in passes if not p.flip]  # the order given: each scale, then mirror
    method = image_method(passes, engine.settings.method, engine.method)
    return OutputRecord(
        image=result.item.path,
        model=engine.loaded.name,
        weights=engine.loaded.source,
        method=method.method,
        method_reason=method.reason,
        native_stride=engine.native_stride,
        size=engine.settings.size,
        passes=result.grid.passes,
        common_grid=result.grid.common,
        geometry=result.grid.geometry,
        scores=options.scores,
        classes=summary.classes,
        top_k=summary.top_k,
        top_k_pooling=options.pooling,
        activation=engine.activation,
        model_output=engine.loaded.output,
        settings=run_settings(engine, options, scales, any(p.flip for p in passes), reading),
        versions=software_versions(),
        device=str(engine.device),
        dtype=engine.precision,
        files=tuple(files),
        fidelity=fidelity,
        exact_cells=None if result.grid.exact is None else int(result.grid.exact.sum()),
    )
