"""Writing one image's results: the output record, class overlays, a contact sheet, npz, json.

File names (``stem`` mirrors the input's place under its folder, see ``io.find_images``):

* ``<stem>_<index>_<name>.png``: one overlay per rendered class, at the photo's resolution;
* ``<stem>_sheet.png``: the photo and the overlays side by side, when several classes are shown;
* ``<stem>.npz`` and ``<stem>.json``: the grid and a summary, as shared/DESIGN.md defines them.

Everything the json says is one :class:`OutputRecord`, built in one place (:func:`build_record`):
the run (model, weights, method), the passes that went in (scales, flips) and how each was
evaluated (whole or in tiles), the grid's geometry, the rendered classes and the image-level
ranking, which activation made ``probs`` of the logits and what the model itself returns, and
the model's settings (:func:`model_settings`: its source and files with their digests, classes,
window, mean and std, ``--size`` and ``--activation``). The overlays carry the photo's ICC
profile, so the photo keeps its colours; the colour bar is drawn in the same colours as the map,
so values still read off it.

Every file is written atomically, and the ``.json`` last: its presence means the image is done,
which is what ``--skip-existing`` checks. An image's outputs are all or nothing: an old ``.json``
is removed before anything is rewritten, and if writing fails or is interrupted, the files this
call already wrote are removed again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from heatmap_cli.engine import GridEngine, Tiling
from heatmap_cli.errors import OutputWriteError
from heatmap_cli.geometry import GridGeometry
from heatmap_cli.io import output_path, write_json, write_npz, write_png
from heatmap_cli.loader import ImageResult
from heatmap_cli.multiscale import MultiScaleResult, Pass
from heatmap_cli.ranking import rank_by_peak, rank_image
from heatmap_cli.render import contact_sheet, peak_location, render_class_overlay

__all__ = [
    "OutputOptions",
    "OutputRecord",
    "RankedClass",
    "RenderedClass",
    "build_record",
    "completion_marker",
    "model_settings",
    "rendered_classes",
    "slug",
    "write_outputs",
]

PROBABILITY_SCALE_FLOOR = 0.1


@dataclass(frozen=True)
class OutputOptions:
    """How results are rendered.

    Attributes:
        classes: Class indices to render; empty means the ``top_k`` best by peak probability.
        top_k: How many classes to render without ``classes``, and how many to rank in the json.
        scores: ``"probs"`` (per-cell softmax, drawn from 0 to the class's peak) or
            ``"logits"`` (drawn over their own range).
        cmap: Matplotlib colormap name.
        alpha: Opacity of the heat map at full score, 0..1.
        colorbar: Append a colour bar to each overlay.
        sheet: Write a contact sheet when several classes are rendered.
        pooling: How the json's image-level ``top_k`` pools each class map: ``"max"``/``"mean"``.
    """

    classes: Sequence[int] = ()
    top_k: int = 3
    scores: str = "probs"
    cmap: str = "inferno"
    alpha: float = 0.5
    colorbar: bool = False
    sheet: bool = True
    pooling: str = "max"


@dataclass(frozen=True)
class RenderedClass:
    """One class drawn for an image: where it peaks, and its overlay's file name.

    Attributes:
        index: Class index.
        name: Class name.
        peak: Its highest per-cell probability.
        x: Centre of that cell's window, in original-image pixels.
        y: Likewise, vertically.
        overlay: File name of its overlay PNG, next to the json.
    """

    index: int
    name: str
    peak: float
    x: float
    y: float
    overlay: str


@dataclass(frozen=True)
class RankedClass:
    """One entry of the image-level ranking: a class and its pooled score in ``[0, 1]``."""

    index: int
    name: str
    score: float


@dataclass(frozen=True)
class OutputRecord:
    """Everything the json says about one image.

    Attributes:
        image: The input file.
        model: The model name as given.
        weights: Where the weights came from.
        method: The grid method used.
        native_stride: The converted network's own stride (None when it cannot be converted).
        size: ``--size``, the shorter side before snapping.
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
        settings: The options that change the numbers (:func:`model_settings`).
    """

    image: Path
    model: str
    weights: str
    method: str
    native_stride: int | None
    size: int
    passes: tuple[Pass, ...]
    common_grid: str
    geometry: GridGeometry
    scores: str
    classes: tuple[RenderedClass, ...]
    top_k: tuple[RankedClass, ...]
    top_k_pooling: str
    activation: str = "softmax"
    model_output: str = "logits"
    settings: Mapping[str, object] = field(default_factory=dict)

    @property
    def tiling(self) -> Tiling:
        """All passes together: the largest tile side used (None: none tiled), tiles summed."""
        sides = [p.tiling.tile for p in self.passes if p.tiling.tile is not None]
        return Tiling(max(sides) if sides else None, sum(p.tiling.tiles for p in self.passes))

    def to_json(self) -> dict[str, object]:
        """The json document, keys in the order they are written."""
        rows, cols = self.geometry.shape
        return {
            "image": str(self.image),
            "model": self.model,
            "weights": self.weights,
            "method": self.method,
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
            "original_size": _size_json(self.geometry.original_size),
            "input_size": _size_json(self.geometry.input_size),
            "window": _size_json(self.geometry.window),
            "stride": self.geometry.stride,
            "grid": {"rows": rows, "cols": cols},
            "scores": self.scores,
            "activation": self.activation,
            "model_output": self.model_output,
            "classes": [asdict(c) for c in self.classes],
            "top_k": [asdict(r) for r in self.top_k],
            "top_k_pooling": self.top_k_pooling,
            "settings": dict(self.settings),
        }


def _size_json(size: tuple[int, int]) -> dict[str, int]:
    return {"width": size[1], "height": size[0]}


def _tiling_json(tiling: Tiling) -> dict[str, object]:
    return {"tiled": tiling.tiled, "tile": tiling.tile, "tiles": tiling.tiles}


def _pass_json(p: Pass) -> dict[str, object]:
    rows, cols = p.geometry.shape
    return {
        "scale": p.scale,
        "flip": p.flip,
        "input_size": _size_json(p.geometry.input_size),
        "grid": {"rows": rows, "cols": cols},
        "tiling": _tiling_json(p.tiling),
    }


def slug(name: str, max_length: int = 40) -> str:
    """A file-name-safe form of a class name: ``"tiger cat"`` -> ``"tiger_cat"``."""
    kept = "".join(c if c.isalnum() else "_" for c in name.casefold())
    collapsed = "_".join(part for part in kept.split("_") if part)
    return collapsed[:max_length] or "class"


def completion_marker(out_dir: Path, stem: Path) -> Path:
    """The file whose presence means an image's outputs are complete."""
    return output_path(out_dir, stem, ".json")


def rendered_classes(
    result: ImageResult, categories: Sequence[str], options: OutputOptions
) -> tuple[RenderedClass, ...]:
    """The classes to draw for an image, with where each peaks.

    Args:
        result: The image's grid.
        categories: The ``K`` class names.
        options: ``classes``, or else ``top_k`` by peak probability.

    Returns:
        One entry per class, in drawing order.
    """
    probs, centers = result.grid.probs, result.grid.geometry.centers()
    chosen = list(options.classes) or rank_by_peak(probs, options.top_k)
    classes = []
    for index in chosen:
        name = categories[index]
        peak, x, y = peak_location(probs[index], centers)
        overlay = f"{result.item.stem.name}_{index}_{slug(name)}.png"
        classes.append(RenderedClass(index, name, peak, x, y, overlay))
    return tuple(classes)


def model_settings(engine: GridEngine) -> dict[str, object]:
    """The model options of a run, as the json's ``settings`` records them.

    Args:
        engine: The engine that scored the images (its model and settings).

    Returns:
        ``model`` and ``model_source`` (the source that loaded it), ``files`` (role ->
        ``{path, sha256}``: the model file or code, ``--weights``, ``--labels``),
        ``num_classes``, ``input_size`` (the window), ``mean``, ``std``, ``interpolation``,
        ``size`` (pixels or ``"native"``) and ``activation`` (as asked for: ``"auto"``...).
    """
    loaded = engine.loaded
    return {
        "model": loaded.name,
        "model_source": loaded.family,
        "files": {f.role: {"path": str(f.path), "sha256": f.sha256} for f in loaded.files},
        "num_classes": loaded.num_classes,
        "input_size": _size_json(loaded.input_size),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "interpolation": loaded.interpolation,
        "size": engine.settings.size,
        "activation": engine.settings.activation,
    }


def build_record(
    result: ImageResult,
    engine: GridEngine,
    options: OutputOptions,
    classes: Sequence[RenderedClass],
) -> OutputRecord:
    """The one place an image's json record is assembled.

    Args:
        result: The image's grid and passes.
        engine: The engine that scored it (model, weights, method, size).
        options: The ranking's length and pooling, and what the overlays show.
        classes: The rendered classes (:func:`rendered_classes`).

    Returns:
        The record; :meth:`OutputRecord.to_json` is what the json holds.
    """
    ranking = rank_image(result.grid.passes, options.top_k, options.pooling)
    return OutputRecord(
        image=result.item.path,
        model=engine.loaded.name,
        weights=engine.loaded.source,
        method=engine.method,
        native_stride=engine.native_stride,
        size=engine.settings.size,
        passes=result.grid.passes,
        common_grid=result.grid.common,
        geometry=result.grid.geometry,
        scores=options.scores,
        classes=tuple(classes),
        top_k=tuple(RankedClass(i, engine.categories[i], score) for i, score in ranking),
        top_k_pooling=options.pooling,
        activation=engine.activation,
        model_output=engine.loaded.output,
        settings=model_settings(engine),
    )


def render_overlay(
    result: ImageResult,
    rendered: RenderedClass,
    options: OutputOptions,
    probabilities: bool = True,
) -> np.ndarray:
    """One class's overlay on the image's display copy: uint8 ``(h, w[+bar], 3)``.

    ``probabilities``: whether the grid's ``probs`` are probabilities; not with ``--activation
    none`` on a model that returns logits, whose ``probs`` are then its logits, drawn as such.
    """
    grid, display = result.grid, result.display
    height, width = grid.geometry.original_size
    to_display = np.array([display.shape[1] / width, display.shape[0] / height], np.float32)
    probs = options.scores == "probs" and probabilities
    # Probabilities are drawn from 0 to the class's own peak, so a class that shares its
    # probability with look-alikes (tabby / tiger cat) still shows where it is strongest;
    # the floor keeps a class the model barely sees from being painted as hot.
    vmin, vmax = (0.0, max(rendered.peak, PROBABILITY_SCALE_FLOOR)) if probs else (None, None)
    return render_class_overlay(
        display,
        (grid.probs if probs else grid.logits)[rendered.index],
        grid.geometry.centers() * to_display,
        label=f"{rendered.name}  p={rendered.peak:.2f}",
        cmap=options.cmap,
        alpha=options.alpha,
        vmin=vmin,
        vmax=vmax,
        colorbar=options.colorbar,
        colorbar_label="probability" if probs else "logit",
    )


def write_grid(path: Path, grid: MultiScaleResult, categories: Sequence[str]) -> None:
    """Writes the ``.npz`` of DESIGN.md: logits, probs, centres, window, stride, sizes, classes."""
    geometry = grid.geometry
    write_npz(
        path,
        logits=grid.logits.astype(np.float32),
        probs=grid.probs,
        centers=geometry.centers(),
        window=geometry.window_in_original(),
        stride=np.int64(geometry.stride),
        input_size=np.array(geometry.input_size, dtype=np.int64),
        classes=np.array(categories, dtype=str),
    )


def write_outputs(
    result: ImageResult, engine: GridEngine, options: OutputOptions, out_dir: Path
) -> list[Path]:
    """Renders and writes every output of one image: overlays, sheet, npz, and the json last.

    Args:
        result: The image's grid, display copy and colour profile.
        engine: The engine that scored it (class names and what the json says of the run).
        options: What to render and how.
        out_dir: The output folder.

    Returns:
        The paths written, the json last.

    Raises:
        OutputWriteError: A file cannot be written (no output of this image is left then).
    """
    stem, marker = result.item.stem, completion_marker(out_dir, result.item.stem)
    try:
        # Otherwise an old json would vouch for files this call is about to replace.
        marker.unlink(missing_ok=True)
    except OSError as error:
        raise OutputWriteError(f"cannot replace {marker}: {error.strerror or error}") from error
    with _removed_on_failure() as written:
        classes = rendered_classes(result, engine.categories, options)
        overlays = []
        for rendered in classes:
            overlays.append(render_overlay(result, rendered, options, engine.probabilities))
            path = marker.with_name(rendered.overlay)
            write_png(path, overlays[-1], icc_profile=result.icc_profile)
            written.append(path)
        if options.sheet and len(overlays) > 1:
            labels = ["photo", *(f"{c.name} {c.peak:.2f}" for c in classes)]
            sheet = contact_sheet([result.display, *overlays], labels)
            path = output_path(out_dir, stem, "_sheet.png")
            write_png(path, sheet, icc_profile=result.icc_profile)
            written.append(path)
        path = output_path(out_dir, stem, ".npz")
        write_grid(path, result.grid, engine.categories)
        written.append(path)
        write_json(marker, build_record(result, engine, options, classes).to_json())
        written.append(marker)
    return written


@contextlib.contextmanager
def _removed_on_failure() -> Iterator[list[Path]]:
    """Yields a list of written paths; on any exception (Ctrl-C too) deletes them all."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:  # leave no partial set of one image's outputs
        for path in written:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
