"""Where each cell of a score grid looks: snapping sizes and mapping cells to image pixels.

A converted network with window ``(h, w)`` (its training input) and output stride ``t`` turns an
input of ``(h + t*a, w + t*b)`` pixels into ``(a + 1, b + 1)`` cells; cell ``(i, j)`` is the
classifier's answer on the window whose top-left corner is ``(i*t, j*t)``. Every size the tool
feeds a network is snapped to that form while resizing, so no pixel is dropped by floor division.

All coordinates are continuous pixel coordinates: pixel ``k`` spans ``[k, k + 1)``, which is also
the convention of Pillow's and torchvision's resizing, so mapping between the resized and the
original image is a pure scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from heatmap_cli.convert.windows import grid_shape
from heatmap_cli.errors import GeometryError
from heatmap_cli.grid.strides import check_stride, valid_strides

__all__ = [
    "GridGeometry",
    "check_stride",
    "covered_input",
    "grid_shape",
    "snap_length",
    "snapped_input_size",
    "valid_strides",
]


def snap_length(length: float, window: int, stride: int) -> int:
    """Rounds a side length to the nearest ``window + stride * k`` with ``k >= 0``.

    Args:
        length: Desired side length in pixels (any positive value).
        window: Window side in pixels (the network's training input side).
        stride: Output stride in pixels.

    Returns:
        The snapped length, never smaller than ``window``.
    """
    if window <= 0 or stride <= 0:
        raise GeometryError(f"window and stride must be positive, got {window} and {stride}")
    k = max(0, round((length - window) / stride))
    return window + stride * k


def snapped_input_size(
    original_size: tuple[int, int],
    shorter_side: int,
    window: tuple[int, int],
    stride: int,
) -> tuple[int, int]:
    """Size to resize an image to: shorter side ``shorter_side``, each side snapped to the grid.

    The aspect ratio is kept up to the snapping, which moves each side by at most ``stride / 2``
    pixels. An image smaller than the window is scaled up to it.

    Args:
        original_size: ``(height, width)`` of the original image in pixels.
        shorter_side: Target length of the shorter side before snapping, in pixels.
        window: ``(h, w)`` window of the network in pixels.
        stride: Output stride in pixels.

    Returns:
        ``(height, width)`` of the resized image, each of the form ``window + stride * k``.
    """
    height, width = original_size
    if height <= 0 or width <= 0:
        raise GeometryError(f"image size must be positive, got {width}x{height}")
    if shorter_side <= 0:
        raise GeometryError(f"size must be positive, got {shorter_side}")
    scale = shorter_side / min(height, width)
    return (
        snap_length(height * scale, window[0], stride),
        snap_length(width * scale, window[1], stride),
    )


@dataclass(frozen=True)
class GridGeometry:
    """The windows of a score grid, in the resized input and in the original image.

    Attributes:
        input_size: ``(H, W)`` of the resized image fed to the network, in pixels.
        original_size: ``(H, W)`` of the original image, in pixels.
        window: ``(h, w)`` window each cell sees, in resized pixels.
        stride: Spacing of the cells, in resized pixels.
    """

    input_size: tuple[int, int]
    original_size: tuple[int, int]
    window: tuple[int, int]
    stride: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the grid."""
        return grid_shape(self.input_size, self.window, self.stride)

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: original pixels per resized pixel along each axis."""
        return (
            self.original_size[0] / self.input_size[0],
            self.original_size[1] / self.input_size[1],
        )

    def centers(self) -> np.ndarray:
        """Centre of every cell's window in original-image pixels.

        Returns:
            float32 array ``(rows, cols, 2)`` holding ``(x, y)`` per cell.
        """
        rows, cols = self.shape
        sy, sx = self.scale
        xs = (np.arange(cols) * self.stride + self.window[1] / 2) * sx
        ys = (np.arange(rows) * self.stride + self.window[0] / 2) * sy
        grid_x, grid_y = np.meshgrid(xs, ys)
        return np.stack([grid_x, grid_y], axis=-1).astype(np.float32)

    def window_in_original(self) -> np.ndarray:
        """Window size in original-image pixels.

        Returns:
            float32 array ``(2,)`` holding ``(width, height)``.
        """
        sy, sx = self.scale
        return np.array([self.window[1] * sx, self.window[0] * sy], dtype=np.float32)


def covered_input(x: torch.Tensor, window: tuple[int, int], stride: int) -> torch.Tensor:
    """Drops the bottom/right pixels that no whole window at ``stride`` covers.

    Inputs prepared by ``heatmap_cli.pipeline.preprocess`` are snapped and lose nothing; an
    arbitrary tensor keeps exactly the region the grid describes.

    Args:
        x: ``(N, C, H, W)`` input.
        window: ``(h, w)`` window.
        stride: Grid stride in pixels.

    Returns:
        ``(N, C, h + stride*a, w + stride*b)``, a view of ``x``.
    """
    rows, cols = grid_shape((x.shape[2], x.shape[3]), window, stride)
    return x[:, :, : window[0] + stride * (rows - 1), : window[1] + stride * (cols - 1)]
