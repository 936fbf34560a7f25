"""Shift-and-stitch: a finer output stride from several passes of the native-stride network.

A converted network with native stride ``s`` gives one cell every ``s`` pixels. For a stride
``t = s / f``, ``f*f`` passes see the input shifted by every multiple of ``t`` below ``s`` in both
directions, and their cells interleave into the finer grid (the two diagonal passes of the
cs231n notes cover only half of the cells at ``f = 2``).

The strides a network can reach (``check_stride``) and the part of an input that whole windows
cover (``covered_input``) are in :mod:`heatmap_cli.grid.geometry`.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from heatmap_cli.convert.network import ConvolutionalizedNet
from heatmap_cli.grid.geometry import check_stride, covered_input, grid_shape
from heatmap_cli.grid.methods import STITCH

__all__ = [
    "STITCH",
    "StitchedNet",
    "native_network",
    "shift_and_stitch",
    "stitch_grid",
    "stitch_network",
]


def shift_and_stitch(
    net: ConvolutionalizedNet, x: torch.Tensor, stride: int, *, batch_size: int = 32
) -> torch.Tensor:
    """Shift-and-stitch: a grid at ``stride = net.stride / f`` from ``f*f`` shifted passes.

    The pass for offset ``(dy, dx)`` (every multiple of ``stride`` below the native stride, in
    both directions) sees ``x[:, :, dy:, dx:]`` cut to the largest ``window + native*k`` it
    covers, and its cells land at ``(i*f + dy/stride, j*f + dx/stride)``. Passes whose inputs have
    the same shape run together, ``batch_size`` passes per forward.

    Args:
        net: Converted network at its native stride.
        x: ``(N, C, H, W)`` normalized images, ``H, W >= window``.
        stride: Output stride; must divide ``net.stride``.
        batch_size: Shifted passes per forward pass.

    Returns:
        ``(N, K, rows, cols)`` logits, ``(rows, cols) = grid_shape((H, W), window, stride)``;
        cell ``(i, j)`` is the window whose top-left corner is ``(i*stride, j*stride)``.

    Raises:
        GeometryError: If ``stride`` does not divide the native stride.
    """
    check_stride(stride, net.stride)
    window, factor, n = net.window, net.stride // stride, x.shape[0]
    rows, cols = grid_shape((x.shape[2], x.shape[3]), window, stride)
    # pass (a, b) is shifted by (a*stride, b*stride) and fills cells (a::factor, b::factor)
    passes: dict[tuple[int, ...], list[tuple[int, int, torch.Tensor]]] = {}
    for a, b in itertools.product(range(min(factor, rows)), range(min(factor, cols))):
        shifted = covered_input(x[:, :, a * stride :, b * stride :], window, net.stride)
        passes.setdefault(tuple(shifted.shape), []).append((a, b, shifted))

    grid: torch.Tensor | None = None
    with torch.inference_mode():
        for same_shape in passes.values():
            for start in range(0, len(same_shape), batch_size):
                chunk = same_shape[start : start + batch_size]
                scores = net(torch.cat([shifted for _, _, shifted in chunk]))
                if grid is None:
                    grid = scores.new_empty(n, scores.shape[1], rows, cols)
                for k, (a, b, _) in enumerate(chunk):
                    grid[:, :, a::factor, b::factor] = scores[k * n : (k + 1) * n]
    assert grid is not None  # rows, cols >= 1: the (0, 0) pass always exists
    return grid


class StitchedNet(nn.Module):
    """A native-stride network run by shift-and-stitch at a finer stride, as one module.

    ``forward`` maps ``(N, 3, H, W)`` to ``(N, K, rows, cols)`` with ``(rows, cols) =
    grid_shape((H, W), window, stride)`` from ``factor**2`` shifted passes of ``base``.

    Args:
        base: The native-stride network whose shifted passes are stitched (a submodule: moving
            or converting this module moves it).
        factor: ``base.stride // stride``.
        batch_size: Shifted passes per forward pass.
        reason: Why stitching was chosen over dilation, if it was a fallback.

    Attributes:
        stride: ``base.stride // factor``.
        window: ``base.window``.
        native_stride: ``base.stride``: the computation repeats every native stride.
    """

    def __init__(
        self,
        base: ConvolutionalizedNet,
        *,
        factor: int,
        batch_size: int = 32,
        reason: str | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self.factor = factor
        self.stride = base.stride // factor
        self.window = base.window
        self.native_stride = base.stride
        self.batch_size = batch_size
        self.reason = reason

    @property
    def source_model(self) -> nn.Module | None:
        """The unmodified classifier behind ``base``."""
        return self.base.source_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the class-score grid from ``factor**2`` shifted passes.

        Args:
            x: ``(N, 3, H, W)`` normalized images with ``H, W >= window``.

        Returns:
            ``(N, K, rows, cols)`` logits, ``(rows, cols) = grid_shape((H, W), window, stride)``.
        """
        return shift_and_stitch(self.base, x, self.stride, batch_size=self.batch_size)

    def grid_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Output ``(rows, cols)`` for an input size."""
        return grid_shape(input_size, self.window, self.stride)

    def extra_repr(self) -> str:
        """Shown by ``print(net)``."""
        return f"stride={self.stride} by stitching {self.factor**2} passes, window={self.window}"


def native_network(net: nn.Module) -> nn.Module:
    """The native-stride network behind a finer-stride one (``.base``), or ``net`` itself."""
    base = getattr(net, "base", None)
    return base if isinstance(base, ConvolutionalizedNet) else net


# --- The grid method ----------------------------------------------------------------------------


def stitch_grid(
    net: nn.Module, x: torch.Tensor, stride: int, window: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """``score_grid(method="stitch")``: shift-and-stitch over the native network behind ``net``."""
    del window  # the network's own
    return shift_and_stitch(native_network(net), x, stride, batch_size=batch_size)  # type: ignore[arg-type]


def stitch_network(net: ConvolutionalizedNet, stride: int, batch_size: int) -> StitchedNet:
    """The engine's network for ``method="stitch"``: ``net`` stitched at ``stride``."""
    return StitchedNet(net, factor=net.stride // stride, batch_size=batch_size)
