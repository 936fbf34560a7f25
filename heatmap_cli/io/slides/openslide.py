"""Slides read through OpenSlide (openslide-bin + openslide-python): the formats tifffile lacks.

MIRAX (``.mrxs`` with its folder of ``.dat`` files), Hamamatsu VMS/VMU, Ventana BIF, Sakura
SVSLIDE, DICOM WSI folders and others of OpenSlide's list. Always ``openslide.OpenSlide``, never
``openslide.open_slide``, whose fallback would decode a non-slide file whole through Pillow.
OpenSlide's regions are RGBA (openslide-python undoes the premultiplication) with transparent
areas outside the scanned parts; they are composited over white.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from heatmap_cli.errors import SlideReadError
from heatmap_cli.io.slides.base import Slide, SlideLevel, over_white

__all__ = ["OpenSlideSlide", "openslide_available"]


def openslide_available() -> bool:
    """Whether openslide-python and its library (openslide-bin or a system one) load."""
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


class OpenSlideSlide(Slide):
    """A slide opened by OpenSlide.

    Raises:
        SlideReadError: OpenSlide is not installed, does not know the format, or cannot read
            the file (the reason names which, and what to do).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.reader = "openslide"
        try:
            import openslide
        except (ImportError, OSError) as error:
            raise SlideReadError(
                self.path,
                f"needs OpenSlide ({error}); install it with: pip install 'heatmap-cli[slides]'",
            ) from error
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as error:
            raise SlideReadError(self.path, unsupported_reason()) from error
        except (openslide.OpenSlideError, OSError) as error:
            raise SlideReadError(
                self.path,
                f"OpenSlide cannot read it ({error}); the file or one of its companion files is "
                "truncated or missing: copy the whole slide (with its folder) again",
            ) from error
        properties = self._slide.properties
        self.levels = tuple(
            SlideLevel((int(h), int(w)), float(d))
            for (w, h), d in zip(
                self._slide.level_dimensions, self._slide.level_downsamples, strict=True
            )
        )
        self.vendor = str(properties.get(openslide.PROPERTY_NAME_VENDOR) or "openslide")
        self.mpp = _mpp(
            properties.get(openslide.PROPERTY_NAME_MPP_X),
            properties.get(openslide.PROPERTY_NAME_MPP_Y),
        )

    def _read(self, level: int, top: int, left: int, height: int, width: int) -> np.ndarray:
        downsample = self.levels[level].downsample
        location = (round(left * downsample), round(top * downsample))  # level-0 coordinates
        return over_white(np.asarray(self._slide.read_region(location, level, (width, height))))

    def close(self) -> None:
        """Releases the file."""
        self._slide.close()


def _mpp(x: str | None, y: str | None) -> tuple[float, float] | None:
    try:
        mpp = (float(x), float(y if y is not None else x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return mpp if all(value > 0 for value in mpp) else None


def unsupported_reason() -> str:
    """What to say of a file that no reader knows."""
    return (
        "not a slide format the installed readers know (tifffile, OpenSlide); convert it to "
        "OME-TIFF or a tiled pyramidal TIFF (e.g. with bfconvert, or vips tiffsave's tile "
        "and pyramid options)"
    )
