"""Slides read through tifffile (TiffSlide's levels and vendor metadata, imagecodecs decoders).

Every TIFF-based layout: Aperio SVS, Hamamatsu NDPI, Leica SCN, Philips and Ventana TIFFs,
OME-TIFF (levels as SubIFDs), generic tiled pyramids, and flat BigTIFF/GeoTIFF files in tiles or
strips. Regions are zarr selections over the file's tiles or strips: only those a region touches
are decoded. Measured faster than OpenSlide on the same SVS (see ``docs/slides.md``), so it is
the first choice wherever it can open a file.

Microns per pixel come from the vendor's metadata (TiffSlide's ``tiffslide.mpp-x``), else from
OME's ``PhysicalSizeX``, else from the TIFF resolution tags when they are in centimetres or
inches and give a microscope's range (0.01 to 100 um/px: a 72 dpi default is no measurement).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from heatmap_cli.errors import SlideReadError
from heatmap_cli.io.slides.base import Slide, SlideLevel, over_white

__all__ = ["TiffFileSlide", "as_rgb8", "ome_mpp", "resolution_mpp"]

_MICRONS = {"m": 1e6, "mm": 1e3, "cm": 1e4, "µm": 1.0, "um": 1.0, "nm": 1e-3, "Å": 1e-4}
_PLAUSIBLE_MPP = (0.01, 100.0)


class TiffFileSlide(Slide):
    """A TIFF-based slide, read through TiffSlide (tifffile + zarr + imagecodecs).

    Raises:
        SlideReadError: The file is not a TIFF tifffile can parse (truncated header, damaged
            directory), or holds no image TiffSlide can serve.
    """

    def __init__(self, path: Path) -> None:
        import tiffslide

        class _LevelCoordinates(tiffslide.TiffSlide):
            # TiffSlide's documented hook: read_region's location in the level's own pixels
            def _read_region_loc_transform(
                self, location: tuple[int, int], level: int
            ) -> tuple[int, int]:
                return location

        self.path = Path(path)
        self.reader = "tifffile"
        try:
            self._slide = _LevelCoordinates(str(path))
            dimensions = self._slide.level_dimensions
            downsamples = self._slide.level_downsamples
            properties = dict(self._slide.properties)
        except Exception as error:
            raise SlideReadError(self.path, _open_reason(error)) from error
        self.levels = tuple(
            SlideLevel((int(h), int(w)), float(d))
            for (w, h), d in zip(dimensions, downsamples, strict=True)
        )
        self.vendor = str(properties.get("tiffslide.vendor") or self._layout())
        self.mpp = _vendor_mpp(properties) or self._metadata_mpp()

    def _layout(self) -> str:
        tiff = self._slide.ts_tifffile
        if tiff.is_ome:
            return "ome"
        return "generic-tiff" if tiff.pages.first.is_tiled else "flat-tiff"

    def _metadata_mpp(self) -> tuple[float, float] | None:
        tiff = self._slide.ts_tifffile
        if tiff.is_ome and tiff.ome_metadata:
            found = ome_mpp(tiff.ome_metadata)
            if found:
                return found
        page = tiff.pages.first
        tags = page.tags
        unit = tags.get("ResolutionUnit")
        x, y = tags.get("XResolution"), tags.get("YResolution")
        if unit is None or x is None or y is None:
            return None
        return resolution_mpp(int(unit.value), x.value, y.value)

    def _read(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        region = self._slide.read_region(
            (left, top), level, (width, height), as_array=True, padding=False
        )
        return as_rgb8(np.asarray(region))

    def close(self) -> None:
        """Releases the file."""
        self._slide.close()


def as_rgb8(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB of what a TIFF holds: RGBA over white, grey to RGB, 16-bit scaled down.

    A scene with more bands (a satellite's) gives its first three. Other sample formats (floats,
    32-bit integers) are returned as they are, and refused by ``Slide.read``.
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.dtype != np.uint8:
        return pixels
    bands = pixels.shape[2]
    if bands == 4:
        return over_white(pixels)
    if bands in (1, 2):
        return np.ascontiguousarray(np.repeat(pixels[..., :1], 3, axis=2))
    return np.ascontiguousarray(pixels[..., :3])


def _vendor_mpp(properties: dict[str, object]) -> tuple[float, float] | None:
    x, y = properties.get("tiffslide.mpp-x"), properties.get("tiffslide.mpp-y")
    try:
        mpp = (float(x), float(y if y is not None else x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return mpp if _plausible(mpp) else None


def ome_mpp(xml: str) -> tuple[float, float] | None:
    """``PhysicalSizeX/Y`` of an OME-XML document's first image, in microns; None if absent."""
    found = {}
    for axis in ("X", "Y"):
        size = re.search(rf'PhysicalSize{axis}="([^"]+)"', xml)
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', xml)
        if size is None:
            return None
        factor = _MICRONS.get(unit.group(1) if unit else "µm")
        try:
            found[axis] = float(size.group(1)) * factor if factor else None
        except ValueError:
            return None
    mpp = (found["X"], found["Y"])
    return mpp if None not in mpp and _plausible(mpp) else None  # type: ignore[arg-type]


def resolution_mpp(
    unit: int, x: tuple[int, int] | float, y: tuple[int, int] | float
) -> tuple[float, float] | None:
    """Microns per pixel from TIFF resolution tags (pixels per inch or per centimetre).

    Args:
        unit: ``ResolutionUnit``: 2 inch, 3 centimetre (1, no unit, gives None).
        x: ``XResolution``, a rational ``(numerator, denominator)`` or a number.
        y: ``YResolution``.

    Returns:
        ``(x, y)`` microns per pixel, or None when there is no unit or the values lie outside
        a microscope's range (a 72 dpi default is not a measurement).
    """
    microns = {2: 25400.0, 3: 10000.0}.get(unit)
    if microns is None:
        return None

    def per_pixel(value: tuple[int, int] | float) -> float:
        ratio = value[0] / value[1] if isinstance(value, tuple) and value[1] else float(value)  # type: ignore[arg-type]
        return microns / ratio if ratio > 0 else float("inf")

    try:
        mpp = (per_pixel(x), per_pixel(y))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return mpp if _plausible(mpp) else None


def _plausible(mpp: tuple[float, float]) -> bool:
    low, high = _PLAUSIBLE_MPP
    return all(low < value < high for value in mpp)


def _open_reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (
        f"cannot open as a tiled or pyramidal TIFF ({text[:160]}); the file is truncated or "
        "damaged: copy or export it again"
    )
