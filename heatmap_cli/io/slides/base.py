"""The one small interface every slide reader offers: levels, microns per pixel, regions.

A :class:`Slide` is a pyramid of :class:`SlideLevel` s (level 0 the full resolution, each other
level ``downsample`` times coarser) read by region: :meth:`Slide.read` decodes only the tiles or
strips a region touches, so a slide of any size is read in bounded memory. Every reader returns
uint8 RGB ``(h, w, 3)`` arrays in the level's own pixel coordinates; transparent or missing
background (OpenSlide's empty areas) is white, as glass is.

:meth:`Slide.thumbnail` reads the coarsest level that is still large enough, in bands of rows,
so even a one-level 100k x 100k TIFF gives its thumbnail without being decoded whole.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image

from heatmap_cli.errors import SlideReadError

__all__ = [
    "THUMBNAIL_BAND_PIXELS",
    "Slide",
    "SlideLevel",
    "corrupt_region",
    "over_white",
]

THUMBNAIL_BAND_PIXELS = 1 << 24
"""Level pixels decoded at a time while making a thumbnail (48 MiB of RGB)."""


@dataclass(frozen=True)
class SlideLevel:
    """One level of a slide's pyramid.

    Attributes:
        size: ``(height, width)`` in the level's pixels.
        downsample: Level-0 pixels per pixel of this level (1 for level 0).
    """

    size: tuple[int, int]
    downsample: float


class Slide(ABC):
    """A slide opened for reading by region; close it (or use it as a context manager).

    Attributes:
        path: The file.
        levels: The pyramid, finest first; ``levels[0]`` is the full resolution.
        mpp: Microns per level-0 pixel ``(x, y)`` from the file's metadata; None if it has none.
        vendor: The format as the reader names it (``"aperio"``, ``"ome"``, ``"generic-tiff"``,
            ``"mirax"``...).
        reader: Which reader opened it: ``"tifffile"`` or ``"openslide"``.
    """

    path: Path
    levels: tuple[SlideLevel, ...]
    mpp: tuple[float, float] | None
    vendor: str
    reader: str

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of level 0."""
        return self.levels[0].size

    def read(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """Decodes one region of a level.

        Args:
            level: Index into :attr:`levels`.
            top: First row, in the level's pixels.
            left: First column.
            height: Rows; the region must lie inside the level.
            width: Columns.

        Returns:
            uint8 ``(height, width, 3)`` RGB pixels.

        Raises:
            SlideReadError: A region outside the level, or tiles that cannot be decoded
                (truncated file, corrupt tile, missing level data).
        """
        rows, cols = self.levels[level].size
        if not (top >= 0 and left >= 0 and height > 0 and width > 0):
            raise SlideReadError(self.path, f"empty or negative region at level {level}")
        if top + height > rows or left + width > cols:
            raise SlideReadError(
                self.path,
                f"region {left},{top} {width}x{height} leaves level {level} ({cols}x{rows})",
            )
        try:
            pixels = self._read(level, top, left, height, width)
        except SlideReadError:
            raise
        except MemoryError:
            raise
        except Exception as error:  # the decoders' many ways of meeting damaged data
            raise corrupt_region(self.path, level, (top, left, height, width), error) from error
        if pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
            raise SlideReadError(
                self.path,
                f"level {level} gave {pixels.dtype} {pixels.shape} pixels, not RGB: an "
                "unsupported sample format; convert the slide to 8-bit RGB",
            )
        return pixels

    @abstractmethod
    def _read(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        """The reader's own decoding of a region already checked to lie inside the level."""

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """The whole slide, shrunk so that its longest side is at most ``max_side``.

        Reads the coarsest level at least as large as the thumbnail, a band of rows at a time,
        each band shrunk with a box filter (the mean of the pixels each thumbnail pixel covers).

        Args:
            max_side: Longest side of the thumbnail in pixels.

        Returns:
            uint8 ``(h, w, 3)`` pixels, and level-0 pixels per thumbnail pixel.
        """
        height, width = self.size
        factor = max(1.0, max(height, width) / max_side)
        out_h, out_w = max(1, round(height / factor)), max(1, round(width / factor))
        level = self.level_at_most(factor)
        rows, cols = self.levels[level].size
        per_out = rows / out_h  # level rows per thumbnail row
        band = max(1, int(THUMBNAIL_BAND_PIXELS // max(cols, 1) / per_out)) if per_out else 1
        parts = []
        for start in range(0, out_h, band):
            stop = min(out_h, start + band)
            top, bottom = math.floor(start * per_out), min(rows, math.ceil(stop * per_out))
            pixels = self.read(level, top, 0, max(1, bottom - top), cols)
            box = (0.0, start * per_out - top, float(cols), stop * per_out - top)
            image = Image.fromarray(pixels).resize((out_w, stop - start), Image.Resampling.BOX, box)
            parts.append(np.asarray(image))
        return np.concatenate(parts, axis=0), height / out_h

    def level_at_most(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (1% tolerance)."""
        best = 0
        for index, level in enumerate(self.levels):
            if (
                level.downsample <= downsample * 1.01
                and level.downsample >= self.levels[best].downsample
            ):
                best = index
        return best

    @abstractmethod
    def close(self) -> None:
        """Releases the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def corrupt_region(
    path: Path, level: int, region: tuple[int, int, int, int], error: BaseException
) -> SlideReadError:
    """The error for a region that cannot be decoded: where, why, and what to do."""
    top, left, height, width = region
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return SlideReadError(
        path,
        f"cannot decode level {level} at {left},{top} ({width}x{height} pixels): {detail[:160]}; "
        "the file is truncated or a tile is corrupt: copy or export the slide again",
    )


def over_white(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``(h, w, 3)``: straight (not premultiplied) RGBA ``(h, w, 4)`` over white glass."""
    alpha = pixels[..., 3:4].astype(np.uint16)
    rgb = pixels[..., :3].astype(np.uint16)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
