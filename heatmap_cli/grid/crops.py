"""Exact windows: the unmodified classifier on windows cut from the input, in full batches.

The ``crops`` grid method runs the classifier on every window; :func:`exact_logits` runs it on
any set of windows (the cells a fidelity check or a refinement picks). Both cut the windows
from a :class:`WindowSource` one batch at a time, so the only image-sized thing in memory is the
input itself (uint8 pixels stay uint8 until their window's batch is normalized), and feed them
to the classifier in batches of ``batch_size`` windows, whatever the number of images.

Each window is, by construction, the classifier's answer on that crop: the exact reference every
other method is measured against, and the fallback for models that cannot be converted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from heatmap_cli.convert.network import source_model
from heatmap_cli.errors import GeometryError
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.methods import CROPS

__all__ = [
    "CROPS",
    "NormalizedWindows",
    "PixelWindows",
    "WindowSource",
    "cell_corners",
    "crops_grid",
    "crops_grid_of",
    "exact_logits",
]

Progress = Callable[[int, int], None]
"""``progress(done, total)``: windows evaluated so far, of all."""


class WindowSource(Protocol):
    """Where windows are cut from: ``N`` images of one size, ready for the classifier."""

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        ...

    def cut(self, corners: np.ndarray, window: tuple[int, int]) -> torch.Tensor:
        """The windows at ``corners`` as one batch.

        Args:
            corners: int ``(n, 3)``: image index, top and left pixel of each window.
            window: ``(h, w)`` of every window.

        Returns:
            ``(n, 3, h, w)`` normalized windows on the classifier's device, in its dtype.
        """
        ...


@dataclass(frozen=True)
class NormalizedWindows:
    """Windows cut from a normalized ``(N, C, H, W)`` tensor (what ``score_grid`` is given)."""

    x: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return (self.x.shape[2], self.x.shape[3])

    def cut(self, corners: np.ndarray, window: tuple[int, int]) -> torch.Tensor:
        """The windows at ``corners``, in the layout of ``x`` (channels_last stays so)."""
        height, width = window
        layout = (
            torch.channels_last
            if self.x.is_contiguous(memory_format=torch.channels_last) and self.x.shape[1] > 1
            else torch.contiguous_format
        )
        batch = torch.empty(
            (len(corners), self.x.shape[1], height, width),
            dtype=self.x.dtype,
            device=self.x.device,
            memory_format=layout,
        )
        for slot, (image, top, left) in enumerate(corners.tolist()):
            batch[slot] = self.x[image, :, top : top + height, left : left + width]
        return batch


@dataclass(frozen=True)
class PixelWindows:
    """Windows cut from uint8 pixels and normalized one batch at a time.

    Nothing of image size is made float: each batch of windows is cut as uint8, moved to the
    device, and normalized there as ``(pixels / 255 - mean) / std``, laid out channels_last
    (the NHWC pixels viewed as NCHW), which is what oneDNN and cuDNN run fastest.

    Attributes:
        pixels: uint8 ``(N, H, W, 3)`` images.
        mean: Per-channel mean of the model, in the 0..1 range.
        std: Per-channel standard deviation, in the 0..1 range.
        device: Where the windows go.
        dtype: Their floating dtype.
    """

    pixels: np.ndarray
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        pixels = self.pixels
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 4:
            raise GeometryError("pixels must be a uint8 numpy array of shape (N, H, W, 3)")
        if pixels.shape[3] != 3:
            raise GeometryError(f"pixels must have 3 channels, got {pixels.shape[3]}")

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of the images."""
        return (self.pixels.shape[1], self.pixels.shape[2])

    def cut(self, corners: np.ndarray, window: tuple[int, int]) -> torch.Tensor:
        """The windows at ``corners``, normalized, ``(n, 3, h, w)`` channels_last."""
        height, width = window
        cut = np.empty((len(corners), height, width, 3), dtype=np.uint8)
        for slot, (image, top, left) in enumerate(corners.tolist()):
            cut[slot] = self.pixels[image, top : top + height, left : left + width]
        batch = torch.from_numpy(cut).to(self.device).permute(0, 3, 1, 2).to(self.dtype)
        # the arithmetic of heatmap_cli.grid.pixels.normalize, so windows equal its slices
        mean = torch.tensor(self.mean, dtype=self.dtype, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=self.dtype, device=self.device).view(1, 3, 1, 1)
        return batch.sub_(mean * 255).div_(std * 255)


def cell_corners(cells: np.ndarray | Sequence[Sequence[int]], stride: int) -> np.ndarray:
    """Top-left pixels of the windows of grid cells: ``(row * stride, col * stride)``.

    Args:
        cells: int ``(n, 2)`` ``(row, col)`` of each cell, or ``(n, 3)`` ``(image, row, col)``.
        stride: Spacing of the cells in input pixels.

    Returns:
        int64 ``(n, 3)``: image index (0 where not given), top, left.
    """
    array = np.asarray(cells, dtype=np.int64).reshape(-1, np.shape(cells)[-1] if len(cells) else 2)
    if array.shape[1] == 2:
        array = np.concatenate([np.zeros((len(array), 1), np.int64), array], axis=1)
    if array.shape[1] != 3:
        raise GeometryError(f"cells must be (row, col) or (image, row, col), got {array.shape}")
    return np.concatenate([array[:, :1], array[:, 1:] * stride], axis=1)


def exact_logits(
    model: nn.Module,
    source: WindowSource,
    corners: np.ndarray,
    window: tuple[int, int],
    *,
    batch_size: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The classifier on the windows at ``corners``, ``batch_size`` windows per forward pass.

    Args:
        model: The classifier in eval mode, or a converted network made from one (its source
            model runs), on the source's device.
        source: Where the windows are cut from (:class:`PixelWindows`,
            :class:`NormalizedWindows`).
        corners: int ``(n, 3)``: image index, top and left pixel of each window
            (:func:`cell_corners`); every window must lie inside the images.
        window: ``(h, w)``: the classifier's input size.
        batch_size: Windows per forward pass.
        progress: Called as ``progress(done, n)`` after each pass.

    Returns:
        ``(n, K)`` logits, one row per window, on the model's device.

    Raises:
        GeometryError: A window reaching outside the images, or a batch size below 1.
    """
    corners = np.asarray(corners, dtype=np.int64).reshape(-1, 3)
    _check_inside(corners, source.size, window)
    if batch_size < 1:
        raise GeometryError(f"batch_size must be positive, got {batch_size}")
    classifier = source_model(model)
    scores: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(corners), batch_size):
            windows = source.cut(corners[start : start + batch_size], window)
            scores.append(classifier(windows))
            del windows
            if progress is not None:
                progress(min(start + batch_size, len(corners)), len(corners))
    if not scores:
        return torch.empty((0, 0))
    return torch.cat(scores)


def _check_inside(corners: np.ndarray, size: tuple[int, int], window: tuple[int, int]) -> None:
    if not len(corners):
        return
    bottom = int(corners[:, 1].max()) + window[0]
    right = int(corners[:, 2].max()) + window[1]
    if corners[:, 1:].min() < 0 or bottom > size[0] or right > size[1]:
        raise GeometryError(
            f"windows of {window[1]}x{window[0]} pixels reach outside the {size[1]}x{size[0]} input"
        )


def crops_grid(
    model: nn.Module, x: torch.Tensor, stride: int, window: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """The classifier on every window of ``x``, ``batch_size`` windows per forward pass.

    Args:
        model: The classifier, or a converted network made from one (its source model runs).
        x: ``(N, C, H, W)`` normalized images, ``H, W >= window``.
        stride: Spacing of the windows in pixels (any positive value).
        window: ``(h, w)`` window: the classifier's input size.
        batch_size: Windows per forward pass (of all images together).

    Returns:
        ``(N, K, rows, cols)`` logits, ``(rows, cols) = grid_shape((H, W), window, stride)``;
        cell ``(i, j)`` is the classifier's answer on the window at ``(i*stride, j*stride)``.
    """
    return crops_grid_of(NormalizedWindows(x), x.shape[0], model, stride, window, batch_size)


def crops_grid_of(
    source: WindowSource,
    count: int,
    model: nn.Module,
    stride: int,
    window: tuple[int, int],
    batch_size: int,
    progress: Progress | None = None,
) -> torch.Tensor:
    """:func:`crops_grid` of any window source: ``(count, K, rows, cols)`` logits."""
    rows, cols = grid_shape(source.size, window, stride)
    cells = np.stack(
        np.meshgrid(np.arange(count), np.arange(rows), np.arange(cols), indexing="ij"), axis=-1
    ).reshape(-1, 3)
    logits = exact_logits(
        model,
        source,
        cell_corners(cells, stride),
        window,
        batch_size=batch_size,
        progress=progress,
    )
    return logits.reshape(count, rows, cols, -1).permute(0, 3, 1, 2).contiguous()
