"""A finer output stride in one pass: the "a trous" (with holes) rewrite of a converted network.

A converted network with native stride ``s`` gives one cell every ``s`` pixels. For a stride
``t = s / f``, the downsampling steps that make the last factor ``f`` run at stride 1 instead, and
every spatial operation after them (convolutions, pools, the converted head's window pooling or
its big first convolution) reads its input with holes: dilation and padding multiplied by how
much denser its input has become. Nothing else changes, and no weight is copied.

The rewrite is generic over the ``torch.fx`` graph. Three shape-only passes on meta tensors (the
training size, and that size grown in height, then in width) give every node's cumulative stride
``S`` and which of its dimensions are height and width. A node's map is then ``D = S / t`` times
denser than in the converted network (``D = 1`` where ``S <= t``, and those nodes are left
alone). Every operation that reads a map with ``D > 1``, or makes one, must be one of:

* a convolution or pool (``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d``, their functional
  forms, timm's ``Conv2dSame``/``MaxPool2dSame``/``AvgPool2dSame``, the converted head's
  ``_dense_pool`` and ``LinearAsConv2d``/``linear_as_conv2d``) or a constant pad: replaced by an
  ``AtrousOp``/``AtrousPad`` (average pools have no dilation in torch; ``AtrousOp`` sums shifted
  slices and divides by the count torch would use, ``count_include_pad`` included);
* an operation on each position alone (activations, batch norm, norms and Linears over channels,
  residual additions, concatenation and splits along channels, channel shuffles, permutes);
* a reduction to one value per image (squeeze-and-excitation), which then averages a denser map.

Anything else (upsampling, a leaf module it does not know, a reshape that moves height or
width) and the network is not dilated: ``dilate`` warns once and returns a ``StitchedNet``,
which computes the same grid by shift-and-stitch.

Geometry. Position ``p`` of a map ``D`` times denser sits where position ``p / D`` of the original
map sits, so with padding ``P * D`` every rewritten operation lines up with the original, and cell
``(i, j)`` of the result is the window at ``(i*t, j*t)``. Each rewritten operation also pads (or
crops) its bottom/right edge so that its output is exactly ``D`` times as long as the original
output; then the positions at multiples of ``D`` see exactly what the original network sees, zero
padding included, and **on the cells of the native grid the dilated network equals the dense
one**, padded network or not (to float rounding; squeeze-and-excitation excepted, see below).
TF-style "same" padding, whose top/left part depends on the input length, is computed from the
original length at every call for the same reason.

Exactness. Without zero padding every cell equals the crop at its window, as with stitching.
With padding, the cells between the native ones differ from stitching near the borders of the
shifted passes: a pass shifted by ``(dy, dx)`` sees zeros above row ``dy`` and left of column
``dx`` (and past the end of its cut) where the dilated pass sees the image, and the layers
before the removed strides run once, on the whole image. The difference fades with the distance
from those borders and is gone beyond the network's receptive field; on real networks it is
smaller than the dense grid's own departure from per-window crops. Squeeze-and-excitation means
average a denser map than any single pass, so on such networks no cell is exactly the dense one.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from heatmap_cli.geometry import grid_shape
from heatmap_cli.grid import check_stride, stitched_grid
from heatmap_cli.surgery import (
    _ELEMENTWISE_FUNCTIONS,
    _ELEMENTWISE_METHODS,
    _ELEMENTWISE_MODULES,
    ConvolutionalizedNet,
    LinearAsConv2d,
    PerPositionNorm,
    _dense_pool,
    _meta_clone,
    _unchanged,
    layer_norm_over_channels,
    linear_as_conv2d,
    windowed_linear,
)

__all__ = ["AtrousOp", "AtrousPad", "DilatedNet", "StitchedNet", "dilate"]

# Probe growth in pixels: a multiple of every stride a network can have (as in surgery).
_PROBE_SPAN = 2**6 * 3 * 5 * 7

Pair = tuple[int, int]


class _CannotDilate(Exception):
    """The network has an operation that this rewrite does not know how to dilate."""


def _pair(value: object) -> Pair:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) in (1, 2):
        return (int(value[0]), int(value[-1]))
    raise _CannotDilate(f"expected an int or a pair, got {value!r}")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# --- The rewritten operations -------------------------------------------------------------------


def _torch_length(
    length: int, kernel: int, stride: int, pad: int, dilation: int, ceil: bool
) -> int:
    """Output length of a torch convolution or pool along one dimension (torch's formula)."""
    span = length + 2 * pad - dilation * (kernel - 1) - 1
    out = (_ceil_div(span, stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= length + pad:  # the last window must start inside
        out -= 1
    return out


def _same_padding(length: int, kernel: int, stride: int, dilation: int) -> tuple[int, int, int]:
    """TF "same" padding before and after an input of ``length``, and the output length."""
    out = _ceil_div(length, stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - length, 0)
    return total // 2, total - total // 2, out


@dataclass(frozen=True)
class _Span:
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
        head: For ``"conv"``: a converted Linear, computed by
            :func:`~heatmap_cli.surgery.windowed_linear` (a matrix product on small outputs).
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
        # along a dimension of kernel 1 dilation changes nothing, and dilated 1x1 kernels can be
        # slower
        self.atrous_dilation: Pair = (
            dilation[0] * factor[0] if kernel[0] > 1 else 1,
            dilation[1] * factor[1] if kernel[1] > 1 else 1,
        )

    def span(self, length: int, dim: int) -> _Span:
        """Padding and output length along ``dim`` for an input ``length`` long."""
        kernel, stride, dilation = self.kernel[dim], self.stride[dim], self.dilation[dim]
        factor, new_stride = self.factor[dim], self.new_stride[dim]
        original = _ceil_div(length, factor)  # length is at most factor * original
        if self.same:
            before, after, out = _same_padding(original, kernel, stride, dilation)
            low, high = -before * factor, (original + after) * factor  # timm pads zeros itself
        else:
            before = self.padding[dim]
            out = _torch_length(original, kernel, stride, before, dilation, self.ceil_mode)
            if self.count_include_pad:  # torch counts the padding, not a ceil_mode overhang
                low, high = -before * factor, (original + before) * factor
            else:
                low, high = 0, length
        out = out * factor * stride // new_stride
        padded = (out - 1) * new_stride + (kernel - 1) * self.atrous_dilation[dim] + 1
        return _Span(before * factor, padded - length - before * factor, out, low, high)

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
                return windowed_linear(x, weight, bias, self.atrous_dilation)
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

    def _counts(self, span: _Span, dim: int) -> torch.Tensor:
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
        """Pads by ``pad * factor`` before, and after up to ``factor`` times the original length.

        Args:
            x: ``(N, C, H, W)``.

        Returns:
            ``(N, C, H', W')``.
        """
        left, right, top, bottom = self.pad
        (fh, fw), (h, w) = self.factor, x.shape[2:]
        rows = (_ceil_div(h, fh) + top + bottom) * fh
        cols = (_ceil_div(w, fw) + left + right) * fw
        pads = (left * fw, cols - w - left * fw, top * fh, rows - h - top * fh)
        return F.pad(x, pads, value=self.value)


def _linear_kernel(weight: torch.Tensor, volume: tuple[int, int, int]) -> torch.Tensor:
    """A ``(K, C*vh*vw)`` Linear weight as a ``(K, C, vh, vw)`` kernel (a view)."""
    return weight.reshape(weight.shape[0], *volume)


# --- Reading the graph --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where height and width are in a node's output, and its cumulative stride along each.

    Attributes:
        dims: Indices of the height and width dimensions; ``(-1, -1)`` when they are mixed
            into the same dimension(s) (a flatten).
        stride: Input pixels per position along height and width; 0 if not a whole number.
        sizes: ``(h, w)`` at the three probe sizes.
        rank: Number of dimensions.
    """

    dims: Pair
    stride: Pair
    sizes: tuple[Pair, Pair, Pair]
    rank: int

    @property
    def trailing(self) -> bool:
        """Whether height and width are the last two dimensions, in this order."""
        return self.dims == (self.rank - 2, self.rank - 1)


class _ShapeInterpreter(fx.Interpreter):
    """Runs a meta-device graph module, recording output shapes and skipping batch norms.

    A batch norm keeps the shape, and on meta tensors it is by far the slowest operation.
    """

    def __init__(
        self, module: fx.GraphModule, record: dict[str, tuple[int, ...] | None] | None = None
    ) -> None:
        super().__init__(module)
        self.record = record

    def call_module(self, target: str, args: tuple, kwargs: dict) -> object:  # type: ignore[override]
        """Returns a batch norm's input unchanged; calls any other module."""
        if isinstance(self.fetch_attr(target), nn.modules.batchnorm._BatchNorm) and args:
            return args[0]
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> object:
        """Runs a node and records the shape of its output (None: not a tensor)."""
        out = super().run_node(n)
        if self.record is not None:
            self.record[n.name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return out


def _meta_input(module: nn.Module, size: Pair) -> torch.Tensor:
    """A storage-less ``(1, 3, h, w)`` image in the dtype of the network's weights."""
    dtype = next(
        (p.dtype for p in module.parameters() if p.is_floating_point()), torch.get_default_dtype()
    )
    return torch.empty(1, 3, *size, device="meta", dtype=dtype)


def _probe_layouts(
    graph_module: fx.GraphModule, window: Pair
) -> tuple[dict[str, _Layout | None], dict[str, tuple[int, ...] | None]]:
    """Layout of every node's output, from shape passes at three input sizes.

    Returns:
        The layouts (None: not a map that grows with the input), and every node's output shape
        at the training size (None: not a tensor).
    """
    meta = _meta_clone(graph_module)
    sizes = [window, (window[0] + _PROBE_SPAN, window[1]), (window[0], window[1] + _PROBE_SPAN)]
    shapes: list[dict[str, tuple[int, ...] | None]] = []
    for size in sizes:
        shapes.append({})
        _ShapeInterpreter(meta, shapes[-1]).run(_meta_input(meta, size))

    layouts: dict[str, _Layout | None] = {}
    for name, base in shapes[0].items():
        grown_h, grown_w = shapes[1][name], shapes[2][name]
        layouts[name] = None
        if base is None or grown_h is None or grown_w is None:
            continue
        if not len(base) == len(grown_h) == len(grown_w):
            raise _CannotDilate(f"'{name}' changes rank with the input size")
        dims_h = [d for d in range(len(base)) if grown_h[d] != base[d]]
        dims_w = [d for d in range(len(base)) if grown_w[d] != base[d]]
        if not dims_h and not dims_w:
            continue
        if len(dims_h) != 1 or len(dims_w) != 1 or dims_h == dims_w:
            layouts[name] = _Layout((-1, -1), (0, 0), ((0, 0),) * 3, len(base))
            continue
        dh, dw = dims_h[0], dims_w[0]
        grow = (grown_h[dh] - base[dh], grown_w[dw] - base[dw])
        stride = [_PROBE_SPAN // g if g > 0 and _PROBE_SPAN % g == 0 else 0 for g in grow]
        layouts[name] = _Layout(
            (dh, dw),
            (stride[0], stride[1]),
            ((base[dh], base[dw]), (grown_h[dh], grown_h[dw]), (grown_w[dh], grown_w[dw])),
            len(base),
        )
    return layouts, shapes[0]


def _arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


# Operations that move whole positions around (between channels, tensors, dimensions) without
# mixing them: on a map with holes they work as on any other, as long as height and width keep
# their sizes. Reshapes are trusted only while height and width stay the last two dimensions.
_MOVE_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {operator.getitem, torch.cat, torch.stack, torch.permute, torch.transpose, _unchanged}
)
_MOVE_METHODS: frozenset[str] = frozenset(
    {"permute", "transpose", "contiguous", "expand", "expand_as"}
)
_RESHAPE_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({torch.flatten, torch.reshape})
_RESHAPE_METHODS: frozenset[str] = frozenset({"view", "reshape", "flatten"})
# Splits into a tuple of tensors, and the position of their ``dim`` argument.
_SPLIT_FUNCTIONS: dict[Callable[..., object], int] = {
    torch.split: 2,
    torch.chunk: 2,
    torch.unbind: 1,
}
_SPLIT_METHODS: dict[str, int] = {"split": 2, "chunk": 2, "unbind": 1}
_SOFTMAX_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax}
)
# Reductions to one value per image (squeeze-and-excitation): over a denser map they still
# summarize the same image. A sum would not (it grows with the number of positions).
_GLOBAL_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {torch.mean, torch.amax, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
)
_GLOBAL_METHODS: frozenset[str] = frozenset({"mean", "amax"})

_CONV_FUNCTIONS = (F.conv2d, torch.conv2d)
_MAX_POOL_FUNCTIONS = (F.max_pool2d, torch.max_pool2d)
_AVG_POOL_FUNCTIONS = (F.avg_pool2d,)


def _positionwise_extras() -> frozenset[Callable[..., object]]:
    """Per-sample functions of torchvision that fx records as calls (the identity in eval)."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:
        return frozenset()
    return frozenset({stochastic_depth})


def _timm_classes() -> dict[str, type[nn.Module]]:
    """The timm leaf modules that this rewrite knows, by name; empty without timm."""
    try:
        from timm.layers import LayerNorm2d
        from timm.layers.conv2d_same import Conv2dSame
        from timm.layers.norm_act import FrozenBatchNormAct2d
        from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
    except ImportError:
        return {}
    return {
        "Conv2dSame": Conv2dSame,
        "MaxPool2dSame": MaxPool2dSame,
        "AvgPool2dSame": AvgPool2dSame,
        "LayerNorm2d": LayerNorm2d,
        "FrozenBatchNormAct2d": FrozenBatchNormAct2d,
    }


class _Rewriter:
    """Walks a copy of the converted graph and rewrites every node that touches a denser map."""

    def __init__(self, graph_module: fx.GraphModule, window: Pair, stride: int) -> None:
        self.gm = graph_module
        self.graph = graph_module.graph
        self.stride = stride
        self.layouts, self.shapes = _probe_layouts(graph_module, window)
        self.timm = _timm_classes()
        self.extras = _positionwise_extras()
        self.added = 0

    # -- bookkeeping

    def layout(self, node: object) -> _Layout | None:
        return self.layouts.get(node.name) if isinstance(node, fx.Node) else None

    def factor(self, layout: _Layout | None) -> Pair | None:
        """How much denser than in the converted network a map is: ``max(1, S / t)``.

        None for a tensor that is not a map, one whose height and width are mixed, or one whose
        stride is not a divisor or a multiple of ``t``.
        """
        if layout is None or layout.dims[0] < 0:
            return None
        factors = []
        for stride in layout.stride:
            if stride == 0 or (
                self.stride % stride if stride <= self.stride else stride % self.stride
            ):
                return None
            factors.append(max(1, stride // self.stride))
        return (factors[0], factors[1])

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{type(self.module(node)).__name__} '{node.target}'"
        if node.op == "call_method":
            return f"Tensor.{node.target}() at '{node.name}'"
        return f"{getattr(node.target, '__name__', str(node.target))}() at '{node.name}'"

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.gm.get_submodule(str(node.target)) if node.op == "call_module" else None

    # -- the walk

    def run(self) -> None:
        """Rewrites the graph in place; raises ``_CannotDilate`` at the first unknown operation."""
        for node in list(self.graph.nodes):
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            inputs = [a for a in node.all_input_nodes if self.layout(a) is not None]
            if not inputs:
                continue
            if self.shapes.get(node.name) is None:  # not a tensor: sizes, or a tuple of parts
                if not self.is_size_or_split(node, inputs[0]):
                    raise _CannotDilate(f"{self.describe(node)} returns something unknown")
                continue
            out = self.layout(node)
            in_factors = {self.factor(self.layout(a)) for a in inputs}
            out_factor = self.factor(out)
            if in_factors <= {(1, 1), None} and out_factor in ((1, 1), None):
                continue  # before the strides that are removed: unchanged
            if len(in_factors) != 1 or None in in_factors or (out is not None and not out_factor):
                raise _CannotDilate(
                    f"{self.describe(node)} mixes height and width, resizes the map, or combines "
                    "maps of different strides"
                )
            self.rewrite(node, inputs[0], in_factors.pop(), out, out_factor)  # type: ignore[arg-type]

    def rewrite(
        self,
        node: fx.Node,
        source: fx.Node,
        in_factor: Pair,
        out: _Layout | None,
        out_factor: Pair | None,
    ) -> None:
        source_layout = self.layout(source)
        assert source_layout is not None
        if out is None or out_factor is None:
            if self.is_global(node):
                return  # squeeze-and-excitation: a mean over the denser map
            raise _CannotDilate(f"{self.describe(node)} folds the map in an unknown way")
        op_stride, new_stride = [], []
        for o, i, of, i_f in zip(
            out.stride, source_layout.stride, out_factor, in_factor, strict=True
        ):
            if o % i or (o // of) % (i // i_f):
                raise _CannotDilate(f"{self.describe(node)} changes the stride by a fraction")
            op_stride.append(o // i)
            new_stride.append((o // of) // (i // i_f))
        stride, atrous_stride = (op_stride[0], op_stride[1]), (new_stride[0], new_stride[1])
        if self.rewrite_spatial(node, in_factor, stride, atrous_stride):
            return
        if stride == (1, 1) and self.is_positionwise(node, source_layout, out):
            return
        raise _CannotDilate(f"{self.describe(node)} cannot be dilated")

    # -- operations that leave every position to itself

    def is_size_or_split(self, node: fx.Node, source: fx.Node) -> bool:
        """A query of sizes, or a split into parts along a dimension other than H and W."""
        target = node.target
        if node.op == "call_method" and target in ("size", "dim"):
            return True
        if node.op == "call_function" and target is getattr:
            return node.args[1] in ("shape", "ndim", "dtype", "device")
        if node.op == "call_function" and target in _SPLIT_FUNCTIONS:
            index = _SPLIT_FUNCTIONS[target]  # type: ignore[index]
        elif node.op == "call_method" and target in _SPLIT_METHODS:
            index = _SPLIT_METHODS[str(target)]
        else:
            return False
        layout = self.layout(source)
        dim = _arg(node, index, "dim", 0)
        return layout is not None and isinstance(dim, int) and dim % layout.rank not in layout.dims

    def is_positionwise(self, node: fx.Node, source: _Layout, out: _Layout) -> bool:
        if out.dims[0] < 0 or source.sizes != out.sizes:
            return False  # crops, pads, resizes or folds the map
        reshape_ok = source.trailing and out.trailing
        module, target = self.module(node), node.target
        if module is not None:
            per_channel_2d = tuple(
                self.timm[k] for k in ("LayerNorm2d", "FrozenBatchNormAct2d") if k in self.timm
            )
            if isinstance(module, LinearAsConv2d):
                return module.volume[1:] == (1, 1)
            if isinstance(module, nn.Linear):
                return self.spares_last(out, 1)
            if isinstance(module, nn.LayerNorm) and not isinstance(module, per_channel_2d):
                return self.spares_last(out, len(module.normalized_shape))
            if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
                return module.dim is not None and module.dim % out.rank not in out.dims
            if isinstance(module, nn.Flatten):
                return reshape_ok
            if isinstance(module, per_channel_2d):
                return out.dims == (2, 3)
            return isinstance(
                module, (*_ELEMENTWISE_MODULES, nn.modules.batchnorm._BatchNorm, PerPositionNorm)
            )
        if node.op == "call_function":
            if target in _ELEMENTWISE_FUNCTIONS or target in self.extras:
                return True
            if target is layer_norm_over_channels:
                return out.dims == (2, 3)
            if target is linear_as_conv2d:
                return tuple(_arg(node, 3, "volume"))[1:] == (1, 1)  # type: ignore[arg-type]
            if target is F.linear:
                return self.spares_last(out, 1)
            if target is F.layer_norm:
                shape = _arg(node, 1, "normalized_shape")
                return isinstance(shape, (tuple, list)) and self.spares_last(out, len(shape))
            if target in _SOFTMAX_FUNCTIONS:
                dim = _arg(node, 1, "dim")
                return isinstance(dim, int) and dim % out.rank not in out.dims
            if target in _RESHAPE_FUNCTIONS:
                return reshape_ok
            return target in _MOVE_FUNCTIONS
        if node.op == "call_method":
            if target in ("softmax", "log_softmax"):
                dim = _arg(node, 1, "dim")
                return isinstance(dim, int) and dim % out.rank not in out.dims
            if target in _RESHAPE_METHODS:
                return reshape_ok
            return target in _ELEMENTWISE_METHODS or target in _MOVE_METHODS
        return False

    @staticmethod
    def spares_last(out: _Layout, count: int) -> bool:
        """Whether the last ``count`` dimensions (a Linear's or LayerNorm's) exclude H and W."""
        return max(out.dims) < out.rank - count

    def is_global(self, node: fx.Node) -> bool:
        module = self.module(node)
        if module is not None:
            return isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
        if node.op == "call_function":
            return node.target in _GLOBAL_FUNCTIONS
        return node.op == "call_method" and node.target in _GLOBAL_METHODS

    # -- operations that get holes

    def rewrite_spatial(self, node: fx.Node, factor: Pair, stride: Pair, new_stride: Pair) -> bool:
        """Replaces a convolution, pool or pad by its dilated form; False if it is none."""
        if node.op == "call_module":
            return self.rewrite_module(node, factor, stride, new_stride)
        if node.op != "call_function":
            return False
        target, x = node.target, _arg(node, 0, "input")
        common = {"factor": factor, "stride": stride, "new_stride": new_stride}
        if target in _CONV_FUNCTIONS:
            weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
            kernel = self.kernel_of(weight, node)
            dilation = _pair(_arg(node, 5, "dilation", 1))
            padding = self.torch_padding(_arg(node, 4, "padding", 0), kernel, dilation, node)
            groups = _arg(node, 6, "groups", 1)
            op = AtrousOp(
                "conv",
                kernel=kernel,
                dilation=dilation,
                padding=padding,
                groups=int(groups),
                **common,  # type: ignore[call-overload]
            )
            self.replace(node, op, (x, weight, bias))
        elif target in _MAX_POOL_FUNCTIONS:
            if _arg(node, 6, "return_indices", False):
                return False
            op = AtrousOp(
                "max",
                kernel=_pair(_arg(node, 1, "kernel_size")),
                dilation=_pair(_arg(node, 4, "dilation", 1)),
                padding=_pair(_arg(node, 3, "padding", 0)),
                ceil_mode=bool(_arg(node, 5, "ceil_mode", False)),
                **common,
            )
            self.replace(node, op, (x,))
        elif target in _AVG_POOL_FUNCTIONS:
            divisor = _arg(node, 6, "divisor_override")
            op = AtrousOp(
                "avg",
                kernel=_pair(_arg(node, 1, "kernel_size")),
                dilation=(1, 1),
                padding=_pair(_arg(node, 3, "padding", 0)),
                ceil_mode=bool(_arg(node, 4, "ceil_mode", False)),
                count_include_pad=bool(_arg(node, 5, "count_include_pad", True)),
                divisor_override=int(divisor) if divisor else None,
                **common,  # type: ignore[call-overload]
            )
            self.replace(node, op, (x,))
        elif target is _dense_pool:
            kernel, kind = _pair(node.args[1]), str(node.args[2])
            op = AtrousOp(kind, kernel=kernel, dilation=(1, 1), padding=(0, 0), **common)
            self.replace(node, op, (x,))
        elif target is linear_as_conv2d:
            volume = tuple(_arg(node, 3, "volume"))  # type: ignore[arg-type]
            if volume[1:] == (1, 1):
                return False
            kernel_node = self.insert_call(node, _linear_kernel, (_arg(node, 1, "weight"), volume))
            op = AtrousOp(
                "conv",
                kernel=(volume[1], volume[2]),
                dilation=(1, 1),
                padding=(0, 0),
                head=True,
                **common,
            )
            self.replace(node, op, (x, kernel_node, _arg(node, 2, "bias")))
        elif target is F.pad:
            pad, mode, value = (
                _arg(node, 1, "pad"),
                _arg(node, 2, "mode", "constant"),
                _arg(node, 3, "value"),
            )
            return mode == "constant" and self.rewrite_pad(node, pad, value, factor, stride)
        else:
            return False
        return True

    def rewrite_module(self, node: fx.Node, factor: Pair, stride: Pair, new_stride: Pair) -> bool:
        module = self.module(node)
        assert module is not None
        common = {"factor": factor, "stride": stride, "new_stride": new_stride}
        kind = type(module)
        same = {
            name: self.timm.get(name) for name in ("Conv2dSame", "MaxPool2dSame", "AvgPool2dSame")
        }
        x = _arg(node, 0, "input")
        if kind is same["Conv2dSame"] or kind.forward is nn.Conv2d.forward:
            if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros":
                raise _CannotDilate(f"{self.describe(node)} pads with {module.padding_mode!r}")
            kernel, dilation = _pair(module.kernel_size), _pair(module.dilation)
            is_same = kind is same["Conv2dSame"]
            padding = (
                (0, 0) if is_same else self.torch_padding(module.padding, kernel, dilation, node)
            )
            op = AtrousOp(
                "conv",
                kernel=kernel,
                dilation=dilation,
                padding=padding,
                same=is_same,
                groups=module.groups,
                module=module,
                **common,
            )
        elif kind in (same["MaxPool2dSame"], same["AvgPool2dSame"]) or kind.forward in (
            nn.MaxPool2d.forward,
            nn.AvgPool2d.forward,
        ):
            is_same = kind in (same["MaxPool2dSame"], same["AvgPool2dSame"])
            if getattr(module, "return_indices", False) or (is_same and module.ceil_mode):
                return False
            is_max = isinstance(module, nn.MaxPool2d)
            op = AtrousOp(
                "max" if is_max else "avg",
                kernel=_pair(module.kernel_size),
                dilation=_pair(module.dilation) if is_max else (1, 1),
                padding=(0, 0) if is_same else _pair(module.padding),
                same=is_same,
                ceil_mode=bool(module.ceil_mode),
                count_include_pad=getattr(module, "count_include_pad", True),
                divisor_override=getattr(module, "divisor_override", None),
                **common,
            )
        elif isinstance(module, LinearAsConv2d) and module.volume[1:] != (1, 1):
            weight = self.insert_get(node, f"{node.target}.linear.weight")
            bias = None
            if module.linear.bias is not None:
                bias = self.insert_get(node, f"{node.target}.linear.bias")
            kernel_node = self.insert_call(node, _linear_kernel, (weight, module.volume))
            _, vh, vw = module.volume
            op = AtrousOp(
                "conv", kernel=(vh, vw), dilation=(1, 1), padding=(0, 0), head=True, **common
            )
            self.replace(node, op, (x, kernel_node, bias))
            return True
        elif isinstance(module, nn.modules.padding._ConstantPadNd):
            return self.rewrite_pad(node, module.padding, module.value, factor, stride)
        else:
            return False
        self.replace(node, op, (x,))
        return True

    def rewrite_pad(
        self, node: fx.Node, pad: object, value: object, factor: Pair, stride: Pair
    ) -> bool:
        layout = self.layout(node)
        if (
            stride != (1, 1)
            or not isinstance(pad, (tuple, list))
            or len(pad) not in (2, 4)
            or layout is None
            or not layout.trailing
        ):
            return False
        left, right, *rest = (int(p) for p in pad)
        top, bottom = rest if rest else (0, 0)
        op = AtrousPad((left, right, top, bottom), float(value or 0.0), factor)  # type: ignore[arg-type]
        self.replace(node, op, (_arg(node, 0, "input"),))
        return True

    # -- helpers

    def kernel_of(self, weight: object, node: fx.Node) -> Pair:
        shape = self.shapes.get(weight.name) if isinstance(weight, fx.Node) else None
        if shape is None or len(shape) != 4:
            raise _CannotDilate(f"{self.describe(node)} has a kernel of unknown size")
        return (int(shape[2]), int(shape[3]))

    def torch_padding(self, padding: object, kernel: Pair, dilation: Pair, node: fx.Node) -> Pair:
        """Symmetric padding of a torch convolution, with ``"same"``/``"valid"`` spelled out."""
        if padding == "valid":
            return (0, 0)
        if padding == "same":
            totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
            if any(total % 2 for total in totals):
                raise _CannotDilate(f"{self.describe(node)} has asymmetric 'same' padding")
            return (totals[0] // 2, totals[1] // 2)
        return _pair(padding)

    def insert_call(self, before: fx.Node, function: Callable[..., object], args: tuple) -> fx.Node:
        with self.graph.inserting_before(before):
            return self.graph.call_function(function, args)

    def insert_get(self, before: fx.Node, target: str) -> fx.Node:
        with self.graph.inserting_before(before):
            return self.graph.get_attr(target)

    def replace(self, node: fx.Node, op: nn.Module, args: tuple) -> None:
        """Replaces ``node`` by a call of ``op``, registered under a new top-level name.

        A new name, rather than the old node's path, so that no container of the converted
        network (some of which may be the caller's own modules) is ever written to.
        """
        name = f"atrous_{self.added}"
        self.added += 1
        self.gm.add_submodule(name, op)
        with self.graph.inserting_after(node):
            new = self.graph.call_module(name, args)
        node.replace_all_uses_with(new)
        self.graph.erase_node(node)
        self.layouts[new.name] = self.layouts[node.name]


# --- Networks -----------------------------------------------------------------------------------


class DilatedNet(ConvolutionalizedNet):
    """A converted network rewritten "a trous": one cell every ``base.stride / factor`` pixels.

    ``forward`` maps ``(N, 3, H, W)`` to ``(N, K, rows, cols)`` with ``(rows, cols) =
    grid_shape((H, W), window, stride)``; cell ``(i, j)`` is the window at ``(i*stride,
    j*stride)``. The rewritten graph computes up to ``factor - 1`` more cells at the
    bottom/right (windows that hang over the edge into the zero padding); they are cut off.

    Attributes:
        base: The native-stride network it was made from (weights shared, not copied).
        factor: ``base.stride // stride``.
        native_stride: ``base.stride``.
    """

    def __init__(
        self, graph_module: fx.GraphModule, *, base: ConvolutionalizedNet, factor: int
    ) -> None:
        super().__init__(
            graph_module,
            stride=base.stride // factor,
            window=base.window,
            global_context=base.global_context,
            source_model=base.source_model,
        )
        object.__setattr__(self, "base", base)  # not a submodule: its weights are already here
        self.factor = factor
        self.native_stride = base.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the class-score grid at the finer stride, in one pass.

        Args:
            x: ``(N, 3, H, W)`` normalized images with ``H, W >= window``.

        Returns:
            ``(N, K, rows, cols)`` logits, ``(rows, cols) = grid_shape((H, W), window, stride)``.
        """
        rows, cols = grid_shape((x.shape[2], x.shape[3]), self.window, self.stride)
        grid = self.graph_module(x)
        if grid.shape[2] < rows or grid.shape[3] < cols:  # checked on shapes when built
            raise RuntimeError(
                f"dilated network gave {tuple(grid.shape[2:])} cells, not {rows, cols}"
            )
        return grid[:, :, :rows, :cols]

    def grid_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Output ``(rows, cols)`` for an input size."""
        return grid_shape(input_size, self.window, self.stride)

    def extra_repr(self) -> str:
        """Shown by ``print(net)``."""
        return f"stride={self.stride} (native {self.native_stride}), window={self.window}"


class StitchedNet(ConvolutionalizedNet):
    """What ``dilate`` returns for a network it cannot dilate: shift-and-stitch, same interface.

    Attributes:
        base: The native-stride network whose shifted passes are stitched.
        factor: ``base.stride // stride``; ``forward`` runs ``factor**2`` passes.
        native_stride: ``base.stride``.
        batch_size: Shifted passes per forward pass.
        reason: Why the network could not be dilated.
    """

    def __init__(
        self, base: ConvolutionalizedNet, *, factor: int, reason: str, batch_size: int = 32
    ) -> None:
        super().__init__(
            base.graph_module,
            stride=base.stride // factor,
            window=base.window,
            global_context=base.global_context,
            source_model=base.source_model,
        )
        object.__setattr__(self, "base", base)
        self.factor = factor
        self.native_stride = base.stride
        self.batch_size = batch_size
        self.reason = reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the class-score grid from ``factor**2`` shifted passes.

        Args:
            x: ``(N, 3, H, W)`` normalized images with ``H, W >= window``.

        Returns:
            ``(N, K, rows, cols)`` logits, ``(rows, cols) = grid_shape((H, W), window, stride)``.
        """
        return stitched_grid(self.base, x, self.stride, batch_size=self.batch_size)

    def grid_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Output ``(rows, cols)`` for an input size."""
        return grid_shape(input_size, self.window, self.stride)

    def extra_repr(self) -> str:
        """Shown by ``print(net)``."""
        return f"stride={self.stride} by stitching {self.factor**2} passes, window={self.window}"


# Where dilate() keeps what it built, on the converted network itself: it lives as long as that
# network does, and is rebuilt for a new conversion.
_CACHE_ATTRIBUTE = "_finer_stride_networks"


def dilate(net: ConvolutionalizedNet, stride: int) -> ConvolutionalizedNet:
    """The network for a finer output stride, built once per ``(net, stride)`` and cached.

    The result is a ``DilatedNet`` (one pass) or, for a network with an operation the rewrite
    does not know, a ``StitchedNet`` (``factor**2`` shifted passes); a ``UserWarning`` says so
    once, when it is built. Either maps ``(N, 3, H, W)`` to ``(N, K, rows, cols)`` with
    ``(rows, cols) = grid_shape((H, W), net.window, stride)``, cell ``(i, j)`` being the window at
    ``(i*stride, j*stride)``. Neither the caller's model nor ``net`` is modified: the rewritten
    graph lives in a new ``GraphModule`` whose new operations read the shared weights.

    Args:
        net: A converted network (or a result of ``dilate``, whose ``base`` is used).
        stride: Output stride in input pixels; must divide the native stride.

    Returns:
        A network with ``.stride == stride`` and ``.window == net.window``: the native-stride
        network itself when ``stride`` is the native stride.

    Raises:
        GeometryError: If ``stride`` does not divide the native stride (the message lists the
            valid strides).
        TypeError: If ``net`` is not a converted network.
    """
    base = getattr(net, "base", net)
    if not isinstance(base, ConvolutionalizedNet):
        raise TypeError(
            f"dilate() takes a network from convolutionalize(), not {type(net).__name__}"
        )
    check_stride(stride, base.stride)
    factor = base.stride // stride
    if factor == 1:
        return base
    built: dict[int, ConvolutionalizedNet] = base.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
    if factor not in built:
        built[factor] = _build(base, factor)
    return built[factor]


def _build(base: ConvolutionalizedNet, factor: int) -> ConvolutionalizedNet:
    stride = base.stride // factor
    try:
        graph_module = _atrous_graph_module(base, stride)
    except _CannotDilate as reason:
        model = base.source_model if base.source_model is not None else base
        warnings.warn(
            f"cannot dilate {type(model).__name__} for stride {stride}: {reason}; computing the "
            f"grid by shift-and-stitch instead ({factor * factor} passes, slower, same cells)",
            stacklevel=3,
        )
        return StitchedNet(base, factor=factor, reason=str(reason))
    return DilatedNet(graph_module, base=base, factor=factor)


def _atrous_graph_module(base: ConvolutionalizedNet, stride: int) -> fx.GraphModule:
    """A new graph module computing ``base``'s grid at ``stride``; raises ``_CannotDilate``."""
    source = base.graph_module
    # GraphModule(root, graph) installs the submodules the graph calls (the same objects, so
    # no weight is copied) under new containers; the rewrite only adds new top-level names.
    graph_module = fx.GraphModule(source, copy.deepcopy(source.graph), type(source).__name__)
    try:
        rewriter = _Rewriter(graph_module, base.window, stride)
    except _CannotDilate:
        raise
    except Exception as error:  # a network the shape passes cannot run is left alone
        raise _CannotDilate(f"shape analysis failed ({type(error).__name__}: {error})") from error
    rewriter.run()
    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()
    _check_grid_sizes(graph_module, base.window, stride, base.stride // stride)
    return graph_module


def _check_grid_sizes(graph_module: fx.GraphModule, window: Pair, stride: int, factor: int) -> None:
    """Checks on shapes that the graph gives at least the cells the finer grid needs."""
    # the input lengths with the most and the fewest cells left over at the native stride
    sizes = [
        (window[0] + stride * factor, window[1] + stride * (2 * factor - 1)),
        (window[0] + stride * (2 * factor - 1), window[1] + stride * factor),
    ]
    try:
        meta = _meta_clone(graph_module)
        cells = [_ShapeInterpreter(meta).run(_meta_input(meta, size)).shape[2:] for size in sizes]
    except Exception as error:
        raise _CannotDilate(f"the dilated graph does not run ({type(error).__name__})") from error
    for size, got in zip(sizes, cells, strict=True):
        need = grid_shape(size, window, stride)
        if got[0] < need[0] or got[1] < need[1]:
            raise _CannotDilate(
                f"the dilated graph gives {tuple(got)} cells for {size}, not {need}"
            )
