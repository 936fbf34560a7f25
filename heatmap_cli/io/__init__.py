"""Files in and out: reading photos, finding inputs, writing results atomically.

* :mod:`~heatmap_cli.io.reading`: :func:`read_image` (EXIF orientation, every Pillow mode,
  decompression bombs), :func:`read_photo` (JPEGs decoded no larger than needed),
  :func:`photo_of_image` (an image already in memory);
* :mod:`~heatmap_cli.io.inputs`: :func:`find_images` (files and folders to images and unique
  output stems), :func:`output_path`;
* :mod:`~heatmap_cli.io.atomic`: :func:`atomic_writer` and the picture (PNG, JPEG, WebP), npz
  and json writers built on it, :func:`remove_stale_temporaries`;
* :mod:`~heatmap_cli.io.png`: the PNG encoder (Up filter, ISA-L or zlib deflate);
* :mod:`~heatmap_cli.io.pixels`: Pillow images to numpy arrays, band by band;
* :mod:`~heatmap_cli.io.figure_cache`: slow structure-only figures kept on disk, handed to the
  tiling estimate by the engine;
* :mod:`~heatmap_cli.io.staging`: :func:`staged_files`, a private folder whose files are moved
  into place together (a run never deletes another run's files);
* :mod:`~heatmap_cli.io.strict`: :func:`read_regular_file` (no FIFO, device or folder, a size
  limit) and :func:`loads_strict` (JSON without NaN or infinity), for files read back;
* :mod:`~heatmap_cli.io.locking`: :func:`locked`, an exclusive lock on a folder between processes.
"""

from __future__ import annotations

from heatmap_cli.io.atomic import (
    IMAGE_FORMATS,
    atomic_writer,
    is_temporary_name,
    remove_stale_temporaries,
    temporary_name,
    write_image,
    write_json,
    write_npz,
    write_png,
)
from heatmap_cli.io.inputs import (
    IMAGE_EXTENSIONS,
    ErrorHandler,
    ImageInput,
    find_images,
    output_path,
    slug,
)
from heatmap_cli.io.locking import locked
from heatmap_cli.io.reading import (
    DEFAULT_MAX_PIXELS,
    DecodedPhoto,
    display_size,
    photo_of_image,
    read_image,
    read_photo,
)
from heatmap_cli.io.staging import Staging, staged_files
from heatmap_cli.io.strict import (
    FileTooLargeError,
    NonFiniteJsonError,
    NotAFileError,
    loads_strict,
    read_regular_file,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "DecodedPhoto",
    "ErrorHandler",
    "FileTooLargeError",
    "ImageInput",
    "NonFiniteJsonError",
    "NotAFileError",
    "Staging",
    "atomic_writer",
    "display_size",
    "find_images",
    "is_temporary_name",
    "loads_strict",
    "locked",
    "output_path",
    "photo_of_image",
    "read_image",
    "read_photo",
    "read_regular_file",
    "remove_stale_temporaries",
    "slug",
    "staged_files",
    "temporary_name",
    "write_image",
    "write_json",
    "write_npz",
    "write_png",
]
