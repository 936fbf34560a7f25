"""Files in and out: reading photos, finding inputs, writing results atomically.

* :mod:`~heatmap_cli.io.reading`: :func:`read_image` (EXIF orientation, every Pillow mode,
  decompression bombs), :func:`read_photo` (JPEGs decoded no larger than needed),
  :func:`photo_of_image` (an image already in memory);
* :mod:`~heatmap_cli.io.inputs`: :func:`find_images` (files and folders to images and unique
  output stems), :func:`output_path`;
* :mod:`~heatmap_cli.io.atomic`: :func:`atomic_writer`, the json writer built on it,
  :func:`remove_stale_temporaries`;
* :mod:`~heatmap_cli.io.array_files`: the picture (PNG, JPEG, WebP) and npz writers;
* :mod:`~heatmap_cli.io.formats`: the picture formats and the decoding limit, as plain values;
* :mod:`~heatmap_cli.io.png`: the PNG encoder (Up filter, ISA-L or zlib deflate);
* :mod:`~heatmap_cli.io.pixels`: Pillow images to numpy arrays, band by band;
* :mod:`~heatmap_cli.io.figure_cache`: slow structure-only figures kept on disk, handed to the
  tiling estimate by the engine;
* :mod:`~heatmap_cli.io.staging`: :func:`staged_files`, a private folder whose files are moved
  into place together (a run never deletes another run's files);
* :mod:`~heatmap_cli.io.strict`: :func:`read_regular_file` (no FIFO, device or folder, a size
  limit) and :func:`loads_strict` (JSON without NaN or infinity), for files read back;
* :mod:`~heatmap_cli.io.locking`: :func:`locked`, an exclusive lock on a folder between processes.

Each name is imported from its module on first use, so that finding inputs, checking outputs
and writing json (all a run does when every image is done already) import neither numpy nor
Pillow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heatmap_cli.io.array_files import write_image, write_npz, write_png
    from heatmap_cli.io.atomic import (
        atomic_writer,
        is_temporary_name,
        remove_stale_temporaries,
        temporary_name,
        write_json,
    )
    from heatmap_cli.io.formats import DEFAULT_MAX_PIXELS, IMAGE_FORMATS
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

_EXPORTS = {
    "IMAGE_FORMATS": "heatmap_cli.io.formats",
    "atomic_writer": "heatmap_cli.io.atomic",
    "is_temporary_name": "heatmap_cli.io.atomic",
    "remove_stale_temporaries": "heatmap_cli.io.atomic",
    "temporary_name": "heatmap_cli.io.atomic",
    "write_image": "heatmap_cli.io.array_files",
    "write_json": "heatmap_cli.io.atomic",
    "write_npz": "heatmap_cli.io.array_files",
    "write_png": "heatmap_cli.io.array_files",
    "IMAGE_EXTENSIONS": "heatmap_cli.io.inputs",
    "ErrorHandler": "heatmap_cli.io.inputs",
    "ImageInput": "heatmap_cli.io.inputs",
    "find_images": "heatmap_cli.io.inputs",
    "output_path": "heatmap_cli.io.inputs",
    "slug": "heatmap_cli.io.inputs",
    "locked": "heatmap_cli.io.locking",
    "DEFAULT_MAX_PIXELS": "heatmap_cli.io.formats",
    "DecodedPhoto": "heatmap_cli.io.reading",
    "display_size": "heatmap_cli.io.reading",
    "photo_of_image": "heatmap_cli.io.reading",
    "read_image": "heatmap_cli.io.reading",
    "read_photo": "heatmap_cli.io.reading",
    "Staging": "heatmap_cli.io.staging",
    "staged_files": "heatmap_cli.io.staging",
    "FileTooLargeError": "heatmap_cli.io.strict",
    "NonFiniteJsonError": "heatmap_cli.io.strict",
    "NotAFileError": "heatmap_cli.io.strict",
    "loads_strict": "heatmap_cli.io.strict",
    "read_regular_file": "heatmap_cli.io.strict",
}

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


def __getattr__(name: str) -> Any:
    """Imports a name's module on first use: numpy and Pillow only to read or write images."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heatmap_cli.io' has no attribute {name!r}")
