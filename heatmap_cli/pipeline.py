"""From image files to score grids: one converted model, a loader thread, same-size batches.

``GridEngine`` holds the model converted once (and, for finer strides, its dilated form) and
turns batches of resized uint8 images into logit grids, as fast as it knows how without changing
them beyond float rounding: channels_last layout, batch norms folded into the convolutions,
optionally ``torch.compile`` (on CUDA it also autocasts unless ``fp32``, which does change them).
``score_images`` feeds it: worker threads decode and resize the next images while the network
runs on the current batch, and images whose resized sizes are equal are stacked into one forward
pass. A failure to read one image is reported for that image and the batch goes on.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from heatmap_cli.errors import ConversionError, GeometryError
from heatmap_cli.fold import folded_copy
from heatmap_cli.geometry import GridGeometry
from heatmap_cli.grid import get_method, score_grid
from heatmap_cli.images import DEFAULT_MAX_PIXELS, ImageInput, read_image
from heatmap_cli.models import LoadedModel
from heatmap_cli.preprocess import normalize, plan_geometry, resize_for_grid
from heatmap_cli.stitch import covered_input
from heatmap_cli.surgery import ConvolutionalizedNet, convolutionalize
from heatmap_cli.tiling import (
    choose_tile,
    default_memory_budget,
    minimum_tile,
    tiled_score_grid,
)

__all__ = ["GridEngine", "GridSettings", "ImageResult", "Prepared", "score_images"]

# Models that cannot be converted have no derived stride; crops then step by this default.
_CROPS_FALLBACK_STRIDE = 32


@dataclass(frozen=True)
class GridSettings:
    """How images are turned into grids.

    Attributes:
        size: Shorter side of the resized image in pixels, before snapping.
        stride: Output stride in resized pixels; None for the native stride.
        method: ``"auto"`` (dense, or dilate for a finer stride), or a ``score_grid`` method.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...
        fp32: Keep float32 on accelerators (otherwise CUDA runs under autocast).
        batch_size: Images per forward pass (and windows per pass for crops).
        max_pixels: Decompression-bomb limit for decoded images; None disables it.
        max_display_side: Longest side of the photo kept for overlays.
        tile: Evaluate in tiles of at most this many pixels per side (exact); None tiles only
            when the untiled pass would not fit ``memory_budget``.
        memory_budget: Activation memory allowed for one pass, in bytes; None picks a default
            for the device (``tiling.default_memory_budget``).
        compile: Run untiled passes through ``torch.compile`` (inductor, weights frozen as
            constants): compiling costs seconds once per input size, each later pass is faster.
            Falls back to the plain network, with a note, if compiling fails.
    """

    size: int = 384
    stride: int | None = None
    method: str = "auto"
    device: str = "auto"
    fp32: bool = False
    batch_size: int = 8
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_display_side: int = 4096
    tile: int | None = None
    memory_budget: int | None = None
    compile: bool = False


def resolve_device(name: str) -> torch.device:
    """Picks the device for ``--device``: ``auto`` prefers CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise GeometryError(f"unknown device {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GeometryError("--device cuda was asked for, but torch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GeometryError("--device mps was asked for, but this torch has no MPS support")
    return device


class GridEngine:
    """A model converted once, scoring batches of resized images on one device.

    Args:
        loaded: The model with its metadata (eval mode).
        settings: Size, stride, method and device choices.

    Attributes:
        method: The method actually used (``"auto"`` resolved).
        stride: Output stride in resized pixels.
        native_stride: The converted network's own stride (None when it cannot be converted).
        folded_norms: Batch norms folded into the convolutions of the engine's copy of the
            converted network (0: none, and no copy).
        notes: Human-readable notes about choices made (fallbacks), for the CLI to print once;
            appended to while scoring if ``--compile`` fails on the first pass.
    """

    def __init__(self, loaded: LoadedModel, settings: GridSettings) -> None:
        if settings.size <= 0:
            raise GeometryError(f"size must be positive, got {settings.size}")
        if settings.batch_size <= 0:
            raise GeometryError(f"batch size must be positive, got {settings.batch_size}")
        if settings.method != "auto":
            get_method(settings.method)  # raises for an unknown method, naming the choices
        self.loaded = loaded
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.window = loaded.input_size
        self.notes: list[str] = []
        self._tiles: dict[tuple[int, int], int | None] = {}
        model = loaded.model.eval().to(self.device)
        self.network: torch.nn.Module = model
        self.native_stride: int | None = None
        self.folded_norms = 0
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                converted = convolutionalize(model, self.window)
            # The conversion's own warnings are UserWarnings; others that fire meanwhile (a
            # ResourceWarning from garbage collection, a library's DeprecationWarning) are not
            # about this model and must not reach the user as notes.
            self.notes.extend(str(w.message) for w in caught if w.category is UserWarning)
            self.network = converted
            self.native_stride = converted.stride
        except ConversionError as error:
            if settings.method != "auto" and get_method(settings.method).needs_converted:
                raise
            self.notes.append(f"{error} Falling back to method 'crops'.")
        self.method, self.stride = self._choose_method()
        self.grid_method = get_method(self.method)
        if self.grid_method.build is not None:
            self.network = self._grid_network(self.network)  # type: ignore[arg-type]
        if settings.tile is not None and self.grid_method.tileable:
            smallest = minimum_tile(self.network)
            if settings.tile < smallest:
                raise GeometryError(
                    f"--tile {settings.tile} is too small for {loaded.name}: the minimum is "
                    f"{smallest} pixels (each cell's receptive field must fit in a tile)"
                )
        if self._channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self._compiled: torch.nn.Module | None = None
        if settings.compile and self.grid_method.build is not None:
            # inductor's C++ build logs a CUDA_HOME warning on CPU-only machines: not for users
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            # compiles on the first call
            self._compiled = torch.compile(self.network, dynamic=False)

    @property
    def _channels_last(self) -> bool:
        # oneDNN (CPU) and cuDNN run most ImageNet networks faster on NHWC maps, measured on the
        # CPU at batch 8: EfficientNet-Lite0 and MobileNetV3 2.0x, ResNet-50 1.4x, VGG16 1.2x;
        # ConvNeXt-T alone is slower (0.84-0.92x). MPS gains nothing dependable from it.
        return self.device.type in ("cpu", "cuda")

    def _grid_network(self, converted: ConvolutionalizedNet) -> torch.nn.Module:
        """The one network that computes this engine's grid, built by the grid method."""
        if self.grid_method.folds_norms:
            # Batch norms folded into the convolutions before them: 1.2-1.5x faster passes on
            # the CPU, equal to float rounding.
            folded = folded_copy(converted)
            if folded is not None:
                converted, self.folded_norms = folded
        assert self.grid_method.build is not None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            network = self.grid_method.build(converted, self.stride, self.settings.batch_size)
        self.notes.extend(str(w.message) for w in caught if w.category is UserWarning)
        return network

    def _choose_method(self) -> tuple[str, int]:
        requested, stride = self.settings.method, self.settings.stride
        if self.native_stride is None:
            return "crops", stride or _CROPS_FALLBACK_STRIDE
        if requested == "auto":
            requested = "dense" if stride in (None, self.native_stride) else "dilate"
        return requested, get_method(requested).resolve_stride(stride, self.native_stride)

    @property
    def categories(self) -> tuple[str, ...]:
        """The model's class names."""
        return self.loaded.categories

    def plan(self, original_size: tuple[int, int]) -> GridGeometry:
        """The grid geometry of an image of ``(H, W)`` original pixels."""
        return plan_geometry(
            original_size, shorter_side=self.settings.size, window=self.window, stride=self.stride
        )

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.device.type != "cuda" or self.settings.fp32:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def score(self, pixels: np.ndarray) -> torch.Tensor:
        """Logit grids for a batch of equally sized images.

        Args:
            pixels: uint8 ``(N, H, W, 3)`` resized images.

        Returns:
            float32 ``(N, K, rows, cols)`` logits on the CPU.
        """
        tile = self.tile_for((pixels.shape[1], pixels.shape[2]))
        if tile is not None:
            return torch.cat([self._score_tiled(image, tile) for image in pixels])
        x = normalize(pixels, self.loaded.mean, self.loaded.std, device=self.device)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(), torch.inference_mode():
            if self.grid_method.build is None:  # crops: the model window by window
                grid = score_grid(
                    self.network,
                    x,
                    stride=self.stride,
                    method=self.method,
                    input_size=self.window,
                    batch_size=self.settings.batch_size,
                )
            else:
                grid = self._forward(covered_input(x, self.window, self.stride))
        return grid.float().cpu()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The grid network on ``(N, 3, H, W)``: compiled if asked for and compiling works."""
        if self._compiled is None:
            return self.network(x)
        count, batch_size = x.shape[0], self.settings.batch_size
        if count < batch_size:
            # Every new shape costs a compilation (seconds; inductor's freezing rejects dynamic
            # shapes), so a short last batch is padded to the full batch instead.
            padding = x[:1].expand(batch_size - count, *x.shape[1:])
            layout = torch.channels_last if self._channels_last else torch.contiguous_format
            x = torch.cat([x, padding]).contiguous(memory_format=layout)
        try:
            # freezing makes the weights constants that inductor prepacks and folds; it needs
            # inference mode, which score() has entered
            with _inductor_freezing():
                return self._compiled(x)[:count]
        except Exception as error:  # no C++ compiler, an unsupported op...
            self._compiled = None
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.notes.append(
                f"--compile failed ({type(error).__name__}: {first_line[:120]}); "
                "running the network uncompiled"
            )
            return self.network(x[:count])

    def tile_for(self, input_size: tuple[int, int]) -> int | None:
        """The tile side for images of ``input_size``, or None to evaluate them whole.

        Explicit ``--tile`` wins; otherwise tiles are used only when the estimated activation
        memory of one pass exceeds the budget. Crops never need tiles (one window per pass).
        """
        if not self.grid_method.tileable:
            return None
        if input_size not in self._tiles:
            if self.settings.tile is not None:
                tile: int | None = self.settings.tile
                if tile >= max(input_size):
                    tile = None
            else:
                budget = self.settings.memory_budget or default_memory_budget(self.device)
                tile = choose_tile(self.network, input_size, budget)
            self._tiles[input_size] = tile
        return self._tiles[input_size]

    def _score_tiled(self, pixels: np.ndarray, tile: int) -> torch.Tensor:
        """One image in tiles: uint8 ``(H, W, 3)`` -> float32 ``(1, K, rows, cols)`` on the CPU."""
        with self._autocast():
            grid = tiled_score_grid(
                self.network,
                pixels,
                mean=self.loaded.mean,
                std=self.loaded.std,
                tile=tile,
                device=self.device,
                channels_last=True,
            )
        return grid.float().cpu()


def _inductor_freezing() -> contextlib.AbstractContextManager[object]:
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


@dataclass
class Prepared:
    """An image read and resized, ready for the network.

    Attributes:
        item: The input file and its output stem.
        geometry: Its grid geometry.
        pixels: uint8 ``(H, W, 3)`` resized network input.
        display: uint8 ``(h, w, 3)`` photo for overlays (original size, or smaller if huge).
        notes: Warnings about this image for the user (e.g. upscaled from below the window).
    """

    item: ImageInput
    geometry: GridGeometry
    pixels: np.ndarray
    display: np.ndarray
    notes: tuple[str, ...] = ()


@dataclass
class ImageResult:
    """The score grid of one image.

    Attributes:
        item: The input file and its output stem.
        geometry: Where each cell's window lies.
        logits: float32 ``(K, rows, cols)``.
        display: uint8 ``(h, w, 3)`` photo for overlays.
        notes: Warnings about this image for the user (e.g. upscaled from below the window).
    """

    item: ImageInput
    geometry: GridGeometry
    logits: np.ndarray
    display: np.ndarray
    notes: tuple[str, ...] = ()


def display_image(image: Image.Image, max_side: int) -> np.ndarray:
    """The photo as uint8 ``(h, w, 3)``, shrunk so its longest side is at most ``max_side``."""
    longest = max(image.size)
    if longest > max_side:
        scale = max_side / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


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


def prepare(item: ImageInput, engine: GridEngine) -> Prepared:
    """Reads, orients and resizes one image (runs in a loader thread)."""
    image = read_image(item.path, max_pixels=engine.settings.max_pixels)
    geometry = engine.plan((image.height, image.width))
    pixels = resize_for_grid(image, geometry.input_size, engine.loaded.interpolation)
    display = display_image(image, engine.settings.max_display_side)
    note = small_image_note(geometry.original_size, engine.window)
    return Prepared(
        item=item,
        geometry=geometry,
        pixels=pixels,
        display=display,
        notes=(note,) if note else (),
    )


def score_images(
    items: Iterable[ImageInput], engine: GridEngine, *, workers: int = 2
) -> Iterator[tuple[ImageInput, ImageResult | Exception]]:
    """Scores many images, yielding each image's result or the error that stopped it.

    Decoding and resizing run in ``workers`` threads ahead of the network; images with the same
    resized size are stacked into batches of up to ``settings.batch_size``. Results come in
    batch order, which may differ from input order.

    An error is yielded, not raised, so one bad image never stops the others: usually a
    ``HeatmapError`` (e.g. ``ImageReadError``), but also any unexpected exception of one image
    or batch (e.g. running out of memory on a huge photo). Closing the generator early (an
    interrupted caller) cancels the images not yet being read.

    Args:
        items: Images to score.
        engine: The converted model.
        workers: Loader threads.

    Yields:
        ``(item, result)`` or ``(item, error)`` for every input, exactly once.
    """
    batch_size = engine.settings.batch_size
    window = max(2 * batch_size, 2 * workers)  # prepared images held ahead of the network
    pending: OrderedDict[tuple[int, int], list[Prepared]] = OrderedDict()
    held = 0

    def flush(size: tuple[int, int]) -> Iterator[tuple[ImageInput, ImageResult | Exception]]:
        nonlocal held
        group = pending.pop(size)
        held -= len(group)
        try:
            grids = engine.score(np.stack([p.pixels for p in group])).numpy()
        except Exception as error:  # one failing batch must not stop the others
            for p in group:
                yield p.item, error
            return
        for p, logits in zip(group, grids, strict=True):
            yield p.item, ImageResult(p.item, p.geometry, logits, p.display, p.notes)

    futures: list[tuple[ImageInput, Future[Prepared]]] = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="heatmap-loader")
    try:
        iterator = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(futures) < window:
                item = next(iterator, None)
                if item is None:
                    exhausted = True
                else:
                    futures.append((item, pool.submit(prepare, item, engine)))
            if not futures:
                break
            item, future = futures.pop(0)
            try:
                prepared = future.result()
            except Exception as error:  # a bad image is reported, the others go on
                yield item, error
                continue
            size = prepared.geometry.input_size
            pending.setdefault(size, []).append(prepared)
            held += 1
            if len(pending[size]) >= batch_size:
                yield from flush(size)
            elif held >= window:
                yield from flush(next(iter(pending)))
        while pending:
            yield from flush(next(iter(pending)))
    finally:
        # On an early close (Ctrl-C in the caller) do not decode the images queued ahead.
        pool.shutdown(wait=True, cancel_futures=True)
