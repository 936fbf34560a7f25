"""Pillow images to numpy arrays without doubling a huge picture's memory on the way.

``np.asarray(image)`` goes through ``Image.tobytes()``, which collects the encoded pixels in
chunks and joins them: for a moment the picture is held twice more (an 8192x8192 RGB photo: 192
MiB of chunks and 192 MiB joined, on top of Pillow's own 256 MiB). :func:`image_array` copies
band by band into one preallocated array instead, so the transient is one band.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["BAND_BYTES", "image_array"]

BAND_BYTES = 1 << 24
"""Bytes of pixels converted at a time (16 MiB)."""


def image_array(image: Image.Image, band_bytes: int = BAND_BYTES) -> np.ndarray:
    """The pixels of an 8-bit image as a new numpy array, equal to ``np.asarray(image)``.

    Args:
        image: A Pillow image in mode ``"L"``, ``"RGB"``, ``"RGBA"`` or another 8-bit mode.
        band_bytes: Bytes converted at a time; the result does not depend on it.

    Returns:
        uint8 ``(H, W)`` for single-channel modes, ``(H, W, C)`` otherwise; writable.
    """
    width, height = image.size
    channels = len(image.getbands())
    if width * height * channels <= band_bytes:
        return np.array(image)
    shape = (height, width) if channels == 1 else (height, width, channels)
    out = np.empty(shape, dtype=np.uint8)
    rows = max(1, band_bytes // (width * channels))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        out[top:bottom] = np.asarray(image.crop((0, top, width, bottom)))
    return out
