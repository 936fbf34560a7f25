"""The modules and functions that the graph rewrites insert, and "same" padding arithmetic.

* The converted head (``heatmap_cli.convert.network``): :class:`LinearAsConv2d` and
  :func:`linear_as_conv2d` slide a Linear over the feature map, computed by
  :func:`windowed_linear` (a matrix product on small grids, a convolution on large ones);
  :class:`PerPositionNorm` and :func:`layer_norm_over_channels` normalize every position;
  :func:`dense_pool` is the sliding form of a global pool; :func:`unchanged` replaces reshapes.
* The "a trous" network (``heatmap_cli.grid.dilate``): :class:`AtrousOp` and :class:`AtrousPad` run
a
  convolution, pool or pad on a map with holes; :func:`crop_to_grid` cuts the cells it computes
  beyond the grid.

TensorFlow "same" padding, whose leading part depends on the input length, is computed in one
place, ``heatmap_cli.convert.tf_same.same_padding``, for the a-trous ops, the receptive-field
analysis and the TF-"same" convolution alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heatmap_cli.convert.fx import Pair, pair
from heatmap_cli.convert.tf_same import ceil_div, same_padding
from heatmap_cli.convert.windows import grid_shape
from heatmap_cli.errors import ConversionError

__all__ = [
    "DEFAULT_MATMUL_MAX_CELLS",
    "AtrousOp",
    "AtrousPad",
    "AxisSpan",
    "LinearAsConv2d",
    "PerPositionNorm",
    "conv_padding",
    "crop_to_grid",
    "dense_pool",
    "layer_norm_over_channels",
    "linear_as_conv2d",
    "linear_kernel",
    "pool_output_length",
    "unchanged",
    "windowed_linear",
]

DEFAULT_MATMUL_MAX_CELLS = 200
"""Above this many output cells (images x rows x columns) a converted head runs as a convolution.

Measured on a 2-core Zen 4 for a VGG-sized head: at 36 cells the matrix product takes a third of
oneDNN's convolution time, at about 200 they tie, at 288 the convolution is 1.3x faster."""


# --- Padding arithmetic -------------------------------------------------------------------------


def conv_padding(padding: object, kernel: Pair, dilation: Pair) -> tuple[Pair, Pair]:
    """Leading and trailing padding of a torch convolution, ``"same"``/``"valid"`` spelled out.

    Args:
        padding: The convolution's ``padding`` argument.
        kernel: ``(kh, kw)``.
        dilation: ``(dh, dw)``.

    Returns:
        ``((top, left), (bottom, right))``; torch puts the odd pixel of ``"same"`` after.
    """
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        before = (totals[0] // 2, totals[1] // 2)
        return before, (totals[0] - before[0], totals[1] - before[1])
    symmetric = pair(padding)
    return symmetric, symmetric


def pool_output_length(
    length: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool
) -> int:
    """Output length of a torch convolution or pool along one dimension (torch's formula)."""
    span = length + 2 * pad - dilation * (kernel - 1) - 1
    out = (ceil_div(span, stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= length + pad:  # the last window must start inside
        out -= 1
    return out


# --- The converted head -------------------------------------------------------------------------


class LinearAsConv2d(nn.Module):
    """A ``Linear`` that reads ``(C, vh, vw)`` windows, applied at every position as a conv.

    The weight is the Linear's own, reshaped to ``(K, C, vh, vw)``: a view, never a copy.

    Args:
        linear: The Linear layer to slide; it is shared, not copied.
        volume: ``(C, vh, vw)``, the volume its input vector was flattened from.
        matmul_max_cells: Largest output (images x cells) computed as a matrix product
            (see :func:`windowed_linear`).
    """

    def __init__(
        self,
        linear: nn.Linear,
        volume: tuple[int, int, int],
        *,
        matmul_max_cells: int = DEFAULT_MATMUL_MAX_CELLS,
    ) -> None:
        super().__init__()
        if math.prod(volume) != linear.in_features:
            raise ConversionError(
                f"Linear with {linear.in_features} inputs reads a {volume} volume "
                f"({math.prod(volume)} values)"
            )
        self.linear = linear
        self.volume = volume
        self.matmul_max_cells = matmul_max_cells

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Slides the Linear: ``(N, C, H, W)`` -> ``(N, K, H - vh + 1, W - vw + 1)``."""
        return linear_as_conv2d(
            x, self.linear.weight, self.linear.bias, self.volume, self.matmul_max_cells
        )


def linear_kernel(weight: torch.Tensor, volume: tuple[int, int, int]) -> torch.Tensor:
    """A ``(K, C*vh*vw)`` Linear weight as a ``(K, C, vh, vw)`` kernel (a view)."""
    return weight.reshape(weight.shape[0], *volume)


def linear_as_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    volume: tuple[int, int, int],
    matmul_max_cells: int = DEFAULT_MATMUL_MAX_CELLS,
) -> torch.Tensor:
    """``F.linear`` on every ``(C, vh, vw)`` window of a feature map: a convolution.

    Args:
        x: ``(N, C, H, W)`` feature map.
        weight: ``(K, C*vh*vw)`` Linear weight.
        bias: ``(K,)`` bias or None.
        volume: ``(C, vh, vw)``.
        matmul_max_cells: See :func:`windowed_linear`.

    Returns:
        ``(N, K, H - vh + 1, W - vw + 1)``.
    """
    kernel = linear_kernel(weight, volume)
    return windowed_linear(x, kernel, bias, matmul_max_cells=matmul_max_cells)


def windowed_linear(
    x: torch.Tensor,
    kernel: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: Pair = (1, 1),
    *,
    matmul_max_cells: int = DEFAULT_MATMUL_MAX_CELLS,
) -> torch.Tensor:
    """A head's convolution (stride 1, no padding), computed the fastest way for its size.

    Converted heads are wide (VGG16's fc6 reads 25,088 values per window) and slide over few
    positions. There oneDNN's convolution runs far below the machine's matmul rate and copies
    its whole weight on every call (392 MiB for VGG16), so small outputs are computed as
    ``F.unfold`` (not needed for 1x1 kernels) and one matrix product with the Linear's own
    weight instead; larger outputs use ``F.conv2d``. Both forms give the same values up to
    float rounding.

    Args:
        x: ``(N, C, H, W)`` feature map.
        kernel: ``(K, C, kh, kw)`` weight (the Linear's, viewed).
        bias: ``(K,)`` or None.
        dilation: ``(dh, dw)`` spacing of the kernel taps.
        matmul_max_cells: Outputs of more cells (images x rows x columns) use ``F.conv2d``;
            negative: always the convolution.

    Returns:
        ``(N, K, H - dh*(kh-1), W - dw*(kw-1))``; may be stored channels-last.
    """
    n, k = x.shape[0], kernel.shape[0]
    kh, kw = kernel.shape[2:]
    rows, cols = x.shape[2] - dilation[0] * (kh - 1), x.shape[3] - dilation[1] * (kw - 1)
    # Shape passes (meta tensors) take the convolution too: same shape, no Python meta kernel.
    if n * rows * cols > matmul_max_cells or rows <= 0 or cols <= 0 or x.is_meta:
        return F.conv2d(x, kernel, bias, dilation=dilation)
    if (kh, kw) == (1, 1):
        return F.linear(x.permute(0, 2, 3, 1), kernel.flatten(1), bias).permute(0, 3, 1, 2)
    # unfold lays each window out as (c, i, j): the order the Linear's input was flattened in
    windows = F.unfold(x, (kh, kw), dilation=dilation).transpose(1, 2)  # (N, rows*cols, C*kh*kw)
    return F.linear(windows, kernel.flatten(1), bias).transpose(1, 2).reshape(n, k, rows, cols)


class PerPositionNorm(nn.Module):
    """Applies a norm layer made for ``(N, C)`` vectors at every position of ``(N, C, H, W)``.

    Args:
        norm: A ``BatchNorm1d`` (channel dim 1) or a ``LayerNorm`` over ``(C,)`` (last dim).
    """

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalizes each position's channel vector: ``(N, C, H, W)`` -> ``(N, C, H, W)``."""
        if isinstance(self.norm, nn.LayerNorm):
            return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        n, c, h, w = x.shape
        return self.norm(x.reshape(n, c, h * w)).reshape(n, c, h, w)


def layer_norm_over_channels(
    x: torch.Tensor,
    normalized_shape: tuple[int, ...],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """``F.layer_norm`` over the channel dim of ``(N, C, H, W)`` at every position.

    Args:
        x: ``(N, C, H, W)``.
        normalized_shape: ``(C,)``.
        weight: ``(C,)`` or None.
        bias: ``(C,)`` or None.
        eps: Added to the variance.

    Returns:
        ``(N, C, H, W)``.
    """
    channels_last = x.permute(0, 2, 3, 1)
    return F.layer_norm(channels_last, normalized_shape, weight, bias, eps).permute(0, 3, 1, 2)


def unchanged(x: torch.Tensor) -> torch.Tensor:
    """Identity: a flatten of the original head becomes this in the dense network."""
    return x


def dense_pool(x: torch.Tensor, kernel: Pair, kind: str) -> torch.Tensor:
    """The sliding equivalent of a global pool over a ``kernel``-sized training feature map.

    Args:
        x: ``(N, C, H, W)`` feature map.
        kernel: ``(fh, fw)`` feature map size at the training input.
        kind: ``"avg"`` or ``"max"``.

    Returns:
        ``(N, C, H - fh + 1, W - fw + 1)``.
    """
    if kind == "max":
        return F.max_pool2d(x, kernel, stride=1)
    return F.avg_pool2d(x, kernel, stride=1)


# --- The a-trous network ------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisSpan:
    """Along one dimension of a denser map: what an ``AtrousOp`` pads and what it outputs.

    Attributes:
        before: Padding before the map (negative: cropping).
        after: Padding after the map (negative: cropping).
        out: Output length, ``D_out`` times the original output length.
        low: First position (relative to the unpadded map) an average pool counts.
        high: One past the last position an average pool counts.
    """

    before: int
    after: int
    out: int
    low: int
    high: int


class AtrousOp(nn.Module):
    """A convolution or pool of the converted network, run on a ``factor`` times denser map.

    Along each dimension the operation runs with stride ``new_stride`` and dilation
    ``dilation * factor``; the input is padded by ``padding * factor`` before and, after, by what
    makes the output exactly ``factor * stride / new_stride`` times the original output length.
    Convolution weights are read from the wrapped module, or passed to ``forward``; never copied.

    Args:
        kind: ``"conv"``, ``"max"`` or ``"avg"``.
        kernel: ``(kh, kw)``.
        stride: The original stride.
        new_stride: The stride on the denser map: 1, unless the input is not denser
            (``factor`` 1) and only part of the original stride is removed.
        dilation: The original dilation.
        padding: The original symmetric padding; ignored when ``same``.
        factor: ``(Dh, Dw)``: how much denser the input is than the original input.
        same: TF "same" padding, as timm's ``*Same`` layers compute it from the input length.
        ceil_mode: The original pool's ``ceil_mode``.
        count_include_pad: For ``"avg"``: whether padding counts in the divisor.
        divisor_override: For ``"avg"``: a fixed divisor.
        groups: For ``"conv"``: channel groups.
        module: For ``"conv"``: the original convolution, whose ``weight`` and ``bias`` are used.
        head: For ``"conv"``: a converted Linear, computed by :func:`windowed_linear`.
        matmul_max_cells: For ``head``: see :func:`windowed_linear`.
    """

    def __init__(
        self,
        kind: str,
        *,
        kernel: Pair,
        stride: Pair,
        new_stride: Pair,
        dilation: Pair,
        padding: Pair,
        factor: Pair,
        same: bool = False,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
        groups: int = 1,
        module: nn.Module | None = None,
        head: bool = False,
        matmul_max_cells: int = DEFAULT_MATMUL_MAX_CELLS,
    ) -> None:
        super().__init__()
        if kind not in ("conv", "max", "avg"):
            raise ValueError(f"unknown kind {kind!r}")
        if head and (kind != "conv" or new_stride != (1, 1) or groups != 1):
            raise ValueError("a converted Linear slides with stride 1 and no groups")
        self.kind = kind
        self.kernel = kernel
        self.stride = stride
        self.new_stride = new_stride
        self.dilation = dilation
        self.padding = padding
        self.factor = factor
        self.same = same
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad
        self.divisor_override = divisor_override
        self.groups = groups
        self.module = module
        self.head = head
        self.matmul_max_cells = matmul_max_cells
        # along a dimension of kernel 1 dilation changes nothing, and dilated 1x1 kernels can be
        # slower
        self.atrous_dilation: Pair = (
            dilation[0] * factor[0] if kernel[0] > 1 else 1,
            dilation[1] * factor[1] if kernel[1] > 1 else 1,
        )

    def span(self, length: int, dim: int) -> AxisSpan:
        """Padding and output length along ``dim`` (0: height, 1: width) for an input length."""
        kernel, stride, dilation = self.kernel[dim], self.stride[dim], self.dilation[dim]
        factor, new_stride = self.factor[dim], self.new_stride[dim]
        original = ceil_div(length, factor)  # length is at most factor * original
        if self.same:
            before, after, out = same_padding(original, kernel, stride, dilation)
            low, high = -before * factor, (original + after) * factor  # timm pads zeros itself
        else:
            before = self.padding[dim]
            out = pool_output_length(original, kernel, stride, before, dilation, self.ceil_mode)
            if self.count_include_pad:  # torch counts the padding, not a ceil_mode overhang
                low, high = -before * factor, (original + before) * factor
            else:
                low, high = 0, length
        out = out * factor * stride // new_stride
        padded = (out - 1) * new_stride + (kernel - 1) * self.atrous_dilation[dim] + 1
        return AxisSpan(before * factor, padded - length - before * factor, out, low, high)

    def forward(
        self,
        x: torch.Tensor,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Runs the operation on the denser map.

        Args:
            x: ``(N, C, H, W)`` map, ``factor`` times denser than the original input.
            weight: ``(K, C/groups, kh, kw)`` kernel of a functional convolution; None to use
                the wrapped module's.
            bias: ``(K,)`` bias of a functional convolution, or None.

        Returns:
            ``(N, K, H', W')``: ``factor * stride / new_stride`` times denser than the original
            output.
        """
        rows, cols = self.span(x.shape[2], 0), self.span(x.shape[3], 1)
        pads = (cols.before, cols.after, rows.before, rows.after)
        symmetric = rows.before == rows.after >= 0 and cols.before == cols.after >= 0
        if self.kind == "conv":
            if weight is None:
                assert self.module is not None
                weight, bias = self.module.weight, self.module.bias
            if self.head:
                x = F.pad(x, pads) if any(pads) else x
                return windowed_linear(
                    x, weight, bias, self.atrous_dilation, matmul_max_cells=self.matmul_max_cells
                )
            padding = (rows.before, cols.before) if symmetric else (0, 0)
            if not symmetric:
                x = F.pad(x, pads)
            return F.conv2d(
                x, weight, bias, self.new_stride, padding, self.atrous_dilation, self.groups
            )
        if self.kind == "max":
            # torch pads a max pool with -inf itself, but only up to half the (undilated) kernel
            builtin = (
                symmetric
                and 2 * rows.before <= self.kernel[0]
                and 2 * cols.before <= self.kernel[1]
            )
            if not builtin:
                x = F.pad(x, pads, value=-math.inf)
            padding = (rows.before, cols.before) if builtin else (0, 0)
            return F.max_pool2d(x, self.kernel, self.new_stride, padding, self.atrous_dilation)
        total = self._window_sum(F.pad(x, pads), rows.out, cols.out)
        if self.divisor_override:
            return total / self.divisor_override
        counts = self._counts(rows, 0)[:, None] * self._counts(cols, 1)[None, :]
        return total / counts.to(total)

    def _window_sum(self, padded: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Sum over every dilated window: one shifted slice per kernel row, then per column."""
        (kh, kw), (dh, dw), (sh, sw) = self.kernel, self.atrous_dilation, self.new_stride
        by_rows = sum(padded[:, :, i * dh : i * dh + (rows - 1) * sh + 1 : sh] for i in range(kh))
        return sum(by_rows[:, :, :, j * dw : j * dw + (cols - 1) * sw + 1 : sw] for j in range(kw))  # type: ignore[index]

    def _counts(self, span: AxisSpan, dim: int) -> torch.Tensor:
        """How many positions of each output's window an average pool divides by, along dim."""
        starts = torch.arange(span.out) * self.new_stride[dim] - span.before
        taps = torch.arange(self.kernel[dim]) * self.atrous_dilation[dim]
        positions = starts[:, None] + taps[None, :]
        return ((positions >= span.low) & (positions < span.high)).sum(1).float()

    def extra_repr(self) -> str:
        """Shown by ``print(net)``."""
        padding = "same" if self.same else f"padding={self.padding}"
        return (
            f"{self.kind}, kernel={self.kernel}, stride={self.new_stride} (was {self.stride}), "
            f"dilation={self.atrous_dilation}, factor={self.factor}, {padding}"
        )


class AtrousPad(nn.Module):
    """A constant ``F.pad`` of the converted network, on a ``factor`` times denser map.

    Args:
        pad: ``(left, right, top, bottom)`` of the original padding.
        value: The fill value.
        factor: ``(Dh, Dw)``.
    """

    def __init__(self, pad: tuple[int, int, int, int], value: float, factor: Pair) -> None:
        super().__init__()
        self.pad = pad
        self.value = value
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pads ``(N, C, H, W)`` by ``pad * factor`` before, after up to ``factor`` times more."""
        left, right, top, bottom = self.pad
        (fh, fw), (h, w) = self.factor, x.shape[2:]
        rows = (ceil_div(h, fh) + top + bottom) * fh
        cols = (ceil_div(w, fw) + left + right) * fw
        pads = (left * fw, cols - w - left * fw, top * fh, rows - h - top * fh)
        return F.pad(x, pads, value=self.value)


def crop_to_grid(
    grid: torch.Tensor, input_shape: torch.Size, window: Pair, stride: int
) -> torch.Tensor:
    """The cells of a grid whose windows lie inside the input; the rest are cut off.

    Args:
        grid: ``(N, K, h, w)`` cells computed by a network at ``stride``, possibly more than
            the input holds windows for (windows hanging over the edge into zero padding).
        input_shape: ``(N, C, H, W)`` of the network's input.
        window: ``(h, w)`` window of a cell.
        stride: Cell spacing in input pixels.

    Returns:
        ``(N, K, rows, cols)`` with ``(rows, cols) = grid_shape((H, W), window, stride)``.
    """
    rows, cols = grid_shape((input_shape[2], input_shape[3]), window, stride)
    if grid.shape[2] < rows or grid.shape[3] < cols:  # checked on shapes when built
        raise RuntimeError(f"the network gave {tuple(grid.shape[2:])} cells, not {rows, cols}")
    return grid[:, :, :rows, :cols]
