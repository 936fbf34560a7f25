"""Reading input photos: any file Pillow decodes, as RGB in the orientation a viewer shows.

:func:`read_image` turns any file Pillow can decode into an RGB image in the orientation a viewer
displays it, or raises :class:`~heatmap_cli.errors.ImageReadError` with a short reason.
:func:`read_photo` does the same for a caller that says how much it needs: a JPEG is then
decoded at 1/2, 1/4 or 1/8 of its size where that is enough, and the full size is returned too.

Decompression-bomb guard and threads:
    Pillow's guard is the process-wide ``PIL.Image.MAX_IMAGE_PIXELS``, read by
    ``Image.open`` and, for some formats (TIFF, GIF), again while decoding. Changing it
    per call would race with other threads, so :func:`read_image` enforces its own
    ``max_pixels`` on the header size and neutralises Pillow's global only inside
    ``_pillow_guard_lifted``: a module lock is held, the global is set to ``None`` and
    restored before the lock is released. The lock covers ``Image.open`` (header parsing
    only, well under a millisecond for a photo), so decoding, the expensive part, runs in
    parallel. Only images larger than Pillow's own limit (which ``max_pixels`` allowed on
    purpose) are also decoded under the lock; serialising those huge decodes also bounds
    peak memory. Consequences: inside :func:`read_image`, ``max_pixels`` is the only limit
    (Pillow's global is neither tightened nor loosened for other code), and code outside
    this module that calls ``Image.open`` in another thread at the very moment the lock
    is held sees no limit for that call.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from heatmap_cli.errors import ImageReadError, setting
from heatmap_cli.io._oserror import os_reason

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodedPhoto",
    "SizeNeeded",
    "display_size",
    "photo_of_image",
    "read_image",
    "read_photo",
]

DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
"""Pillow's default ``Image.MAX_IMAGE_PIXELS`` (89,478,485: about 0.25 GiB of RGB)."""

# Exceptions Pillow's decoders raise on malformed input. Broad on purpose: a file that
# makes a plugin fail in any of these ways is a bad input, not a bug in this program.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    zlib.error,
)

# File signatures of the formats above: a file that starts like an image but cannot be
# identified is damaged, not "not an image".
_MAGIC_PREFIXES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)

_EXIF_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_TURNS_SIDEWAYS = frozenset({5, 6, 7, 8})  # orientations that swap width and height

SizeNeeded = Callable[[tuple[int, int]], tuple[int, int]]
"""Given a photo's full ``(H, W)`` in displayed orientation, the least ``(h, w)`` a caller needs."""


@dataclass(frozen=True)
class DecodedPhoto:
    """A photo decoded for a caller that may need less than its full resolution.

    Attributes:
        image: RGB ``PIL.Image`` in displayed orientation (see :func:`read_image`); a JPEG may
            be decoded at 1/2, 1/4 or 1/8 of its size, never below the size the caller needs.
        original_size: ``(H, W)`` of the photo at full resolution, in displayed orientation:
            what grid geometry refers to.
    """

    image: Image.Image
    original_size: tuple[int, int]


_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

_pillow_guard_lock = threading.Lock()


def read_image(path: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into RGB pixels in their displayed orientation.

    The EXIF (or XMP) orientation is applied, so the result is what a photo viewer shows.
    Every Pillow mode becomes 8-bit RGB: transparency (alpha channels, palette and colour-key
    transparency) is composited over white; 16-bit greyscale is scaled from 0..65535 to
    0..255; 32-bit integer images outside 0..65535 and float images outside 0..1 are
    stretched linearly from their minimum to their maximum; CMYK (including Adobe's
    inverted CMYK) and CIELab go through Pillow's converters. Animated files give their
    first frame. Embedded colour profiles are not applied; an RGB profile is kept in
    ``info["icc_profile"]``, and the overlays written for the photo carry it (``write_png``'s
    ``icc_profile``), so they show the photo's colours as its source does.

    The whole file is decoded here, so truncated or corrupt data fails in this call.

    Args:
        path: The image file.
        max_pixels: Largest accepted ``width * height``, checked on the header before any
            pixel is decoded. Defaults to Pillow's own default limit; ``None`` disables
            the check deliberately (the caller trusts its inputs). Pillow's global
            ``Image.MAX_IMAGE_PIXELS`` does not apply inside this function.

    Returns:
        A new, fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, detached from the file.
        Its ``info`` holds at most ``"icc_profile"``; the EXIF orientation is already
        applied, so ``ImageOps.exif_transpose`` on it is a no-op.

    Raises:
        ImageReadError: The file is missing, not a regular file, unreadable, empty, not an
            image, truncated or corrupt, too large, or in an unsupported mode. ``reason``
            says which in a few words.
        ValueError: ``max_pixels`` is not positive.
    """
    return read_photo(path, max_pixels=max_pixels).image


def read_photo(
    path: Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    needed: SizeNeeded | None = None,
) -> DecodedPhoto:
    """Decode an image file as :func:`read_image` does, at a reduced size where that is enough.

    A JPEG is decoded with Pillow's ``draft``: libjpeg's scaled inverse DCT gives 1/2, 1/4 or
    1/8 of the size directly, several times faster and with that much less memory than
    decoding every pixel and shrinking afterwards. The scale is the smallest whose result is
    at least ``needed(original_size)`` on both sides; other formats decode in full.

    Args:
        path: The image file.
        max_pixels: As for :func:`read_image`, checked on the full size.
        needed: The least ``(h, w)`` the caller needs, given the full ``(H, W)``, both in
            displayed orientation; None decodes in full.

    Returns:
        The RGB image and the photo's full size.

    Raises:
        ImageReadError: As :func:`read_image`.
        ValueError: ``max_pixels`` is not positive.
    """
    path = Path(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")

    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ImageReadError(path, "is a directory")
        # Opening a FIFO or a device would block or read forever.
        if not stat.S_ISREG(mode):
            raise ImageReadError(path, "not a regular file")
        fp = path.open("rb")
    except OSError as exc:
        raise ImageReadError(path, os_reason(exc)) from exc

    with fp:
        try:
            if os.fstat(fp.fileno()).st_size == 0:
                raise ImageReadError(path, "empty file")
            prefix = fp.read(16)
            fp.seek(0)
        except OSError as exc:
            raise ImageReadError(path, os_reason(exc)) from exc
        image, pillow_limit = _open(path, fp, prefix)
        return _decode(path, image, max_pixels, pillow_limit, needed)


def photo_of_image(image: Image.Image, name: str = "image") -> DecodedPhoto:
    """An image already in memory as a photo, its pixels as they are, converted to RGB.

    Every mode is converted as :func:`read_image` converts it; unlike a file, the image is not
    turned by its EXIF orientation (its pixels are what the caller has, and sees). An RGB
    colour profile in ``info["icc_profile"]`` is kept for the overlays. The caller's image is
    never modified.

    Args:
        image: Any Pillow image (loaded here if it is not yet).
        name: What messages call it.

    Raises:
        ImageReadError: Its data cannot be decoded, or its mode cannot be converted.
    """
    label = Path(name)
    try:
        image.load()
        rgb = _to_rgb(image)
    except (ValueError, OSError, ImageCms.PyCMSError) as exc:
        raise ImageReadError(label, f"unsupported image mode {image.mode}") from exc
    except _DECODE_ERRORS as exc:
        raise ImageReadError(label, _read_reason(exc)) from exc
    profile = image.info.get("icc_profile")
    rgb_profile = isinstance(profile, bytes) and profile[16:20] == b"RGB "
    if rgb is image and profile is not None and not rgb_profile:
        rgb = image.copy()  # the caller's image keeps its info; the copy loses the profile
    if rgb is not image:
        rgb.info = {"icc_profile": profile} if rgb_profile else {}
    return DecodedPhoto(rgb, (rgb.height, rgb.width))


def _open(path: Path, fp: BinaryIO, prefix: bytes) -> tuple[Image.Image, int | None]:
    """``Image.open`` (the header only) and Pillow's pixel limit; failures as ImageReadError."""
    try:
        with _pillow_guard_lifted() as pillow_limit:
            return Image.open(fp), pillow_limit
    except UnidentifiedImageError as exc:
        damaged = prefix.startswith(_MAGIC_PREFIXES) or (
            prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP"
        )
        reason = (
            "truncated or corrupt image data" if damaged else "not an image (unrecognized format)"
        )
        raise ImageReadError(path, reason) from exc
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, _read_reason(exc)) from exc


def _decode(
    path: Path,
    image: Image.Image,
    max_pixels: int | None,
    pillow_limit: int | None,
    needed: SizeNeeded | None,
) -> DecodedPhoto:
    """Size-check, load (reduced where ``needed`` allows) and convert one opened image."""
    with image:
        width, height = image.size
        pixels = width * height
        if max_pixels is not None and pixels > max_pixels:
            raise ImageReadError(
                path,
                f"image has {width} x {height} = {pixels} pixels, above the limit of "
                f"{max_pixels}; raise it with {setting('max_pixels')}",
            )
        if needed is not None and image.format == "JPEG":
            _reduce_jpeg(image, needed)
        # Pillow re-checks its global limit while decoding some formats (TIFF tiles, GIF
        # frames); only images above that limit need it lifted during the decode too.
        huge = pillow_limit is not None and pixels > pillow_limit
        try:
            with _pillow_guard_lifted() if huge else contextlib.nullcontext():
                image.load()
        except MemoryError as exc:
            raise _out_of_memory(path, "decode", width, height) from exc
        except _DECODE_ERRORS as exc:
            raise ImageReadError(path, _read_reason(exc)) from exc

        orientation = _exif_orientation(image)
        try:
            rgb = _to_rgb(image)
        except (ValueError, OSError, ImageCms.PyCMSError) as exc:
            raise ImageReadError(path, f"unsupported image mode {image.mode}") from exc
        except MemoryError as exc:
            raise _out_of_memory(path, "convert", width, height) from exc
        profile = image.info.get("icc_profile")

    transpose = _EXIF_TRANSPOSE.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    # Clear the copied metadata: it still holds the EXIF orientation we just applied.
    rgb.info = {}
    if isinstance(profile, bytes) and profile[16:20] == b"RGB ":
        rgb.info["icc_profile"] = profile
    sideways = orientation in _TURNS_SIDEWAYS
    return DecodedPhoto(rgb, (width, height) if sideways else (height, width))


def _reduce_jpeg(image: Image.Image, needed: SizeNeeded) -> None:
    """Has a JPEG decode at the smallest DCT scale that still gives the size ``needed``."""
    sideways = _exif_orientation(image) in _TURNS_SIDEWAYS  # JPEG: EXIF is read with the header
    full = (image.width, image.height) if sideways else (image.height, image.width)
    least_h, least_w = needed(full)
    # draft() takes (width, height) in the file's orientation and never goes below it.
    image.draft(image.mode, (least_h, least_w) if sideways else (least_w, least_h))


def _out_of_memory(path: Path, step: str, width: int, height: int) -> ImageReadError:
    return ImageReadError(
        path,
        f"not enough memory to {step} {width} x {height} pixels; lower {setting('max_pixels')} "
        "to refuse images this large",
    )


@contextlib.contextmanager
def _pillow_guard_lifted() -> Iterator[int | None]:
    """Hold the module lock with Pillow's global pixel limit disabled.

    Yields:
        Pillow's limit as it was before, ``None`` if it was already disabled.
    """
    with _pillow_guard_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _exif_orientation(image: Image.Image) -> int:
    """Return the EXIF/XMP orientation (1..8), 1 when absent or unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        # A damaged metadata block should not cost an otherwise good photo.
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded image of any Pillow mode to an 8-bit RGB image.

    Args:
        image: A loaded image.

    Returns:
        An image in mode ``"RGB"``, pixel values 0..255: ``image`` itself if it is RGB already.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(image)).convert("RGB")
    if mode == "LAB":
        # Pillow's plain convert() copies the L, a, b bytes into R, G, B.
        return ImageCms.applyTransform(image, _lab_to_srgb())
    if mode == "La":
        # Premultiplied alpha over white: out = c + 255 - alpha (no converter for "La").
        pixels = np.asarray(image, dtype=np.uint16)
        grey = np.minimum(pixels[..., 0] + 255 - pixels[..., 1], 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # An RGB image is kept as it is: a copy would double a huge photo's memory.
    return image if mode == "RGB" else image.convert("RGB")


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Map 16/32-bit integer or float pixels to uint8 without clipping the range.

    Args:
        image: A loaded image in one of the ``"I;16*"``, ``"I"`` or ``"F"`` modes.

    Returns:
        uint8 array of shape (H, W), values 0..255.
    """
    values = np.asarray(image)
    if image.mode.startswith("I"):
        if values.dtype.kind == "u" or (
            values.size and values.min() >= 0 and values.max() <= 65535
        ):
            # Exact rounding of v * 255 / 65535; uint32 holds 65535 * 255.
            wide = values.astype(np.uint32)
            return ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return _stretch(values.astype(np.float64))
    floats = values.astype(np.float64)
    finite = floats[np.isfinite(floats)]
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        scaled = np.nan_to_num(floats, nan=0.0, posinf=1.0, neginf=0.0) * 255.0
        return np.rint(scaled).astype(np.uint8)
    return _stretch(floats)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linearly map the finite range of ``values`` to 0..255 (non-finite: 0 or 255).

    Args:
        values: float64 array of shape (H, W).

    Returns:
        uint8 array of shape (H, W).
    """
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = values[finite].min(), values[finite].max()
    span = high - low if high > low else 1.0
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) * (255.0 / span)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


@cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    """Build (once) the CIELab to sRGB transform."""
    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


def _read_reason(exc: BaseException) -> str:
    """Short reason for a decoding failure."""
    if isinstance(exc, Image.DecompressionBombError):
        return f"image exceeds Pillow's pixel limit ({exc})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os_reason(exc)
    return "truncated or corrupt image data"


def display_size(original_size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``(h, w)`` of a photo's display copy: its size, shrunk to a longest side of ``max_side``."""
    height, width = original_size
    longest = max(height, width)
    if longest <= max_side:
        return height, width
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))
