"""Exact windows as the engine runs them: the unmodified classifier on windows of resized photos.

``--method crops`` evaluates every window this way, ``refine`` the windows in doubt, and the
fidelity check (:mod:`heatmap_cli.pipeline.fidelity`) a few windows of every image. All go
through :class:`ExactWindows`: windows are cut from the uint8 network input
(``heatmap_cli.grid.crops.PixelWindows``), normalized batch by batch on the device, laid out
channels_last, and fed to the classifier in batches of :func:`windows_per_pass` windows whatever
the number of images, so memory stays bounded and the classifier runs at its best batch size.

For crops and refine, which run many windows, the classifier is a copy with its batch norms
folded into the convolutions (``heatmap_cli.convert.folding.fold_classifier_norms``; the same
answers up to float rounding, 1.2-1.5x faster on the CPU); a few fidelity windows run the
caller's model itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from heatmap_cli.convert.folding import fold_classifier_norms
from heatmap_cli.grid.crops import PixelWindows, crops_grid_of, exact_logits
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.tiling import MEMORY_SAFETY_FACTOR, FigureStore, estimate_activation_bytes
from heatmap_cli.models import LoadedModel

__all__ = [
    "CPU_WINDOW_PIXELS",
    "CUDA_WINDOW_PIXELS",
    "ExactWindows",
    "exact_classifier",
    "exact_windows",
    "window_bytes",
    "windows_per_pass",
]

CPU_WINDOW_PIXELS = 16 * 224 * 224
"""Window pixels per pass on the CPU: 16 windows of 224, 87 of 96. Measured on 2 AMD EPYC
cores (one thread, ms per window by batch size): EfficientNet-Lite0 at 224 fastest at 4-16
windows (16.3-19.8 against 26-33 at 64-128), ResNet-18 at 8-16, a ShuffleNet at 96 at 32-128:
the batch whose activations stay in the caches, about this many pixels."""

CUDA_WINDOW_PIXELS = 256 * 224 * 224
"""Window pixels per pass on accelerators, which need large batches to fill (untested here:
this machine has no GPU)."""

_MAX_WINDOWS_PER_PASS = 1024


def windows_per_pass(
    window: tuple[int, int],
    device: torch.device,
    *,
    bytes_per_window: int | None = None,
    memory_budget: int | None = None,
) -> int:
    """How many windows one forward pass of exact windows takes.

    Args:
        window: ``(h, w)`` window in pixels.
        device: Where the classifier runs.
        bytes_per_window: Peak activation bytes of one window's pass (:func:`window_bytes`);
            None: not capped by memory.
        memory_budget: Activation memory allowed for one pass, in bytes.

    Returns:
        At least 1: :data:`CPU_WINDOW_PIXELS` (CPU) or :data:`CUDA_WINDOW_PIXELS` (others) worth
        of windows, no more than the memory budget holds.
    """
    pixels = CPU_WINDOW_PIXELS if device.type == "cpu" else CUDA_WINDOW_PIXELS
    count = min(_MAX_WINDOWS_PER_PASS, max(1, round(pixels / (window[0] * window[1]))))
    if bytes_per_window and memory_budget:
        count = min(count, int(memory_budget / (bytes_per_window * MEMORY_SAFETY_FACTOR)))
    return max(1, count)


def window_bytes(
    classifier: nn.Module,
    window: tuple[int, int],
    dtype: torch.dtype,
    figures: FigureStore | None = None,
) -> int | None:
    """Peak activation bytes of one window's pass (a shape-only run), or None if unknown.

    Args:
        classifier: The classifier that runs the windows.
        window: ``(h, w)`` window.
        dtype: Its floating dtype.
        figures: Where to keep the figure across runs (keyed by the classifier's structure).
    """

    def measure() -> dict[str, float]:
        return {"bytes": float(estimate_activation_bytes(classifier, window, dtype=dtype))}

    try:
        if figures is None:
            found = measure()
        else:
            key = (str(dtype), f"{window[0]}x{window[1]}")
            found = figures.figures("window-bytes", classifier, key, measure)
        value = float(found["bytes"])
    except Exception:  # a model that does not run on meta tensors: no cap but the default
        return None
    return int(value) if math.isfinite(value) and value > 0 else None


def exact_classifier(model: nn.Module, *, fold: bool) -> tuple[nn.Module, int]:
    """The classifier exact windows run, and how many batch norms were folded into it.

    Args:
        model: The unmodified classifier in eval mode (not modified).
        fold: Fold its batch norms into a copy (worth it for many windows).
    """
    folded = fold_classifier_norms(model) if fold else None
    return folded if folded is not None else (model, 0)


@dataclass
class ExactWindows:
    """The classifier on chosen windows of resized uint8 photos, on one device.

    Attributes:
        classifier: The unmodified classifier (or its folded copy), on ``device``.
        window: ``(h, w)`` its input size.
        mean: Per-channel normalization mean, 0..1.
        std: Per-channel normalization std, 0..1.
        device: Where it runs.
        dtype: The dtype of its inputs.
        batch_size: Windows per forward pass (:func:`windows_per_pass`).
        autocast: Enters the engine's autocast (a null context where it has none).
        windows: Windows evaluated so far, and ``seconds`` the time they took: the measured
            cost that ``--method auto`` budgets with.
    """

    classifier: nn.Module
    window: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    windows: int = 0
    seconds: float = 0.0

    def _source(self, pixels: np.ndarray) -> PixelWindows:
        batch = pixels if pixels.ndim == 4 else pixels[None]
        return PixelWindows(batch, self.mean, self.std, self.device, self.dtype)

    def logits(self, pixels: np.ndarray, corners: np.ndarray) -> np.ndarray:
        """float32 ``(n, K)`` logits of the windows at ``corners`` (n may be 0).

        Args:
            pixels: uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` resized photos.
            corners: int ``(n, 3)``: image index, top, left (``grid.crops.cell_corners``).
        """
        if not len(corners):
            return np.zeros((0, 0), np.float32)
        with self._timed(len(corners)), self.autocast():
            scores = exact_logits(
                self.classifier,
                self._source(pixels),
                corners,
                self.window,
                batch_size=self.batch_size,
            )
        return scores.float().cpu().numpy()

    def grid(
        self,
        pixels: np.ndarray,
        stride: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """float32 ``(N, K, rows, cols)`` logits on the CPU: every window of ``pixels``."""
        source = self._source(pixels)
        count = source.pixels.shape[0]
        rows, cols = grid_shape(source.size, self.window, stride)
        with self._timed(count * rows * cols), self.autocast():
            grid = crops_grid_of(
                source, count, self.classifier, stride, self.window, self.batch_size, progress
            )
        return grid.float().cpu()

    @property
    def seconds_per_window(self) -> float | None:
        """Measured wall seconds per exact window so far; None before any."""
        return self.seconds / self.windows if self.windows else None

    @contextlib.contextmanager
    def _timed(self, count: int) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - started
        self.windows += count


def exact_windows(
    classifier: nn.Module,
    loaded: LoadedModel,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int,
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> ExactWindows:
    """The :class:`ExactWindows` of a classifier with a loaded model's window and normalization.

    The batch is :func:`windows_per_pass`; off the CPU it is also capped by the memory budget,
    from a shape-only run of one window (there the batches are large).

    Args:
        classifier: What runs the windows (the model, or its folded copy), on ``device``.
        loaded: The model's window, mean and std.
        device: Where it runs.
        dtype: The dtype of its inputs.
        memory_budget: Activation memory allowed for one pass, in bytes.
        autocast: Enters the engine's autocast.
    """
    window = loaded.input_size
    per_window = window_bytes(classifier, window, dtype) if device.type != "cpu" else None
    count = windows_per_pass(
        window, device, bytes_per_window=per_window, memory_budget=memory_budget
    )
    return ExactWindows(classifier, window, loaded.mean, loaded.std, device, dtype, count, autocast)
