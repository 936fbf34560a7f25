"""A fast PNG encoder for 8-bit RGB and RGBA pictures: one row filter, a fast deflate.

Pillow's PNG writer tries its five row filters on every row and keeps the best ("adaptive"
filtering), then deflates with zlib: on a 12-megapixel overlay 0.51 s at zlib level 1, of which
about 0.25 s is the filtering alone (its level 0 takes 0.30 s). Here every row gets PNG's "Up"
filter (each byte minus the byte above it), one vectorized subtraction (3 ms), which suits
photos and smooth colour maps as well as the adaptive choice (on a 12 MP overlay 8.6 MB against
Pillow's 9.4 MB; 13.0 MB against 13.3 MB on a noisy photo), and the rows are deflated by ISA-L
(the ``isal`` package, where installed: 0.06 s) or the standard library's zlib (0.25 s). Both
release the GIL, so pictures encode in parallel threads. The files are ordinary PNGs that every
decoder reads back to the same pixels (tested against Pillow's decoder).

:func:`deflate_backend` says which deflate is used (``"isal"`` or ``"zlib"``).
"""

from __future__ import annotations

import struct
import zlib
from types import ModuleType

import numpy as np

__all__ = ["deflate_backend", "encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {3: 2, 4: 6}  # channels -> PNG colour type (truecolour, truecolour + alpha)
_UP = 2  # PNG filter type "Up"
_ISAL_LEVELS = range(1, 4)  # ISA-L's levels; its 0 is a fast mode, not "stored"


def _isal_zlib() -> ModuleType | None:
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return isal_zlib


_FAST_ZLIB = _isal_zlib()


def deflate_backend() -> str:
    """Which deflate compresses the pictures: ``"isal"`` where installed, else ``"zlib"``."""
    return "isal" if _FAST_ZLIB is not None else "zlib"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _deflate(data: memoryview, level: int) -> bytes:
    if _FAST_ZLIB is not None and level in _ISAL_LEVELS:
        return _FAST_ZLIB.compress(data, level)
    return zlib.compress(data, level)


def _up_filtered(image: np.ndarray) -> np.ndarray:
    """The rows of ``image`` under PNG's Up filter, each led by its filter-type byte."""
    height = image.shape[0]
    rows = image.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]  # the row above the first one is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as PNG's filters are
    return filtered


def encode_png(image: np.ndarray, *, level: int = 1, icc_profile: bytes | None = None) -> bytes:
    """Encodes an 8-bit RGB or RGBA array as a PNG file's bytes.

    Args:
        image: uint8 ``(H, W, 3)`` or ``(H, W, 4)``, C-contiguous or not.
        level: Deflate level, 0 (stored) to 9, as zlib's; 1 to 3 use ISA-L where installed.
        icc_profile: An ICC profile to embed (an ``iCCP`` chunk), or None.

    Returns:
        The PNG file: signature, ``IHDR``, ``iCCP`` if given, one ``IDAT``, ``IEND``.

    Raises:
        ValueError: ``image`` is not uint8 ``(H, W, 3|4)`` with both sides at least 1, or
            ``level`` is outside 0..9.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in _COLOUR_TYPES:
        raise ValueError(f"expected a uint8 (H, W, 3|4) array, got {image.dtype} {image.shape}")
    if 0 in image.shape[:2]:
        raise ValueError(f"cannot encode an empty image of shape {image.shape}")
    if not 0 <= level <= 9:
        raise ValueError(f"level must be 0..9, got {level}")
    height, width, channels = image.shape
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    parts = [_SIGNATURE, _chunk(b"IHDR", header)]
    if icc_profile:
        # Name, a NUL, compression method 0 (deflate), then the compressed profile.
        parts.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    parts.append(_chunk(b"IDAT", _deflate(memoryview(_up_filtered(image)).cast("B"), level)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
