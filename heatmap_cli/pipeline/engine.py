"""The grid engine: one model converted once, scoring batches of resized images on one device.

``GridEngine`` holds the model converted once (and, for finer strides, its dilated or stitched
form) and turns batches of resized uint8 images into logit grids, as fast as it knows how without
changing them beyond float rounding: channels_last layout, batch norms folded into the
convolutions, optionally ``torch.compile`` (on CUDA it also autocasts unless ``fp32``, which does
change them). An image whose pass would not fit the memory budget is evaluated in exact tiles.

:func:`build_grid_network` is the one place that builds the network from the graph modules
(conversion, folding, dilation, stitching); the engine only runs what it built.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from heatmap_cli.convert.folding import fold_batch_norms
from heatmap_cli.convert.network import convolutionalize
from heatmap_cli.errors import (
    ConversionError,
    GeometryError,
    first_line,
    setting,
)
from heatmap_cli.grid import GridMethod, get_method
from heatmap_cli.grid.geometry import GridGeometry, covered_input
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.grid.tiling import (
    FigureStore,
    choose_tile,
    default_memory_budget,
    minimum_tile,
    tiled_score_grid,
)
from heatmap_cli.grid.tiling.field import net_device_dtype
from heatmap_cli.io.figure_cache import DISK_FIGURES
from heatmap_cli.models import LoadedModel
from heatmap_cli.pipeline.activations import resolve_activation
from heatmap_cli.pipeline.devices import compute_precision, resolve_device
from heatmap_cli.pipeline.exact import ExactWindows, exact_classifier, exact_windows
from heatmap_cli.pipeline.limits import (
    check_input_size,
    release_free_memory,
)
from heatmap_cli.pipeline.methods import ScoredBatch, refiner_for
from heatmap_cli.pipeline.preprocess import plan_geometry
from heatmap_cli.pipeline.settings import (
    CROPS_FALLBACK_STRIDE,
    NATIVE_SIZE,
    GridSettings,
    check_grid_settings,
    check_size_fits,
    choose_method,
    method_choices,
    parse_size,
)

__all__ = [
    "NATIVE_SIZE",
    "UNTILED",
    "GridEngine",
    "GridNetwork",
    "GridSettings",
    "Tiling",
    "build_grid_network",
    "method_choices",
    "parse_size",
    "resolve_device",
]


@dataclass(frozen=True)
class Tiling:
    """How one network input was evaluated: in one pass, or in exact tiles.

    Attributes:
        tile: The largest tile side allowed, in pixels; None when evaluated whole.
        tiles: Passes of the network over the input (1 when evaluated whole).
    """

    tile: int | None = None
    tiles: int = 1

    @property
    def tiled(self) -> bool:
        """Whether the input was cut into tiles."""
        return self.tile is not None


UNTILED = Tiling()
"""An input evaluated whole, in one pass."""


# ---------------------------------------------------------------------------------------------
# Building the grid network: the one place that uses the graph modules' builders
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridNetwork:
    """The network that computes an engine's grid, and how it was chosen.

    Attributes:
        network: ``(N, 3, H, W) -> (N, K, rows, cols)``: the converted network with batch
            norms folded (dense), its dilated or stitched form; for ``crops``, the model itself.
        method: The method actually used (``"auto"`` resolved; ``"crops"`` after a fallback).
        stride: Output stride in input pixels.
        native_stride: The converted network's own stride (None when it cannot be converted).
        folded_norms: Batch norms folded into convolutions (0: none).
        notes: What the user should know about these choices (fallbacks, global pools).
    """

    network: nn.Module
    method: str
    stride: int
    native_stride: int | None
    folded_norms: int
    notes: tuple[str, ...]


def build_grid_network(
    model: nn.Module, window: tuple[int, int], *, method: str, stride: int | None, batch_size: int
) -> GridNetwork:
    """Converts a classifier and builds the network of the requested method and stride.

    Args:
        model: The classifier in eval mode, on its device (never modified).
        window: ``(h, w)`` training input of the classifier.
        method: ``"auto"`` or a grid method (see :func:`method_choices`).
        stride: Output stride in input pixels, or None for the native stride.
        batch_size: Passes per forward call of a stitched network.

    Returns:
        The network and the choices made; a model that cannot be converted falls back to crops
        under ``"auto"`` (with a note).

    Raises:
        ConversionError: The model cannot be converted and a convolutional method was asked for.
        GeometryError: A stride that does not divide the native stride.
    """
    notes: list[str] = []
    try:
        with _user_warnings_as(notes):
            converted = convolutionalize(model, window)
    except ConversionError as error:
        if method != "auto" and get_method(method).needs_converted:
            raise
        notes.append(f"{error} Falling back to method 'crops'.")
        return GridNetwork(model, "crops", stride or CROPS_FALLBACK_STRIDE, None, 0, tuple(notes))
    native = converted.stride
    method, stride = choose_method(method, stride, native)
    grid_method = get_method(method)
    if grid_method.build is None:  # crops: the unmodified model (norms folded), window by window
        classifier, folded = exact_classifier(model, fold=True)
        return GridNetwork(classifier, method, stride, native, folded, tuple(notes))
    network, folded = converted, 0
    if grid_method.folds_norms:
        # Batch norms folded into the convolutions before them: 1.2-1.5x faster passes on the
        # CPU, equal to float rounding.
        network, folded = fold_batch_norms(converted) or (converted, 0)
    with _user_warnings_as(notes):
        network = grid_method.build(network, stride, batch_size)
    return GridNetwork(network, method, stride, native, folded, tuple(notes))


@contextlib.contextmanager
def _user_warnings_as(notes: list[str]) -> Iterator[None]:
    """Appends the UserWarnings raised inside the block to ``notes`` instead of showing them.

    The graph modules' own warnings are UserWarnings; others that fire meanwhile (a
    ResourceWarning from garbage collection, a library's DeprecationWarning) are not about this
    model and must not reach the user as notes.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for warning in caught:
        if warning.category is UserWarning and str(warning.message) not in notes:
            notes.append(str(warning.message))


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


class GridEngine:
    """A model converted once, scoring batches of resized images on one device.

    Args:
        loaded: The model with its metadata (eval mode).
        settings: Size, stride, method and device choices.
        figures: Where the tiling estimate keeps its per-network figure across runs (the
            disk cache by default; None measures it once per engine).

    Attributes:
        method: The method actually used (``"auto"`` resolved).
        stride: Output stride in resized pixels.
        native_stride: The converted network's own stride (None when it cannot be converted).
        folded_norms: Batch norms folded into the convolutions of the engine's copy of the
            converted network (0: none, and no copy).
        activation: What makes scores of the logits: ``"softmax"``, ``"sigmoid"`` or ``"none"``
            (``settings.activation`` resolved for the model).
        notes: Human-readable notes about the model and the choices made (how its weights were
            found, fallbacks), for the CLI to print once; appended to while scoring if
            ``--compile`` fails on the first pass.

    Raises:
        GeometryError: A size, stride or ``--tile`` that cannot work for this model.
        InvalidOptionError: An unknown method, device or activation, a batch size below 1, or
            an activation on top of the probabilities a model returns.
        ConversionError: The model cannot be converted for the method asked for.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        settings: GridSettings,
        figures: FigureStore | None = DISK_FIGURES,
    ) -> None:
        check_grid_settings(settings)
        self.figures = figures
        self.loaded = loaded
        self.settings = settings
        self.activation = resolve_activation(settings.activation, loaded.num_classes, loaded.output)
        self.device = resolve_device(settings.device)
        self.window = loaded.input_size
        self.check_scales((1.0,))
        built = build_grid_network(
            loaded.model.eval().to(self.device),
            self.window,
            method=settings.method,
            stride=settings.stride,
            batch_size=settings.batch_size,
        )
        self.stride, self.refiner = built.stride, refiner_for(settings.method, built, self)
        self.method = built.method if self.refiner is None else self.refiner.requested
        self.grid_method: GridMethod = get_method(built.method)
        self.native_stride, self.folded_norms = built.native_stride, built.folded_norms
        self.notes: list[str] = [*loaded.notes, *built.notes]
        self.network: nn.Module = built.network
        self.dtype = net_device_dtype(self.network)[1]
        self._tiles: dict[tuple[int, int], int | None] = {}
        if settings.tile is not None and self.grid_method.tileable:
            smallest = minimum_tile(self.network)
            if settings.tile < smallest:
                raise GeometryError(
                    f"{setting('tile')} {settings.tile} is too small for {loaded.name}: the "
                    f"minimum is {smallest} pixels (each cell's receptive field must fit in a "
                    "tile)"
                )
        if self._channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self._compiled: nn.Module | None = None
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

    @property
    def categories(self) -> tuple[str, ...]:
        """The model's class names."""
        return self.loaded.categories

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the network computes in: its weights', or autocast's on CUDA.

        CUDA autocasts float32 networks to bfloat16 (float16 where the GPU has no bfloat16)
        unless ``settings.fp32``; networks already in a lower or higher precision keep theirs.
        """
        weights = str(self.dtype).removeprefix("torch.")
        return getattr(torch, compute_precision(self.device.type, weights, self.settings.fp32))

    def check_scales(self, scales: Sequence[float]) -> None:
        """Refuses scales whose resized shorter side would fall below the window.

        A pass resized below the window would be stretched back up to it, so it would not be
        the scale asked for (``--size 100`` would squeeze a photo into one window).

        Args:
            scales: Factors of ``settings.size``.

        Raises:
            GeometryError: For such a scale (not for :data:`NATIVE_SIZE`: each photo's own).
        """
        check_size_fits(self.settings.size, scales, self.window)

    @property
    def probabilities(self) -> bool:
        """Whether the grids' scores are probabilities (an activation's, or the model's own)."""
        return self.activation != "none" or self.loaded.output in ("softmax", "sigmoid")

    def plan(self, original_size: tuple[int, int], scale: float = 1.0) -> GridGeometry:
        """The grid geometry of an image of ``(H, W)`` original pixels.

        Args:
            original_size: ``(H, W)`` of the decoded image.
            scale: Factor of ``settings.size``: the shorter side is resized to
                ``round(size * scale)`` pixels before snapping (``size`` is the photo's own
                shorter side for ``"native"``).

        Returns:
            The geometry of one pass at that scale.

        Raises:
            InputTooLargeError: Its network input is above ``settings.max_input_pixels`` or
                ``settings.max_aspect`` (checked before anything of that size is allocated).
        """
        base = min(original_size) if self.settings.size == NATIVE_SIZE else self.settings.size
        geometry = plan_geometry(
            original_size,
            shorter_side=max(1, round(int(base) * scale)),
            window=self.window,
            stride=self.stride,
        )
        check_input_size(
            geometry.input_size,
            original_size,
            max_pixels=self.settings.max_input_pixels,
            max_aspect=self.settings.max_aspect,
        )
        return geometry

    @property
    def precision(self) -> str:
        """:attr:`compute_dtype`'s name: ``"float32"``, ``"bfloat16"`` under CUDA autocast..."""
        return str(self.compute_dtype).removeprefix("torch.")

    def score(self, pixels: np.ndarray) -> torch.Tensor:
        """Logit grids for a batch of equally sized images (see :meth:`score_batch`)."""
        return self.score_batch(pixels)[0]

    def score_batch(self, pixels: np.ndarray, refine: bool = True) -> ScoredBatch:
        """Logit grids for a batch of equally sized images, how they were evaluated, which exactly.

        Args:
            pixels: uint8 ``(N, H, W, 3)`` resized images.
            refine: False: no exact windows after the grid (``auto``, ``refine``: the dense one).

        Returns:
            float32 ``(N, K, rows, cols)`` logits on the CPU, the tiling, bool ``(N, rows, cols)``
            cells evaluated as crops, and per image the method ``auto``/``refine`` chose.
        """
        grid, tiling = self._score_grid(pixels)
        if self.refiner is not None and refine:
            return self.refiner(grid, tiling, pixels, self.stride)
        exact = np.full((grid.shape[0], *grid.shape[2:]), self.grid_method.build is None)
        return ScoredBatch(grid, tiling, exact, ())

    def _score_grid(self, pixels: np.ndarray) -> tuple[torch.Tensor, Tiling]:
        tile = self.tile_for((pixels.shape[1], pixels.shape[2]))
        if tile is not None:
            scored = [self._score_tiled(image, tile) for image in pixels]
            grids = [grid for grid, _ in scored]
            # A huge image comes alone: no copy of its grid (250 MB at 8192x8192)
            batch = grids[0] if len(grids) == 1 else torch.cat(grids)
            return batch, Tiling(tile, scored[0][1])
        if self.grid_method.build is None:  # crops: the model on every window
            return self.exact.grid(pixels, self.stride), UNTILED
        x = normalize(
            pixels, self.loaded.mean, self.loaded.std, device=self.device, dtype=self.dtype
        )
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self._autocast(), torch.inference_mode():
            grid = self._forward(covered_input(x, self.window, self.stride))
        return grid.float().cpu(), UNTILED

    @functools.cached_property
    def exact(self) -> ExactWindows:
        """The unmodified classifier on chosen windows (crops, refinement, fidelity checks).

        ``crops`` runs the engine's network (the classifier, norms folded), ``refine`` and
        ``auto`` a folded copy, the others the caller's model (a few fidelity windows).
        """
        classifier = self.network if self.grid_method.build is None else self.loaded.model
        budget = self.settings.memory_budget or default_memory_budget(self.device)
        running = (self.device, self.dtype, budget, self._autocast, self.figures)
        # refine and auto run many windows: worth a copy with folded norms
        return exact_windows(classifier, self.loaded, *running, fold=self.refiner is not None)

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
                tile = choose_tile(self.network, input_size, budget, figures=self.figures)
            self._tiles[input_size] = tile
        return self._tiles[input_size]

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.compute_dtype == self.dtype:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.compute_dtype)

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
            # inference mode, which score_batch() has entered
            with _inductor_freezing():
                return self._compiled(x)[:count]
        except Exception as error:  # no C++ compiler, an unsupported op...
            self._compiled = None
            self.notes.append(
                f"{setting('compile')} failed ({type(error).__name__}: "
                f"{first_line(error)[:120]}); "
                "running the network uncompiled"
            )
            return self.network(x[:count])

    def _score_tiled(self, pixels: np.ndarray, tile: int) -> tuple[torch.Tensor, int]:
        """One image in tiles, and the number of tiles.

        Args:
            pixels: uint8 ``(H, W, 3)`` resized image.
            tile: Largest tile side in pixels.

        Returns:
            float32 ``(1, K, rows, cols)`` logits on the CPU, and how many tiles were evaluated.
        """
        tiles = [0]

        def count(done: int, total: int) -> None:
            tiles[0] = total
            release_free_memory()  # what this tile's pass freed, before the next one allocates

        with self._autocast():
            grid = tiled_score_grid(
                self.network,
                pixels,
                mean=self.loaded.mean,
                std=self.loaded.std,
                tile=tile,
                device=self.device,
                dtype=self.dtype,
                channels_last=True,
                progress=count,
            )
        return grid.float().cpu(), tiles[0]


def _inductor_freezing() -> contextlib.AbstractContextManager[object]:
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)
