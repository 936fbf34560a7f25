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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from heatmap_cli.convert.folding import fold_classifier_norms
from heatmap_cli.grid.crops import PixelWindows, cell_corners, exact_logits
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.tiling import MEMORY_SAFETY_FACTOR, FigureStore, estimate_activation_bytes
from heatmap_cli.models import LoadedModel

__all__ = [
    "BATCH_TRIALS",
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
    at_most: int | None = None,
) -> int:
    """How many windows one forward pass of exact windows takes.

    Args:
        window: ``(h, w)`` window in pixels.
        device: Where the classifier runs.
        bytes_per_window: Peak activation bytes of one window's pass (:func:`window_bytes`);
            None: not capped by memory.
        memory_budget: Activation memory allowed for one pass, in bytes.
        at_most: The count wanted; default :data:`CPU_WINDOW_PIXELS` (CPU) or
            :data:`CUDA_WINDOW_PIXELS` (others) worth of windows.

    Returns:
        At least 1: ``at_most``, or fewer when the memory budget holds fewer.
    """
    pixels = CPU_WINDOW_PIXELS if device.type == "cpu" else CUDA_WINDOW_PIXELS
    count = round(pixels / (window[0] * window[1])) if at_most is None else at_most
    count = min(_MAX_WINDOWS_PER_PASS, max(1, count))
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


BATCH_TRIALS = (0.5, 1, 2, 4)
"""Multiples of the starting batch size tried on the first long run of exact windows."""


@dataclass
class ExactWindows:
    """The classifier on chosen windows of resized uint8 photos, on one device.

    The best batch size depends on the machine and on what else runs on it (on 2 shared CPU
    cores, 8 windows per pass were fastest when idle and 64 under a load of 20), so the first
    run of at least :attr:`trial_windows` windows tries each of :data:`BATCH_TRIALS` times the
    starting batch size (twice each, timing the second: a new shape costs a first-call setup)
    and keeps the fastest for every later pass. The trials do real work: their windows are
    part of the answer.

    Attributes:
        classifier: The unmodified classifier (or its folded copy), on ``device``.
        window: ``(h, w)`` its input size.
        mean: Per-channel normalization mean, 0..1.
        std: Per-channel normalization std, 0..1.
        device: Where it runs.
        dtype: The dtype of its inputs.
        batch_size: Windows per forward pass (:func:`windows_per_pass`; then the fastest one
            tried).
        max_batch_size: The largest batch the memory budget allows, asked for when the trials
            start (it takes a shape-only run of the classifier, once per structure).
        autocast: Enters the engine's autocast (a null context where it has none).
        tuned: Whether the batch sizes have been tried, and ``tried`` which.
        windows: Windows evaluated so far, and ``seconds`` the time they took: the measured
            cost that ``--method auto`` budgets with; ``first_run_windows`` and
            ``first_run_seconds`` those of the first run (its setup is not a window's cost).
    """

    classifier: nn.Module
    window: tuple[int, int]
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    max_batch_size: Callable[[], int] = lambda: _MAX_WINDOWS_PER_PASS
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext
    tuned: bool = False
    tried: tuple[int, ...] = ()
    windows: int = 0
    seconds: float = 0.0
    first_run_windows: int = 0
    first_run_seconds: float = 0.0

    @property
    def trials(self) -> list[int]:
        """The batch sizes tried, smallest first."""
        largest = self.max_batch_size()
        sizes = {min(largest, max(1, round(self.batch_size * m))) for m in BATCH_TRIALS}
        return sorted(sizes)

    @property
    def trial_windows(self) -> int:
        """Windows the trials take; runs of fewer windows are not used to tune."""
        return 2 * sum(self.trials)

    def logits(self, pixels: np.ndarray, corners: np.ndarray) -> np.ndarray:
        """float32 ``(n, K)`` logits of the windows at ``corners`` (n may be 0).

        Args:
            pixels: uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` resized photos.
            corners: int ``(n, 3)``: image index, top, left (``grid.crops.cell_corners``).
        """
        if not len(corners):
            return np.zeros((0, 0), np.float32)
        return self._evaluate(self._source(pixels), corners).float().cpu().numpy()

    def grid(
        self,
        pixels: np.ndarray,
        stride: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """float32 ``(N, K, rows, cols)`` logits on the CPU: every window of ``pixels``.

        Args:
            pixels: uint8 ``(N, H, W, 3)`` resized photos of one size.
            stride: Spacing of the windows in pixels.
            progress: Called as ``progress(done, total)`` windows after each pass.
        """
        source = self._source(pixels)
        count = source.pixels.shape[0]
        rows, cols = grid_shape(source.size, self.window, stride)
        cells = np.stack(
            np.meshgrid(np.arange(count), np.arange(rows), np.arange(cols), indexing="ij"), -1
        ).reshape(-1, 3)
        logits = self._evaluate(source, cell_corners(cells, stride), progress)
        return logits.float().cpu().reshape(count, rows, cols, -1).permute(0, 3, 1, 2).contiguous()

    @property
    def seconds_per_window(self) -> float | None:
        """Measured wall seconds per exact window in steady use; None before any.

        The first run pays the classifier's first-call setup (about 1.7x a window's steady time
        for EfficientNet-Lite0 on the CPU), so once later runs exist it is left out: ``auto``
        budgets with what the next windows will cost.
        """
        if self.windows > self.first_run_windows:
            later = self.seconds - self.first_run_seconds
            return later / (self.windows - self.first_run_windows)
        return self.seconds / self.windows if self.windows else None

    def _source(self, pixels: np.ndarray) -> PixelWindows:
        batch = pixels if pixels.ndim == 4 else pixels[None]
        return PixelWindows(batch, self.mean, self.std, self.device, self.dtype)

    def _evaluate(
        self,
        source: PixelWindows,
        corners: np.ndarray,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """``(n, K)`` logits on the device; tunes the batch size on a first long run."""
        parts: list[torch.Tensor] = []
        done, total = 0, len(corners)
        if not self.tuned and total >= 2 * sum(self.batch_size * m for m in BATCH_TRIALS):
            timings: dict[int, float] = {}
            self.tried = tuple(self.trials)
            for size in self.tried:
                for _ in range(2):  # the second call is timed: a new shape's setup is not
                    timings[size] = self._run(source, corners[done : done + size], size, parts)
                    done += size
                    if progress is not None:
                        progress(done, total)
            self.batch_size = min(timings, key=lambda size: timings[size] / size)
            self.tuned = True
        if done < total:

            def moved(count: int, _: int) -> None:
                if progress is not None:
                    progress(done + count, total)

            self._run(source, corners[done:], self.batch_size, parts, moved)
        return torch.cat(parts)

    def _run(
        self,
        source: PixelWindows,
        corners: np.ndarray,
        batch_size: int,
        parts: list[torch.Tensor],
        progress: Callable[[int, int], None] | None = None,
    ) -> float:
        """Evaluates ``corners`` into ``parts``; returns the wall seconds it took."""
        started = time.perf_counter()
        with self.autocast():
            parts.append(
                exact_logits(
                    self.classifier,
                    source,
                    corners,
                    self.window,
                    batch_size=batch_size,
                    progress=progress,
                )
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the time of the work, not of its launch
        seconds = time.perf_counter() - started
        if not self.windows:
            self.first_run_windows, self.first_run_seconds = len(corners), seconds
        self.seconds += seconds
        self.windows += len(corners)
        return seconds


def exact_windows(
    classifier: nn.Module,
    loaded: LoadedModel,
    device: torch.device,
    dtype: torch.dtype,
    memory_budget: int,
    autocast: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    figures: FigureStore | None = None,
    *,
    fold: bool = False,
) -> ExactWindows:
    """The :class:`ExactWindows` of a classifier with a loaded model's window and normalization.

    The batch starts at :func:`windows_per_pass`, and is tried up to four times that, within
    the memory budget (a shape-only run of one window measures what a window takes).

    Args:
        classifier: What runs the windows (the model, or its folded copy), on ``device``.
        loaded: The model's window, mean and std.
        device: Where it runs.
        dtype: The dtype of its inputs.
        memory_budget: Activation memory allowed for one pass, in bytes.
        autocast: Enters the engine's autocast.
        figures: Where the shape-only figure is kept across runs.
        fold: Run a copy of ``classifier`` with its batch norms folded (for many windows).
    """
    classifier = exact_classifier(classifier, fold=fold)[0]
    window = loaded.input_size
    count = windows_per_pass(window, device)

    def largest() -> int:
        per_window = window_bytes(classifier, window, dtype, figures)
        return windows_per_pass(
            window,
            device,
            bytes_per_window=per_window,
            memory_budget=memory_budget,
            at_most=round(count * max(BATCH_TRIALS)),
        )

    return ExactWindows(
        classifier,
        window,
        loaded.mean,
        loaded.std,
        device,
        dtype,
        count,
        max_batch_size=largest,
        autocast=autocast,
    )
