"""What one image may cost: limits on what is computed, and running out of memory.

An image costs what its *network input* costs, not what its file costs: a 279-byte PNG of
1 x 50,000 pixels, resized so that its shorter side is ``--size`` 384, becomes a
384 x 19,200,000 input (22 GB of uint8 before the network even runs). So the input of every pass
is checked when the passes are planned (:func:`check_input_size`, called by
``GridEngine.plan``), before anything of that size is allocated:

* ``max_input_pixels`` (``--max-input-pixels``, default :data:`DEFAULT_MAX_INPUT_PIXELS`,
  8192 x 8192): the largest ``H x W`` of one pass's input. It is the size of the huge-image
  benchmark (``benchmarks/studies/huge_images.py``; tiles of the default model: 98 s and
  2.81 GiB at most), so every measured case runs, and a pass never costs more than that.
* ``max_aspect`` (``--max-aspect``, default :data:`DEFAULT_MAX_ASPECT`, 32): the longer side
  of the input over its shorter one. Phone panoramas are 4:1 to 10:1; at 32:1 and ``--size``
  384 an input is 384 x 12,288 (4.7 Mpx, 21 times a 3:2 photo's). Past that, a strip's every
  window sees the same thin band, upscaled many times.

A refused image is one line naming the limit and the option that raises it; the batch goes on.
:func:`check_size` refuses at start a ``--size`` (times the largest scale) that no image could
pass. :func:`out_of_memory` turns a ``MemoryError`` (or torch's allocator failure) into a
:class:`~heatmap_cli.errors.MemoryExhaustedError` that says which step ran out and which option
to lower. :data:`MAX_TOP_K` caps how many classes ``--top-k`` renders.
:func:`release_free_memory` hands memory freed inside the C heap back to the system between the
steps of a huge image, so that what one step freed is not still counted while the next runs.

This module imports nothing heavy: the command-line layer checks options with it before torch
is loaded.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence

from heatmap_cli.errors import (
    InputTooLargeError,
    InvalidOptionError,
    MemoryExhaustedError,
    setting,
)

__all__ = [
    "DEFAULT_MAX_ASPECT",
    "DEFAULT_MAX_INPUT_PIXELS",
    "MAX_TOP_K",
    "check_input_size",
    "check_size",
    "is_out_of_memory",
    "out_of_memory",
    "out_of_memory_anywhere",
    "release_free_memory",
]

DEFAULT_MAX_INPUT_PIXELS = 8192 * 8192
"""Largest network input of one pass, in pixels (``--max-input-pixels``)."""

DEFAULT_MAX_ASPECT = 32.0
"""Largest ratio of the network input's longer side to its shorter one (``--max-aspect``)."""

MAX_TOP_K = 20
"""Most classes ``--top-k`` renders. Each is a full-size overlay: on a 12-megapixel photo with
the default model one more class costs about 1.3 s, 31 MB of memory (the overlays are kept for
the contact sheet) and 8.8 MB of PNG, so 20 take 37 s and 1.6 GB, and 1000 would take 22 minutes
and 31 GB per photo. ``--class`` renders any class on purpose."""


def check_input_size(
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    *,
    max_pixels: int,
    max_aspect: float,
) -> None:
    """Refuses a network input above the limits, before it is allocated.

    Args:
        input_size: ``(H, W)`` planned network input of one pass.
        original_size: ``(H, W)`` of the decoded image, for the message.
        max_pixels: Largest ``H * W``.
        max_aspect: Largest ``max(H, W) / min(H, W)``.

    Raises:
        InputTooLargeError: Above either limit; the message names it and its option.
    """
    height, width = input_size
    photo = f"{original_size[1]}x{original_size[0]}"
    aspect = max(height, width) / min(height, width)
    if aspect > max_aspect:
        raise InputTooLargeError(
            f"a {photo} image needs a {width}x{height} network input, an aspect ratio of "
            f"{aspect:,.1f}:1, above the limit of {max_aspect:g}:1 "
            f"({setting('max_aspect')} raises it)"
        )
    if height * width > max_pixels:
        raise InputTooLargeError(
            f"a {photo} image needs a {width}x{height} network input = {height * width:,} "
            f"pixels, above the limit of {max_pixels:,} ({setting('max_input_pixels')} raises "
            f"it; a smaller {setting('size')} lowers the input)"
        )


def check_size(size: int, scales: Sequence[float], max_pixels: int) -> None:
    """Refuses a ``--size`` that gives every image a network input above ``max_pixels``.

    The shorter side of a pass's input is ``round(size * scale)`` (at least the window), so the
    largest scale's pass has at least that side squared.

    Raises:
        InvalidOptionError: When even a square image's largest pass is above the limit.
    """
    side = max(1, round(size * max(scales)))
    if side * side > max_pixels:
        scaled = f" at scale {max(scales):g}" if max(scales) != 1 else ""
        raise InvalidOptionError(
            f"{setting('size')} {size}{scaled} gives every image a network input of at least "
            f"{side}x{side} = {side * side:,} pixels, above {setting('max_input_pixels')} "
            f"{max_pixels:,}"
        )


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an error is memory running out, raw: Python's, or torch's CPU or device allocator.

    A :class:`~heatmap_cli.errors.MemoryExhaustedError` is not raw (it already says what to do).
    """
    if isinstance(error, MemoryError):
        return True
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA, MPS)
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


def out_of_memory(step: str, *lower: str) -> MemoryExhaustedError:
    """The error for memory running out while doing ``step``.

    Args:
        step: What ran out, e.g. ``"resize to 384x19200000 for the network"``.
        *lower: The settings that would have helped, e.g. ``"size", "max_input_pixels"``
            (named by :func:`~heatmap_cli.errors.setting`).

    Returns:
        ``MemoryExhaustedError("not enough memory to <step>; lower <a, b or c>")``.
    """
    names = [setting(name) for name in lower]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return MemoryExhaustedError(f"not enough memory to {step}; lower {listed}")


def out_of_memory_anywhere() -> MemoryExhaustedError:
    """The error for memory running out at a step that did not say which: every option."""
    return out_of_memory(
        "go on", "size", "batch_size", "memory_budget", "max_display_side", "top_k"
    )


def release_free_memory() -> None:
    """Returns the C heap's free pages to the system (glibc's ``malloc_trim``; else nothing).

    glibc keeps memory freed by small and mid-sized allocations (a network's activations of a
    tile, numpy's temporaries) in its arenas, one per thread, and they count as resident until
    reused: over the 144 tiles of an 8192x8192 photo this held about 0.4 GiB.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this interpreter runs on
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return None
