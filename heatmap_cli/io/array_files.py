"""Pictures and npz archives written atomically (:func:`~heatmap_cli.io.atomic.atomic_writer`).

The overlays and sheets as PNG (:mod:`~heatmap_cli.io.png`'s encoder), JPEG or WebP, and the
grids as ``.npz``, each into a temporary file moved into place when complete.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from heatmap_cli.io.atomic import atomic_writer
from heatmap_cli.io.formats import IMAGE_FORMATS
from heatmap_cli.io.png import encode_png

__all__ = ["write_image", "write_npz", "write_png"]

_NPY_SLICE = 1 << 20  # bytes of an array deflated at a time into an npz

_LOSSY_QUALITY = 90  # JPEG and WebP: no visible artefact on a colour map over a photo


def write_image(
    path: Path,
    image: np.ndarray,
    *,
    image_format: str = "png",
    compress_level: int = 1,
    icc_profile: bytes | None = None,
) -> None:
    """Write an 8-bit RGB array as a PNG, JPEG or WebP file, atomically.

    Args:
        path: The final file (its name is used as given).
        image: uint8 array of shape (H, W, 3), or (H, W, 4) for PNG and WebP.
        image_format: ``"png"`` (lossless), ``"jpg"`` or ``"webp"`` (lossy, quality 90).
        compress_level: PNG's deflate level 0..9 (:func:`~heatmap_cli.io.png.encode_png`).
            The default 1 takes 0.06 s (ISA-L) or 0.25 s (zlib) on a 12-megapixel overlay
            where Pillow's default 6 took 1.98 s, for files about 15% larger; it matters when a
            batch writes several full-resolution overlays per photo.
        icc_profile: An RGB ICC profile to embed, e.g. ``read_image(...).info
            .get("icc_profile")``, so the overlay shows the photo's colours as the source.

    Raises:
        TypeError: ``image`` is not a uint8 array.
        ValueError: ``image`` does not have shape (H, W, 3) or (H, W, 4), or an unknown
            format.
        OutputWriteError: The file cannot be written.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 numpy array, got {_describe(image)}")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise ValueError(f"image must have shape (H, W, 3) or (H, W, 4), got {image.shape}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if image_format == "png":
        encoded = encode_png(image, level=compress_level, icc_profile=icc_profile)
        with atomic_writer(path, "wb") as file:
            file.write(encoded)
        return
    picture = Image.fromarray(np.ascontiguousarray(image))  # RGB or RGBA from the shape
    if image_format == "jpg":
        picture = picture.convert("RGB")
    options: dict[str, Any] = {"quality": _LOSSY_QUALITY}
    if icc_profile:
        options["icc_profile"] = icc_profile
    with atomic_writer(path, "wb") as file:
        picture.save(file, format=IMAGE_FORMATS[image_format], **options)


def write_png(
    path: Path,
    image: np.ndarray,
    *,
    compress_level: int = 1,
    icc_profile: bytes | None = None,
) -> None:
    """Write an 8-bit RGB or RGBA array as a PNG file, atomically (see :func:`write_image`)."""
    write_image(path, image, compress_level=compress_level, icc_profile=icc_profile)


def write_npz(path: Path, **arrays: Any) -> None:
    """Write arrays to a compressed ``.npz`` file, atomically.

    The name is used exactly as given (``np.savez_compressed`` would append ``.npz`` to a
    file name lacking it; here it writes to an open file, so it does not). The file loads
    with ``np.load(path)`` without ``allow_pickle``.

    Args:
        path: The final file, normally ending in ``.npz``.
        **arrays: Name -> array-like (numpy arrays, scalars, lists of numbers or
            strings). Object arrays are refused because they would need pickle.

    Raises:
        TypeError: A value converts to an object array.
        OutputWriteError: The file cannot be written.
    """
    converted = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in converted.items():
        if array.dtype.hasobject:
            raise TypeError(
                f"array {name!r} has dtype object, which needs pickle to load; "
                "convert it to numbers or str first"
            )
    # The npz of a huge image's grid is hundreds of megabytes: each array is deflated straight
    # into the temporary file from its own memory, a slice at a time (np.savez_compressed holds
    # three 16 MiB copies per slice). A failure removes the temporary file.
    with (
        atomic_writer(path, "wb") as file,
        zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
    ):
        for name, array in converted.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                _write_npy(member, array)


def _write_npy(file: IO[bytes], array: np.ndarray) -> None:
    """``array`` in the ``.npy`` format (what ``np.save`` writes), in slices of 1 MiB."""
    contiguous = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(file, np.lib.format.header_data_from_array_1_0(contiguous))
    data = memoryview(contiguous.reshape(-1).view(np.uint8))
    for start in range(0, len(data), _NPY_SLICE):
        file.write(data[start : start + _NPY_SLICE])


def _describe(value: object) -> str:
    """Describe a value's type (and dtype) for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype}"
    return type(value).__name__
