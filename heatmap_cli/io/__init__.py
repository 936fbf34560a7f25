"""Files in and out: reading photos, finding inputs, writing results atomically.

* :mod:`~heatmap_cli.io.reading`: :func:`read_image` (EXIF orientation, every Pillow mode,
  decompression bombs);
* :mod:`~heatmap_cli.io.inputs`: :func:`find_images` (files and folders to images and unique
  output stems), :func:`output_path`;
* :mod:`~heatmap_cli.io.writing`: :func:`atomic_writer` and the picture (PNG, JPEG, WebP), npz
  and json writers built on it, :func:`remove_stale_temporaries`.
"""

from __future__ import annotations

from heatmap_cli.io.inputs import IMAGE_EXTENSIONS, ImageInput, find_images, output_path
from heatmap_cli.io.reading import DEFAULT_MAX_PIXELS, read_image
from heatmap_cli.io.writing import (
    IMAGE_FORMATS,
    atomic_writer,
    is_temporary_name,
    remove_stale_temporaries,
    write_image,
    write_json,
    write_npz,
    write_png,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "ImageInput",
    "atomic_writer",
    "find_images",
    "is_temporary_name",
    "output_path",
    "read_image",
    "remove_stale_temporaries",
    "write_image",
    "write_json",
    "write_npz",
    "write_png",
]
