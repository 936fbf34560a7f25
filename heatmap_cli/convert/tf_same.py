"""Layers of networks ported from TensorFlow: "same" padding, and batch norm with an activation.

TensorFlow's "same" padding depends on the input's length: ``ceil(length / stride)`` outputs,
the odd pixel of padding after the input. It is computed in one place, :func:`same_padding`, for
:class:`BandedSameConv2d` (timm's ``Conv2dSame``, banded), the a-trous ops and the
receptive-field analysis. :class:`BatchNormAct2d` is timm's module of the same name for
inference: a batch norm followed by an activation, in one module with the norm's parameter
names. The default model (``heatmap_cli.models.lite0``) is built from these and ``torch.nn``
alone; the graph walkers know both, and ``torch.fx`` keeps them as leaves (:data:`FX_LEAVES`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FX_LEAVES", "BandedSameConv2d", "BatchNormAct2d", "ceil_div", "same_padding"]


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers."""
    return -(-a // b)


def same_padding(length: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """TensorFlow "same" padding of one dimension, as timm's ``pad_same`` computes it.

    Args:
        length: Input length.
        kernel: Kernel size.
        stride: Stride.
        dilation: Dilation.

    Returns:
        ``(before, after, output length)``; the output is ``ceil(length / stride)`` long.
    """
    out = ceil_div(length, stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2, out


class BandedSameConv2d(nn.Conv2d):
    """timm ``Conv2dSame`` without a padded copy of its whole input.

    ``Conv2dSame`` pads the input (``F.pad``, a full copy) and convolves the copy. Here the
    output is computed in bands of rows, each from a padded copy of just the input rows it
    needs, into one preallocated output: the same numbers, with at most a band's worth of extra
    memory. Inputs below :attr:`band_bytes` are padded whole, as ``Conv2dSame`` does.
    """

    band_bytes = 64 * 2**20
    """Largest padded copy of the input to make at once, in bytes."""

    @classmethod
    def sharing(cls, conv: nn.Conv2d) -> BandedSameConv2d:
        """A banded convolution with the same configuration, weight and bias (not copied)."""
        banded = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            0,
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
            device="meta",
        )
        banded.weight = conv.weight
        banded.bias = conv.bias
        return banded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolves ``(N, C, H, W)`` with TensorFlow "same" padding, like ``Conv2dSame``."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        height, width = x.shape[-2:]
        top, bottom, out_h = same_padding(height, kh, sh, dh)
        left, right, _ = same_padding(width, kw, sw, dw)

        def conv(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

        padded_bytes = x[:, :, :1].numel() * x.element_size() * (height + top + bottom)
        bands = min(out_h, math.ceil(padded_bytes / self.band_bytes))
        if bands <= 1:
            return conv(F.pad(x, (left, right, top, bottom)))
        rows = math.ceil(out_h / bands)
        out: torch.Tensor | None = None
        for first in range(0, out_h, rows):
            last = min(first + rows, out_h)  # output rows [first, last)
            begin = first * sh - top  # input rows [begin, end), outside [0, height) padding
            end = (last - 1) * sh - top + dh * (kh - 1) + 1
            band = x[:, :, max(begin, 0) : min(end, height)]
            band = F.pad(band, (left, right, max(-begin, 0), max(end - height, 0)))
            result = conv(band)
            del band
            if out is None:
                out = _empty_like_rows(result, out_h)
            out[:, :, first:last] = result
        assert out is not None
        return out


def _empty_like_rows(result: torch.Tensor, rows: int) -> torch.Tensor:
    """An empty ``(N, K, rows, W)`` tensor in the memory layout of a band's ``result``."""
    layout = (
        torch.channels_last
        if result.is_contiguous(memory_format=torch.channels_last) and not result.is_contiguous()
        else torch.contiguous_format
    )
    shape = (*result.shape[:2], rows, result.shape[3])
    return torch.empty(shape, dtype=result.dtype, device=result.device, memory_format=layout)


class BatchNormAct2d(nn.BatchNorm2d):
    """A 2-D batch norm followed by an activation, as timm's ``BatchNormAct2d`` computes it.

    Its parameters and buffers are the batch norm's (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``); the activation has none, so timm's state dicts
    load into it as they are.

    Args:
        num_features: Channels ``C`` of the ``(N, C, H, W)`` input.
        eps: The norm's epsilon.
        act: The activation after the norm; None for none (``nn.Identity``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, act: nn.Module | None = None) -> None:
        super().__init__(num_features, eps=eps)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``act(batch_norm(x))`` for ``(N, C, H, W)``."""
        return self.act(super().forward(x))


FX_LEAVES: tuple[type[nn.Module], ...] = (BandedSameConv2d, BatchNormAct2d)
"""Modules ``torch.fx`` must not trace into (padding computed from the input's shape; a norm the
walkers fold as one module)."""
