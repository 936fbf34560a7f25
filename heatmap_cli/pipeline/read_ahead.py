"""Photos decoded ahead, while the command is still starting up (no torch needed).

Importing torch and loading and converting the model take a second or more, during which one
core would sit idle; decoding a 12-megapixel JPEG takes a fifth of a second, in Pillow's C code
that lets the other thread run. :func:`decode_ahead` decodes the run's first photo then, in a
thread of its own, exactly as the loader would (:func:`~heatmap_cli.io.read_photo`, its warnings
collected for the photo), and the loader takes the result instead of decoding it again
(``heatmap_cli.pipeline.scoring.prepare``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from heatmap_cli.io.reading import DecodedPhoto, read_photo
from heatmap_cli.pipeline.profiling import timed
from heatmap_cli.pipeline.settings import PhotoReading
from heatmap_cli.pipeline.thread_warnings import captured_warnings

__all__ = ["DecodedAhead", "decode_ahead", "decoded"]


@dataclass(frozen=True)
class DecodedAhead:
    """A photo decoded ahead: the photo or what stopped it, and the warnings it raised.

    Attributes:
        photo: The decoded photo; None when decoding failed.
        error: Why it failed; None when it did not.
        warnings: The warnings raised while it was read, one line each.
    """

    photo: DecodedPhoto | None
    error: Exception | None
    warnings: tuple[str, ...]


def _decode(path: Path, reading: PhotoReading) -> DecodedAhead:
    with captured_warnings() as caught, timed("decode"):
        try:
            photo = read_photo(path, max_pixels=reading.max_pixels)
        except Exception as error:  # the loader raises it for the photo, as its own
            return DecodedAhead(None, error, tuple(caught))
    return DecodedAhead(photo, None, tuple(caught))


def decode_ahead(path: Path, reading: PhotoReading) -> Future[DecodedAhead]:
    """Starts decoding ``path`` in a thread of its own, which ends with it.

    Args:
        path: The photo.
        reading: The decoding limit.

    Returns:
        Its decoding, to hand to the loader.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="heatmap-ahead")
    try:
        return pool.submit(_decode, path, reading)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one task


def decoded(ahead: Future[DecodedAhead], caught: list[str]) -> DecodedPhoto:
    """The photo decoded ahead, its warnings added to ``caught``; raises what stopped it."""
    result = ahead.result()
    caught.extend(warning for warning in result.warnings if warning not in caught)
    if result.error is not None:
        raise result.error
    assert result.photo is not None
    return result.photo
