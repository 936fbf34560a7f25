"""How slides are read, as plain values: the slide options parsed and checked without numpy.

The command checks ``--tissue`` and ``--slide-context`` while it parses them, before anything
heavy is imported (a usage error answers without torch); the slide pipeline
(:mod:`heatmap_cli.pipeline.slides`) takes these settings and re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heatmap_cli.errors import InvalidOptionError, setting

__all__ = [
    "DEFAULT_MIN_TISSUE",
    "DEFAULT_SLIDES",
    "DEFAULT_SLIDE_TILE",
    "GRID_FORMATS",
    "SLIDE_MEMORY_BUDGET",
    "SlideSettings",
    "parse_context",
    "parse_grid_format",
    "parse_tissue",
]

DEFAULT_MIN_TISSUE = 0.25
"""A cell is tissue when at least this fraction of its window is tissue."""

DEFAULT_SLIDE_TILE = 2048
"""Tile side in model pixels for convolutional methods: large enough that the receptive-field
overlap costs little, small enough that background tiles are skipped and memory stays low."""

SLIDE_MEMORY_BUDGET = 2**30
"""Activation memory of one tile when no memory budget is given: with the runtime (about
0.8 GiB) and the read-ahead, a slide of any size stays within 2 GiB."""

@dataclass(frozen=True)
class SlideSettings:
    """How slides are read and which of their cells are scored.

    Attributes:
        model_mpp: Microns per pixel the model was trained at; None scores level 0 as is.
        slide_mpp: Microns per level-0 pixel, overriding the file's metadata.
        tissue: ``"auto"`` (Otsu on saturation), ``"off"`` (every cell) or a mask image path.
        min_tissue: Fraction of a window that must be tissue for its cell to be scored.
        tile: Tile side in model pixels; None: :data:`DEFAULT_SLIDE_TILE`, or less if the
            engine's memory budget (else :data:`SLIDE_MEMORY_BUDGET`) says so.
        context: Model pixels of neighbours a tile carries around the windows it keeps; None
            carries each cell's whole receptive field, so the grid equals one pass over the
            slide (at a cost: for ResNet-18 at 1536-pixel tiles, 1.5x the area of one pass).
            A small context (e.g. 64) lets cells at tile edges see zeros where one pass would
            see neighbours, and makes skipping the background pay.
        thumbnail_side: Longest side of the thumbnail (mask, overlays).
        read_ahead: Tiles decoded ahead of the network.
        grid_format: The grid file: ``"auto"`` (a ``.npz``, or a ``.zarr`` store when the grid
            would take too much of the memory budget), ``"npz"`` or ``"zarr"``.
    """

    model_mpp: float | None = None
    slide_mpp: float | None = None
    tissue: str = "auto"
    min_tissue: float = DEFAULT_MIN_TISSUE
    tile: int | None = None
    context: int | None = None
    thumbnail_side: int = 4096
    read_ahead: int = 2
    grid_format: str = "auto"


GRID_FORMATS = ("auto", "npz", "zarr")
"""What ``grid_format`` takes."""

DEFAULT_SLIDES = SlideSettings()
"""Slides at their own pixels, automatic tissue mask."""


def parse_tissue(text: str) -> str:
    """``tissue``: ``auto``, ``off``, or the path of a mask image (checked to exist).

    Raises:
        InvalidOptionError: A path that is not a file.
    """
    value = str(text).strip()
    if value.lower() in ("auto", "off"):
        return value.lower()
    if not Path(value).is_file():
        raise InvalidOptionError(f"must be auto, off or a mask image file; {value!r} is not a file")
    return value


def parse_context(text: str) -> int | None:
    """``context``: ``exact`` (None: each cell's whole receptive field) or model pixels >= 0.

    Raises:
        InvalidOptionError: Anything else.
    """
    value = str(text).strip().lower()
    if value == "exact":
        return None
    try:
        pixels = int(value)
    except ValueError:
        raise InvalidOptionError(f"must be 'exact' or a number of pixels, got {text!r}") from None
    if pixels < 0:
        raise InvalidOptionError(f"must be at least 0, got {pixels}")
    return pixels


def parse_grid_format(text: str) -> str:
    """``grid_format``: one of :data:`GRID_FORMATS`.

    Raises:
        InvalidOptionError: Anything else.
    """
    value = str(text).strip().lower()
    if value not in GRID_FORMATS:
        raise InvalidOptionError(
            f"{setting('grid_format')} must be {', '.join(GRID_FORMATS)}; got {text!r}"
        )
    return value
