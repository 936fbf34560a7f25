"""Which files are slides, and which reader opens each.

A file is read as a slide (by region, :func:`open_slide`) when

* its extension is a whole-slide format's (:data:`SLIDE_EXTENSIONS`: ``.svs``, ``.ndpi``,
  ``.mrxs``, ``.scn``...), or
* it is a TIFF (``.tif``, ``.tiff``, ``.btf``...) with a pyramid of levels, or more pixels than the
  photo path's decoding limit: a gigapixel GeoTIFF or BigTIFF in strips is read by region
  instead of being refused or decoded whole.

Every other file is a photo. Readers, in order: tifffile (through TiffSlide) for every TIFF-based
file, measured faster than OpenSlide on the same SVS; OpenSlide for the formats tifffile cannot
read (MIRAX, VMS/VMU, SVSLIDE, DICOM...) and as the second try for a TIFF tifffile refuses.
"""

from __future__ import annotations

from pathlib import Path

from heatmap_cli.errors import SlideReadError
from heatmap_cli.io._oserror import os_reason
from heatmap_cli.io.slides.base import Slide

__all__ = [
    "OPENSLIDE_EXTENSIONS",
    "SLIDE_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "is_slide",
    "open_slide",
]

OPENSLIDE_EXTENSIONS = frozenset({"mrxs", "vms", "vmu", "svslide", "dcm"})
"""Formats only OpenSlide reads."""

SLIDE_EXTENSIONS = frozenset({"svs", "ndpi", "scn", "bif", "qptiff"}) | OPENSLIDE_EXTENSIONS
"""Extensions that are always slides (lower case, no dot); folders are searched for them."""

TIFF_EXTENSIONS = frozenset({"tif", "tiff", "btf", "tf2", "tf8"})
"""TIFF extensions: a slide when pyramidal or larger than the photo decoding limit."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def _extension(path: Path) -> str:
    return path.name.rpartition(".")[2].lower() if "." in path.name else ""


def is_slide(path: Path, max_pixels: int | None) -> bool:
    """Whether ``path`` is read as a slide rather than decoded whole as a photo.

    Args:
        path: An input file.
        max_pixels: The photo path's decoding limit (None: no limit): a TIFF above it is a
            slide.

    Returns:
        True for slide extensions, and for TIFFs with several levels or above ``max_pixels``;
        False for everything else, and for a TIFF whose header cannot be parsed (the photo
        path then says what is wrong with it).
    """
    path = Path(path)
    extension = _extension(path)
    if extension in SLIDE_EXTENSIONS:
        return True
    if extension not in TIFF_EXTENSIONS:
        return False
    try:
        import tifffile
    except ImportError:  # without the [slides] extra every TIFF is a photo, as before
        return False
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            height, width = (
                series.levels[0].shape[series.axes.index("Y")],
                series.levels[0].shape[series.axes.index("X")],
            )
            if len(series.levels) > 1 or tiff.is_svs or tiff.is_ndpi or tiff.is_scn:
                return True
            return max_pixels is not None and height * width > max_pixels
    except Exception:  # not a TIFF tifffile can parse: the photo path reports it
        return False


def open_slide(path: Path) -> Slide:
    """Opens a slide with the reader for its format.

    Args:
        path: The slide file (for MIRAX, the ``.mrxs`` beside its folder).

    Returns:
        The opened slide; close it when done.

    Raises:
        SlideReadError: The file is missing or unreadable, truncated or damaged, or in a format
            no installed reader knows (the reason says what to do).
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as error:
        raise SlideReadError(path, os_reason(error)) from error
    if not magic:
        raise SlideReadError(path, "empty file")
    from heatmap_cli.io.slides.openslide import OpenSlideSlide, openslide_available

    if magic in _TIFF_MAGIC and _extension(path) not in OPENSLIDE_EXTENSIONS:
        try:
            from heatmap_cli.io.slides.tiff import TiffFileSlide
        except ImportError as error:
            raise _missing_extra(path, error) from error
        try:
            return TiffFileSlide(path)
        except SlideReadError as first:
            if not openslide_available():
                raise
            try:
                return OpenSlideSlide(path)
            except SlideReadError:
                raise first from None
    if not openslide_available():
        raise _missing_extra(path, ImportError("openslide"))
    return OpenSlideSlide(path)


def _missing_extra(path: Path, error: BaseException) -> SlideReadError:
    return SlideReadError(
        path,
        f"is a slide, and reading slides needs the slides extra ({error}); install it with: "
        "pip install 'heatmap-cli[slides]'",
    )
