"""The output record: everything an image's json says, assembled in one place.

One truth for every file of an image (:mod:`heatmap_cli.writers` writes them): the classes drawn
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
the image (what ``heatmap_cli.resume`` checks before it calls an image done).
"""

from __future__ import annotations

import functools
import platform
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import numpy as np

from heatmap_cli.engine import GridEngine, Tiling
from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.geometry import GridGeometry
from heatmap_cli.io import IMAGE_FORMATS, output_path
from heatmap_cli.loader import ImageResult
from heatmap_cli.multiscale import MultiScaleResult, Pass
from heatmap_cli.ranking import rank_image
from heatmap_cli.render import (
    DEFAULT_SCALE,
    ColourScale,
    check_cmap,
    check_scale,
    colour_scales,
    is_diverging,
    peak_location,
)

__all__ = [
    "LABELS",
    "NPZ_DTYPES",
    "OUTPUTS",
    "OutputFile",
    "OutputOptions",
    "OutputRecord",
    "RankedClass",
    "RenderedClass",
    "build_record",
    "completion_marker",
    "drawn_scores",
    "image_ranking",
    "model_settings",
    "parse_npz_classes",
    "parse_outputs",
    "rendered_classes",
    "run_settings",
    "slug",
    "software_versions",
]

OUTPUTS: tuple[str, ...] = ("png", "npz", "json")
"""What an image's outputs can hold: the pictures (in ``image_format``), the npz, the json."""
LABELS: tuple[str, ...] = ("auto", "corner", "none")
"""Where an overlay's label goes: the corner hiding the least of the map, top-left, nowhere."""
NPZ_DTYPES: tuple[str, ...] = ("float32", "float16")
_NPZ_CLASSES_RE = re.compile(r"all|rendered|top([1-9][0-9]*)")


def parse_outputs(text: str) -> tuple[str, ...]:
    """Parses ``--outputs``: a comma-separated subset of :data:`OUTPUTS`; the json is added.

    Args:
        text: E.g. ``"png,npz"`` or ``"json"``.

    Returns:
        The outputs in :data:`OUTPUTS` order, always including ``"json"`` (the completion
        marker that ``--skip-existing`` checks).

    Raises:
        InvalidOptionError: An empty list or an unknown name.
    """
    names = [name.strip().lower() for name in text.split(",")]
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown or not text.strip():
        raise InvalidOptionError(
            f"outputs must be a comma-separated subset of {','.join(OUTPUTS)}, got {text!r}"
        )
    return tuple(name for name in OUTPUTS if name in names or name == "json")


def parse_npz_classes(text: str) -> str:
    """Checks ``--npz-classes``: ``all``, ``rendered`` or ``topK`` (``top20``: the ranking's 20).

    Returns:
        The value, lower-cased.

    Raises:
        InvalidOptionError: Anything else.
    """
    value = text.strip().lower()
    if not _NPZ_CLASSES_RE.fullmatch(value):
        raise InvalidOptionError(
            f"npz classes must be all, rendered or topK (e.g. top20), got {text!r}"
        )
    return value


@dataclass(frozen=True)
class OutputOptions:
    """How results are rendered and which files are written.

    Attributes:
        classes: Class indices to render; empty means the image-level ranking's ``top_k``.
        top_k: How many classes to render without ``classes``, and how many to rank in the json.
        scores: ``"probs"`` (per-cell softmax) or ``"logits"``: what the maps, labels and the
            json's class peaks show.
        cmap: Matplotlib colormap name; a diverging one is centred on the score 0.
        alpha: Opacity of the heat map at full score, 0..1.
        colorbar: Append a colour bar to each overlay.
        sheet: Write a contact sheet when several classes are rendered.
        pooling: How the json's image-level ``top_k`` pools each class map: ``"max"``/``"mean"``.
        scale: ``"shared"``, ``"absolute"`` or ``"per-class"`` (``render.scale``).
        vmin: Fixed score at the colormap's bottom, or None for the scale's.
        vmax: Fixed score at the colormap's top, or None for the scale's.
        label: ``"auto"``, ``"corner"`` (top-left) or ``"none"`` (:data:`LABELS`).
        outputs: Which of :data:`OUTPUTS` to write (the json always is).
        image_format: The pictures' format: ``"png"``, ``"jpg"`` or ``"webp"``.
        npz_classes: Which classes the npz keeps: ``"all"``, ``"rendered"`` or ``"topK"``.
        npz_dtype: ``"float32"`` or ``"float16"`` for the npz's logits and probs.

    Raises:
        InvalidOptionError: For any value that cannot work (checked when constructed).
    """

    classes: Sequence[int] = ()
    top_k: int = 3
    scores: str = "probs"
    cmap: str = "inferno"
    alpha: float = 0.5
    colorbar: bool = False
    sheet: bool = True
    pooling: str = "max"
    scale: str = DEFAULT_SCALE
    vmin: float | None = None
    vmax: float | None = None
    label: str = "auto"
    outputs: tuple[str, ...] = OUTPUTS
    image_format: str = "png"
    npz_classes: str = "all"
    npz_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.scores not in ("probs", "logits"):
            raise InvalidOptionError(f"scores must be probs or logits, got {self.scores!r}")
        check_scale(self.scale, self.scores == "probs", self.vmin, self.vmax)
        check_cmap(self.cmap)
        choices = {
            "label": (self.label, LABELS),
            "format": (self.image_format, tuple(IMAGE_FORMATS)),
            "npz dtype": (self.npz_dtype, NPZ_DTYPES),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise InvalidOptionError(
                    f"{name} must be one of {', '.join(allowed)}, got {value!r}"
                )
        parse_outputs(",".join(self.outputs))
        parse_npz_classes(self.npz_classes)

    @property
    def probabilities(self) -> bool:
        """Whether the maps show probabilities (else logits)."""
        return self.scores == "probs"


@dataclass(frozen=True)
class RenderedClass:
    """One class drawn for an image: where its drawn map peaks, and its overlay's file name.

    Attributes:
        index: Class index.
        name: Class name.
        peak: The highest cell of the drawn scores (a probability or a logit, as ``scores``).
        x: Centre of that cell's window, in original-image pixels.
        y: Likewise, vertically.
        overlay: File name of its overlay picture, next to the json; None when not written.
        scale: The colour scale its map is drawn on.
    """

    index: int
    name: str
    peak: float
    x: float
    y: float
    overlay: str | None
    scale: ColourScale


@dataclass(frozen=True)
class RankedClass:
    """One entry of the image-level ranking: a class and its pooled score in ``[0, 1]``."""

    index: int
    name: str
    score: float


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
        method: The grid method used.
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
    """

    image: Path
    model: str
    weights: str
    method: str
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
            # In original pixels, as the npz's window and centres; window_input as the network
            # saw it, in the input pixels of input_size and stride.
            "window": {
                "width": round(window_width, 3),
                "height": round(window_height, 3),
                "units": "original pixels",
            },
            "window_input": {**_size_json(self.geometry.window), "units": "input pixels"},
            "stride": self.geometry.stride,
            "grid": {"rows": rows, "cols": cols},
            "scores": self.scores,
            "activation": self.activation,
            "model_output": self.model_output,
            "classes": [asdict(c) for c in self.classes],
            "top_k": [asdict(r) for r in self.top_k],
            "top_k_pooling": self.top_k_pooling,
            "settings": self.settings,
            "versions": self.versions,
            "device": self.device,
            "dtype": self.dtype,
            "files": [{"name": f.name, "bytes": f.size} for f in self.files],
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


def run_settings(
    engine: GridEngine,
    options: OutputOptions,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict[str, object]:
    """Every option that changes a number or a file of an image's outputs: the json's settings.

    This is what ``--skip-existing`` compares (``heatmap_cli.resume``). Values are as they take
    effect: the method and stride resolved, classes as indices, the floating type the network
    computes in. Options that only change how the same numbers are computed, equal to float
    rounding, are left out, so that resuming with another batch size, tile side or memory
    budget, or with ``--compile``, does not redo finished images.

    Args:
        engine: The converted model and its settings.
        options: What is drawn and written, and how.
        scales: The factors of ``--size`` the passes use, in order.
        flip: Whether each scale's mirror image is averaged in.

    Returns:
        A JSON-ready dict.
    """
    grid = engine.settings
    return {
        **model_settings(engine),
        "weights": engine.loaded.source,
        "size": grid.size,
        "stride": engine.stride,
        "method": engine.method,
        "scales": [float(scale) for scale in scales],
        "flip": flip,
        "precision": engine.precision,
        "max_overlay_side": grid.max_display_side,
        "classes": [int(index) for index in options.classes],
        "top_k": options.top_k,
        "pooling": options.pooling,
        "scores": options.scores,
        "scale": options.scale,
        "vmin": options.vmin,
        "vmax": options.vmax,
        "cmap": options.cmap,
        "alpha": options.alpha,
        "colorbar": options.colorbar,
        "label": options.label,
        "sheet": options.sheet,
        "outputs": list(options.outputs),
        "format": options.image_format,
        "npz_classes": options.npz_classes,
        "npz_dtype": options.npz_dtype,
    }


def model_settings(engine: GridEngine) -> dict[str, object]:
    """The model's part of the json's ``settings``: what was loaded, and how it reads photos.

    Args:
        engine: The engine that scored the images (its model and settings).

    Returns:
        ``model`` and ``model_source`` (the source that loaded it), ``model_files`` (role ->
        ``{path, sha256}``: the model file or code, ``--weights``, ``--labels``),
        ``num_classes``, ``input_size`` (the window), ``mean``, ``std``, ``interpolation`` and
        ``activation`` (as asked for: ``"auto"``...).
    """
    loaded = engine.loaded
    return {
        "model": loaded.name,
        "model_source": loaded.family,
        "model_files": {f.role: {"path": str(f.path), "sha256": f.sha256} for f in loaded.files},
        "num_classes": loaded.num_classes,
        "input_size": _size_json(loaded.input_size),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "interpolation": loaded.interpolation,
        "activation": engine.settings.activation,
    }


def drawn_scores(grid: MultiScaleResult, options: OutputOptions) -> np.ndarray:
    """float32 ``(K, rows, cols)``: what the maps show, probabilities or logits."""
    return grid.probs if options.probabilities else grid.logits


def rendered_classes(
    result: ImageResult, categories: Sequence[str], options: OutputOptions
) -> tuple[RenderedClass, ...]:
    """The classes to draw for an image, where each drawn map peaks, and its colour scale.

    Args:
        result: The image's grid.
        categories: The ``K`` class names.
        options: ``classes``, or else the image-level ranking's ``top_k``; what is drawn.

    Returns:
        One entry per class, in drawing order.
    """
    values, centers = drawn_scores(result.grid, options), result.grid.geometry.centers()
    chosen = list(options.classes) or [
        index for index, _ in rank_image(result.grid.passes, options.top_k, options.pooling)
    ]
    scales = colour_scales(
        [values[index] for index in chosen],
        scale=options.scale,
        probabilities=options.probabilities,
        diverging=is_diverging(options.cmap),
        vmin=options.vmin,
        vmax=options.vmax,
    )
    suffix = f".{options.image_format}"
    classes = []
    for index, scale in zip(chosen, scales, strict=True):
        name = categories[index]
        peak, x, y = peak_location(values[index], centers)
        picture = f"{result.item.stem.name}_{index}_{slug(name)}{suffix}"
        overlay = picture if "png" in options.outputs else None
        classes.append(RenderedClass(index, name, peak, x, y, overlay, scale))
    return tuple(classes)


def image_ranking(
    result: ImageResult, categories: Sequence[str], options: OutputOptions
) -> tuple[RankedClass, ...]:
    """The image-level ranking the json's ``top_k`` holds: ``options.top_k`` classes, best first.

    Args:
        result: The image's passes.
        categories: The ``K`` class names.
        options: The ranking's length and pooling (``"max"`` or ``"mean"``).
    """
    ranking = rank_image(result.grid.passes, options.top_k, options.pooling)
    return tuple(RankedClass(i, categories[i], score) for i, score in ranking)


def build_record(
    result: ImageResult,
    engine: GridEngine,
    options: OutputOptions,
    classes: Sequence[RenderedClass],
    files: Sequence[OutputFile] = (),
) -> OutputRecord:
    """The one place an image's json record is assembled.

    Args:
        result: The image's grid and passes.
        engine: The engine that scored it (model, weights, method, size, device, dtype).
        options: The ranking's length and pooling, and what is drawn and written.
        classes: The rendered classes (:func:`rendered_classes`).
        files: The other files written for the image, with their sizes.

    Returns:
        The record; :meth:`OutputRecord.to_json` is what the json holds.
    """
    passes = result.grid.passes
    scales = [p.scale for p in passes if not p.flip]  # the order given: each scale, then mirror
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
        top_k=image_ranking(result, engine.categories, options),
        top_k_pooling=options.pooling,
        activation=engine.activation,
        model_output=engine.loaded.output,
        settings=run_settings(engine, options, scales, any(p.flip for p in passes)),
        versions=software_versions(),
        device=str(engine.device),
        dtype=engine.precision,
        files=tuple(files),
    )
