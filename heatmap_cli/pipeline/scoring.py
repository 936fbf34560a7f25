"""The loader of every run: image files to averaged score grids, read ahead and batched by size.

Worker threads read, orient and resize the next images while the network runs on the current
batch. Every image is scored in *passes* (:mod:`heatmap_cli.pipeline.multiscale`): a plain run is
the one pass ``(scale 1, no flip)``, ``--scales``/``--flip`` add more, and it is the same code path
either way. Network inputs of equal size, from any images and any passes, are stacked into one
forward pass; an image is done when all its passes are in, and is yielded at once (so results come
in batch order, which may differ from input order).

One error policy: any exception while reading, resizing, scoring or averaging one image fails
that image (the exception is yielded in place of its result) and never the others, whatever its
type: an ``ImageReadError`` for a bad file as much as an unexpected error. A failing forward pass
fails the images whose inputs it held. Running out of memory (Python's ``MemoryError`` or torch's
allocator) becomes a ``MemoryExhaustedError`` that says which step ran out and what to lower.
Warnings raised while an image is read (Pillow's "Corrupt EXIF data"...) become notes of that
image, one line each.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from heatmap_cli.io import DecodedPhoto, ImageInput, read_photo
from heatmap_cli.io.pixels import image_array
from heatmap_cli.io.reading import display_size
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.limits import is_out_of_memory, out_of_memory
from heatmap_cli.pipeline.multiscale import (
    CommonGrid,
    MultiScaleResult,
    PassAverage,
    PassInput,
    check_scales,
    finish_pass,
    plan_passes,
)
from heatmap_cli.pipeline.profiling import timed
from heatmap_cli.pipeline.read_ahead import DecodedAhead, decoded
from heatmap_cli.pipeline.settings import DEFAULT_READING, PhotoReading
from heatmap_cli.pipeline.thread_warnings import captured_warnings

__all__ = [
    "DEFAULT_READING",
    "Decoder",
    "ImageResult",
    "Outcome",
    "PhotoReading",
    "Prepared",
    "display_image",
    "prepare",
    "read_file",
    "score_images",
    "small_image_note",
]


_SCORED = np.empty((0, 0, 3), dtype=np.uint8)  # a scored pass's pixels, let go


Decoder = Callable[[ImageInput, PhotoReading], DecodedPhoto]
"""``decode(item, reading)`` -> the photo of ``item``, RGB in displayed orientation.

The command's is :func:`read_file`; the notebook API also hands in photos already in memory.
"""


def read_file(item: ImageInput, reading: PhotoReading) -> DecodedPhoto:
    """Decodes ``item.path`` in full, within ``reading.max_pixels`` (the command's decoder).

    Raises:
        ImageReadError: The file cannot be read as an image.
    """
    return read_photo(item.path, max_pixels=reading.max_pixels)


@dataclass(frozen=True)
class Prepared:
    """An image read and resized for each of its passes, ready for the network.

    Attributes:
        item: The input file and its output stem.
        passes: Every pass's network input, in evaluation order.
        display: uint8 ``(h, w, 3)`` photo for overlays (original size, or smaller if huge).
        icc_profile: The photo's embedded RGB colour profile, for the overlays; None if none.
        notes: Warnings about this image for the user (e.g. upscaled from below the window, or
            a library's warning while reading it), one line each.
    """

    item: ImageInput
    passes: tuple[PassInput, ...]
    display: np.ndarray
    icc_profile: bytes | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageResult:
    """The score grid of one image.

    Attributes:
        item: The input file and its output stem.
        grid: The class maps averaged over the passes on one geometry, and every pass (a plain
            run: one pass, its grid bit for bit).
        display: uint8 ``(h, w, 3)`` photo for overlays.
        icc_profile: The photo's embedded RGB colour profile, for the overlays; None if none.
        notes: Warnings about this image for the user (e.g. upscaled from below the window).
        inputs: Every pass with its pixels, kept on request (``keep_inputs``) for exact
            windows after scoring (the fidelity check); empty otherwise.
    """

    item: ImageInput
    grid: MultiScaleResult
    display: np.ndarray
    icc_profile: bytes | None = None
    notes: tuple[str, ...] = ()
    inputs: tuple[PassInput, ...] = ()


class Outcome(NamedTuple):
    """What the loader yields for every input; unpacks as ``item, result``.

    Attributes:
        item: The input file and its output stem.
        result: Its result, or the exception that stopped it.
    """

    item: ImageInput
    result: ImageResult | Exception

    def unwrap(self) -> ImageResult:
        """The result; raises the exception that stopped the image instead, if one did."""
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def display_image(
    image: Image.Image, max_side: int, original_size: tuple[int, int] | None = None
) -> np.ndarray:
    """The photo as uint8 ``(h, w, 3)``, shrunk so its longest side is at most ``max_side``.

    Args:
        image: RGB photo in displayed orientation (possibly decoded at a reduced size).
        max_side: Longest side of the display copy.
        original_size: ``(H, W)`` of the photo at full resolution; default ``image``'s size.
    """
    full = original_size or (image.height, image.width)
    height, width = display_size(full, max_side)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return image_array(image)


def small_image_note(original_size: tuple[int, int], window: tuple[int, int]) -> str | None:
    """A warning for an image smaller than the network's window, which must be upscaled.

    Args:
        original_size: ``(H, W)`` of the decoded image.
        window: ``(h, w)`` window of the network (its training input).

    Returns:
        One line of text, or None when the image is at least as large as the window.
    """
    (height, width), (win_h, win_w) = original_size, window
    if height >= win_h and width >= win_w:
        return None
    return (
        f"{width}x{height} is smaller than the network's {win_w}x{win_h} window; "
        "upscaled, so its scores are less reliable"
    )


def prepare(
    item: ImageInput,
    engine: GridEngine,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    reading: PhotoReading = DEFAULT_READING,
    decode: Decoder = read_file,
    ahead: Future[DecodedAhead] | None = None,
) -> Prepared:
    """Reads, orients and resizes one image for every pass (runs in a loader thread).

    The photo is always decoded in full, never with JPEG ``draft()``: libjpeg's reduced decoding
    filters unlike the model's resize (logits move by 0.7-4% of their range at 2-1x the input).

    Args:
        item: The image file and its output stem.
        engine: The converted model (size, stride, window, interpolation, limits).
        scales: Factors of ``engine.settings.size``.
        flip: Also prepare each scale's mirror image.
        reading: The decoding limit and the display copy's size.
        decode: What turns ``item`` into its photo (:func:`read_file` reads the file).
        ahead: The photo decoded ahead (``heatmap_cli.pipeline.read_ahead``), if it was.

    Returns:
        The image ready for the network.

    Raises:
        ImageReadError: The file cannot be read as an image.
        InputTooLargeError: A pass's network input is above the engine's limits.
        MemoryExhaustedError: Resizing ran out of memory.
    """
    with captured_warnings() as caught, timed("decode"):
        max_side = reading.max_display_side
        photo = _read(item, reading, decode, ahead, caught)
        image, original_size = photo.image, photo.original_size
        try:
            passes = plan_passes(
                image,
                engine.plan,
                engine.loaded.interpolation,
                scales,
                flip,
                original_size=original_size,
            )
            display = display_image(image, max_side, original_size)
        except MemoryError as error:
            raise out_of_memory(
                f"resize a {original_size[1]}x{original_size[0]} image for the network",
                "size",
                "scales",
                "max_input_pixels",
            ) from error
    note = small_image_note(original_size, engine.window)
    return Prepared(
        item=item,
        passes=passes,
        display=display,
        icc_profile=image.info.get("icc_profile"),
        notes=(*caught, note) if note else tuple(caught),
    )


def _read(
    item: ImageInput,
    reading: PhotoReading,
    decode: Decoder,
    ahead: Future[DecodedAhead] | None,
    caught: list[str],
) -> DecodedPhoto:
    """The photo: decoded ahead if it was (its warnings added to ``caught``), else now."""
    if ahead is None:
        return decode(item, reading)
    return decoded(ahead, caught)


class _InFlight:
    """A prepared image whose passes are being scored.

    A pass's pixels are let go as soon as it is scored (:meth:`scored`): at ``--size native``
    an 8192x8192 photo's network input is 192 MB, not needed to draw or write its outputs;
    unless ``keep_inputs``: then the result holds them, for the exact windows of a fidelity
    check, until the image is written.
    """

    def __init__(
        self, prepared: Prepared, common: CommonGrid, activation: str, keep_inputs: bool = False
    ) -> None:
        self.prepared = dataclasses.replace(prepared, passes=())
        self.passes = list(prepared.passes)
        self.average = PassAverage([p.geometry for p in prepared.passes], common, activation)
        self.failed = False
        self.keep_inputs = keep_inputs

    def scored(self, index: int) -> PassInput:
        """Pass ``index``, whose pixels are let go here (unless kept): they have been scored."""
        spec = self.passes[index]
        if not self.keep_inputs:
            self.passes[index] = dataclasses.replace(spec, pixels=_SCORED)
        return spec

    def result(self) -> ImageResult:
        prepared = self.prepared
        return ImageResult(
            item=prepared.item,
            grid=self.average.result(),
            display=prepared.display,
            icc_profile=prepared.icc_profile,
            notes=prepared.notes,
            inputs=tuple(self.passes) if self.keep_inputs else (),
        )


class _Batches:
    """Network inputs waiting for a full batch of their size, at most ``limit`` of them."""

    def __init__(self, engine: GridEngine, limit: int) -> None:
        self._engine = engine
        self._limit = limit
        self._pending: OrderedDict[tuple[int, int], list[tuple[_InFlight, int]]] = OrderedDict()
        self._held = 0

    def add(self, image: _InFlight) -> Iterator[Outcome]:
        """Queues every pass of ``image``; scores the batches that fill up, or the oldest."""
        for index, spec in enumerate(image.passes):
            group = self._pending.setdefault(spec.geometry.input_size, [])
            group.append((image, index))
            self._held += 1
            if len(group) >= self._engine.settings.batch_size:
                yield from self._flush(spec.geometry.input_size)
        while self._held >= self._limit:
            yield from self._flush(next(iter(self._pending)))

    def drain(self) -> Iterator[Outcome]:
        """Scores everything still queued."""
        while self._pending:
            yield from self._flush(next(iter(self._pending)))

    def _flush(self, size: tuple[int, int]) -> Iterator[Outcome]:
        group = self._pending.pop(size)
        self._held -= len(group)
        live = [(image, index) for image, index in group if not image.failed]
        if not live:
            return
        try:
            with timed("network"):
                scored = self._engine.score_batch(_stacked(live))
        except Exception as error:  # one failing batch must not stop the others
            failure = _memory_said(
                error,
                f"score {len(live)} network input(s) of {size[1]}x{size[0]} pixels at once",
                "batch_size",
                "memory_budget",
            )
            for image in dict.fromkeys(image for image, _ in live):
                image.failed = True
                yield Outcome(image.prepared.item, failure)
            return
        grids, choices = scored.grid.numpy(), scored.choices or (None,) * len(live)
        for (image, index), grid, cells, choice in zip(
            live, grids, scored.exact, choices, strict=True
        ):
            if image.failed:
                continue
            try:
                spec, activation = image.scored(index), self._engine.activation
                logits, summary = finish_pass(
                    spec,
                    grid,
                    scored.tiling,
                    activation=activation,
                    exact=cells,  # type: ignore[arg-type]
                )
                if choice is not None:
                    summary = dataclasses.replace(
                        summary, method=choice.method, method_reason=choice.reason
                    )
                image.average.add(index, logits, summary)
                if image.average.complete:
                    yield Outcome(image.prepared.item, image.result())
            except Exception as error:
                image.failed = True
                step = f"average the passes' score grids of {grid.shape[1]}x{grid.shape[2]} cells"
                yield Outcome(image.prepared.item, _memory_said(error, step, "size", "scales"))


def _stacked(passes: list[tuple[_InFlight, int]]) -> np.ndarray:
    """uint8 ``(N, H, W, 3)``: the network inputs of some passes; one alone is not copied."""
    inputs = [image.passes[index].network_input() for image, index in passes]
    return inputs[0][None] if len(inputs) == 1 else np.stack(inputs)


def _memory_said(error: Exception, step: str, *lower: str) -> Exception:
    """``error``, or if it means memory ran out, an error saying at which step and what to lower."""
    if not is_out_of_memory(error):
        return error
    said = out_of_memory(step, *lower)
    said.__cause__ = error  # a traceback shows where it ran out
    return said


def score_images(
    items: Iterable[ImageInput],
    engine: GridEngine,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    common: CommonGrid = "first",
    workers: int = 2,
    reading: PhotoReading = DEFAULT_READING,
    keep_inputs: bool = False,
    decode: Decoder = read_file,
    ahead: Mapping[Path, Future[DecodedAhead]] | None = None,
) -> Iterator[Outcome]:
    """Scores many images, yielding each image's result or the error that stopped it.

    Decoded in ``workers`` threads ahead of the network, batched by size; a close cancels the rest.

    Args:
        items: Images to score.
        engine: The converted model.
        scales: Factors of ``engine.settings.size``; ``(1.0,)`` is a plain run.
        flip: Also score each scale's mirror image.
        common: The grid passes are averaged on: ``"first"`` or ``"finest"``.
        workers: Loader threads.
        reading: The decoding limit and the display copy's size.
        keep_inputs: Keep every pass's pixels (``ImageResult.inputs``), for exact windows.
        decode: What turns an item into its photo (:func:`read_file` reads the file).
        ahead: Photos decoded ahead by :func:`read_file`, by path (``pipeline.read_ahead``).

    Yields:
        Every input's :class:`Outcome` (its result or its exception), exactly once.

    Raises:
        InvalidOptionError: For bad scales (before any image is read).
        GeometryError: For a scale that would resize photos below the window (likewise).
    """
    check_scales(scales)
    engine.check_scales(scales)
    limit = max(2 * engine.settings.batch_size, 2 * workers)  # inputs held ahead of the network
    batches = _Batches(engine, limit)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="heatmap-loader")
    try:
        futures: deque[tuple[ImageInput, Future[Prepared]]] = deque()
        iterator, how, ahead = iter(items), (engine, scales, flip, reading, decode), ahead or {}
        while True:
            while len(futures) < limit and (item := next(iterator, None)) is not None:
                futures.append((item, pool.submit(prepare, item, *how, ahead.get(item.path))))
            if not futures:
                break
            item, future = futures.popleft()
            try:
                in_flight = _InFlight(future.result(), common, engine.activation, keep_inputs)
            except Exception as error:  # a bad image is reported, the others go on
                yield Outcome(item, error)
                continue
            del future  # holds the pixels too, which in_flight lets go once they are scored
            yield from batches.add(in_flight)
        yield from batches.drain()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an early close decodes no more
