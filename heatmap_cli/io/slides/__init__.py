"""Whole-slide and gigapixel images, read by region behind one small interface.

* :mod:`~heatmap_cli.io.slides.base`: :class:`Slide` (levels, microns per pixel, regions,
  thumbnails in bounded memory) and :class:`SlideLevel`;
* :mod:`~heatmap_cli.io.slides.formats`: :func:`is_slide` (which inputs are slides) and
  :func:`open_slide` (the reader for each format);
* :mod:`~heatmap_cli.io.slides.tiff`: TIFF-based slides through tifffile/TiffSlide;
* :mod:`~heatmap_cli.io.slides.openslide`: the rest through OpenSlide.

The readers come with the ``slides`` extra (``pip install 'heatmap-cli[slides]'``); without it
no TIFF is taken for a slide, and a slide extension fails with the line that says so.
"""

from heatmap_cli.io.slides.base import Slide, SlideLevel
from heatmap_cli.io.slides.formats import (
    SLIDE_EXTENSIONS,
    TIFF_EXTENSIONS,
    is_slide,
    open_slide,
)

__all__ = ["SLIDE_EXTENSIONS", "TIFF_EXTENSIONS", "Slide", "SlideLevel", "is_slide", "open_slide"]
