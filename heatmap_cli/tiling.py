"""Huge images in bounded memory: exact tiled evaluation of a convolutionalized network.

A pathology slide or a satellite scene resized to 8192 x 8192 pixels needs gigabytes of
activations in one pass. The score grid is the same when computed tile by tile, provided that

* every tile starts at a multiple of the network's stride, so that the tile's cells are cells of
  the full grid (cell ``j`` of a tile starting at pixel ``T`` is cell ``T / stride + j``); for a
  finer-stride network (``heatmap_cli.dilation``: shift-and-stitch or "a trous", which record
  ``native_stride``) at a multiple of the native stride, the period of their computation;
* every tile is ``window + stride * k`` pixels long, like the full (snapped) input (congruent to
  it modulo the native stride for finer-stride networks), so that size-dependent padding
  (TensorFlow "same" padding, timm's ``Conv2dSame`` in the default model, whose leading pad
  depends on the length modulo the stride) pads every layer exactly as in the untiled pass;
* from each tile only the cells are kept whose whole *receptive field* (the input pixels they
  depend on, which for zero-padded networks reaches well beyond the window) lies inside the
  tile, or runs over a side of the tile that is also a side of the image, where the untiled
  pass sees the same zero padding;
* neighbouring tiles overlap by enough that every cell is kept from exactly one tile.

Then every kept cell is computed from the same numbers, through the same layers, as in the
untiled pass, and the stitched grid equals the untiled one up to float rounding.

The receptive field is computed from the network, not typed in: by propagating (jump, offset,
size) through the ``torch.fx`` graph from the kernels, strides, dilations and paddings of its
layers (exact, instant, any input size), or, for networks whose graph holds an operation that
analysis does not know, by an empirical probe: a NaN pixel in the input marks exactly the output
cells that depend on it, since NaN survives convolution, batch norm, ReLU and max pooling.

The decoded image stays uint8; each tile is cut from it and normalized on its own, so nothing of
image size is ever a float tensor. The one image-sized output is the grid itself, ``K x rows x
cols`` float32 (250 MB for 1000 classes over an 8192-pixel square at stride 32). Peak memory is
that of one tile's pass: :func:`estimate_activation_bytes` predicts it from a shape-only run and
:func:`choose_tile` picks the largest tile that fits a budget. The price is the overlap: a
padded network's field is far larger than its window (1043 pixels for the default model's 224),
so small tiles recompute much of their neighbours' pixels (:attr:`TilePlan.overhead`).
"""

from __future__ import annotations

import importlib
import math
import operator
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from heatmap_cli.errors import GeometryError
from heatmap_cli.geometry import grid_shape
from heatmap_cli.lean import lean_copy
from heatmap_cli.preprocess import normalize
from heatmap_cli.surgery import (
    _ELEMENTWISE_FUNCTIONS,
    _ELEMENTWISE_METHODS,
    _ELEMENTWISE_MODULES,
    LinearAsConv2d,
    PerPositionNorm,
    _dense_pool,
    _meta_clone,
    _unchanged,
    layer_norm_over_channels,
    linear_as_conv2d,
)

__all__ = [
    "CUDA_BUDGET_FRACTION",
    "DEFAULT_CPU_BUDGET",
    "MEMORY_SAFETY_FACTOR",
    "ReceptiveField",
    "Tile",
    "TilePlan",
    "choose_tile",
    "default_memory_budget",
    "display_size",
    "estimate_activation_bytes",
    "grid_bytes",
    "minimum_tile",
    "plan_tiles",
    "receptive_field",
    "tiled_score_grid",
]

DEFAULT_CPU_BUDGET = 4 * 2**30
"""Default activation memory budget on the CPU (bytes), capped at half the available RAM."""

CUDA_BUDGET_FRACTION = 0.7
"""Default budget on a CUDA device, as a fraction of its free memory."""

MEMORY_SAFETY_FACTOR = 1.3
"""Measured peak memory over :func:`estimate_activation_bytes`, rounded up (see the benchmark)."""

ReceptiveFieldMethod = Literal["auto", "analytic", "probe"]


# ---------------------------------------------------------------------------------------------
# Receptive field
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceptiveField:
    """The input pixels on which one cell of a network's score grid depends.

    Cell ``(i, j)`` depends on rows ``[i*stride + top, i*stride + top + height)`` and columns
    ``[j*stride + left, j*stride + left + width)`` of the input; positions outside the input are
    zero padding. Cell ``(i, j)``'s *window* starts at ``(i*stride, j*stride)``, so for zero-padded
    networks ``top`` and ``left`` are negative and the field is larger than the window.

    Attributes:
        stride: Spacing of the cells in input pixels (the network's ``.stride``).
        top: First row of cell ``(0, 0)``'s field, relative to its window (may be negative).
        left: First column of cell ``(0, 0)``'s field, relative to its window.
        height: Rows in the field.
        width: Columns in the field.
    """

    stride: int
    top: int
    left: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the field in input pixels."""
        return self.height, self.width

    def margins(self, window: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """How far the field reaches beyond the window on each side, in pixels (0 if not).

        Args:
            window: ``(h, w)`` window of a cell.

        Returns:
            ``((above, below), (left, right))``.
        """
        return (
            (max(0, -self.top), max(0, self.top + self.height - window[0])),
            (max(0, -self.left), max(0, self.left + self.width - window[1])),
        )

    def cells_dropped(self, window: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Cells an interior tile loses on each side because their field leaves the tile.

        Args:
            window: ``(h, w)`` window of a cell.

        Returns:
            ``((top, bottom), (left, right))`` counts of cells.
        """
        (above, below), (before, after) = self.margins(window)
        s = self.stride
        return ((-(-above // s), -(-below // s)), (-(-before // s), -(-after // s)))


@dataclass(frozen=True)
class _Span:
    """Field of position ``u`` along one axis: ``[u * jump + offset, ... + size)`` input pixels."""

    jump: int
    offset: int
    size: int

    def window_op(self, kernel: int, stride: int, dilation: int, pad_before: int) -> _Span:
        return _Span(
            self.jump * stride,
            self.offset - pad_before * self.jump,
            self.size + (kernel - 1) * dilation * self.jump,
        )

    def shifted(self, pad_before: int) -> _Span:
        return _Span(self.jump, self.offset - pad_before * self.jump, self.size)


@dataclass(frozen=True)
class _Field:
    """The receptive field of every position of a tensor: which dims are rows and columns."""

    dims: tuple[int, int]
    spans: tuple[_Span, _Span]


class _Global:
    """Marks a tensor that depends on every pixel of the image (global pooling)."""

    def __init__(self, where: str) -> None:
        self.where = where


class _Unsupported(Exception):
    """The analysis does not know an operation; the NaN probe can still measure the field."""


_Value = _Field | _Global | None


def receptive_field(
    net: nn.Module,
    input_size: tuple[int, int] | None = None,
    *,
    method: ReceptiveFieldMethod = "auto",
) -> ReceptiveField:
    """Measures which input pixels one cell of a network's score grid depends on.

    Args:
        net: A module ``(N, 3, H, W) -> (N, K, h, w)`` with ``.stride`` (cell spacing in pixels)
            and ``.window`` (``(h, w)`` window of a cell), e.g. a ``ConvolutionalizedNet``.
            It must be in eval mode (batch statistics make every cell depend on every pixel).
        input_size: ``(H, W)`` of the input the field is for, of the form ``window + stride*k``.
            Only needed for networks whose padding depends on the input size (TensorFlow "same"
            padding), where the field is the same for every size of that form (for finer-stride
            networks: every size congruent modulo the native stride). Default:
            ``window + 2 * native stride``.
        method: ``"analytic"`` propagates (jump, offset, size) through ``net.graph_module``;
            ``"probe"`` runs the network on images with one NaN pixel; ``"auto"`` uses the
            analysis when the graph holds only operations it knows, else the probe.

    Returns:
        The receptive field of one cell.

    Raises:
        GeometryError: If cells depend on the whole image (global pooling inside the body, e.g.
            squeeze-and-excitation, or batch norm in training mode): no tiling is exact then.
            Also if ``method="analytic"`` meets an operation it does not know.
    """
    stride, window = _net_geometry(net)
    input_size = _size_or_default(net, input_size)
    if method not in ("auto", "analytic", "probe"):
        raise GeometryError(f"unknown receptive field method {method!r}")
    if method != "probe":
        try:
            return _analytic_field(net, input_size, stride)
        except _Unsupported as reason:
            if method == "analytic":
                raise GeometryError(
                    f"cannot analyse the receptive field of {type(net).__name__}: {reason}"
                ) from None
    return _probe_field(net, stride, window, input_size)


def _size_or_default(net: nn.Module, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """``input_size`` as ints, or ``window + 2 * native stride`` (a size of every lattice)."""
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    stride, window = _net_geometry(net)
    lattice = stride * _period(net, stride)
    return window[0] + 2 * lattice, window[1] + 2 * lattice


def _net_geometry(net: nn.Module) -> tuple[int, tuple[int, int]]:
    """``(stride, (win_h, win_w))`` of a network that computes a score grid."""
    stride = getattr(net, "stride", None)
    window = getattr(net, "window", None)
    if not isinstance(stride, int) or stride <= 0 or window is None or len(window) != 2:
        raise GeometryError(
            f"{type(net).__name__} has no positive integer .stride and (h, w) .window; convert "
            "the classifier with convolutionalize() first"
        )
    return stride, (int(window[0]), int(window[1]))


# --- Analysis of the fx graph -----------------------------------------------------------------


def _analytic_field(net: nn.Module, input_size: tuple[int, int], stride: int) -> ReceptiveField:
    """Propagates the receptive field through ``net.graph_module``, on shapes only."""
    graph_module = getattr(net, "graph_module", None)
    if not isinstance(graph_module, fx.GraphModule):
        raise _Unsupported(f"{type(net).__name__} has no .graph_module to analyse")
    meta = _meta_clone(graph_module)
    try:
        ShapeProp(meta).propagate(torch.empty(1, 3, *input_size, device="meta"))
    except Exception as error:  # a graph that does not run on meta tensors cannot be analysed
        raise _Unsupported(f"shape propagation failed ({type(error).__name__})") from error
    result = _FieldAnalysis(meta).run()
    if isinstance(result, _Global):
        raise GeometryError(
            f"every cell of {type(net).__name__} depends on the whole image ({result.where}); "
            "tiles cannot reproduce the untiled grid exactly"
        )
    if not isinstance(result, _Field) or result.dims != (2, 3):
        raise _Unsupported("the output is not an (N, K, h, w) grid")
    rows, cols = result.spans
    if rows.jump != stride or cols.jump != stride:
        raise _Unsupported(f"the graph's output stride {rows.jump} differs from .stride {stride}")
    return ReceptiveField(stride, rows.offset, cols.offset, rows.size, cols.size)


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, (tuple, list)) and len(value) == 1:
        return int(value[0]), int(value[0])
    raise _Unsupported(f"unexpected size argument {value!r}")


def _arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _same_pad_before(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Leading padding of TensorFlow "same" padding (timm ``pad_same``) for one axis."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2


def _timm_classes(names: Sequence[str], module: str = "timm.layers") -> tuple[type[nn.Module], ...]:
    """The classes of these names in a timm module, where installed (none without timm)."""
    try:
        found = importlib.import_module(module)
    except ImportError:
        return ()
    return tuple(getattr(found, name) for name in names if hasattr(found, name))


def _is_atrous_op(module: nn.Module) -> bool:
    """``heatmap_cli.dilation.AtrousOp``, recognized by its interface (no import cycle)."""
    return all(
        hasattr(module, name) for name in ("span", "kernel", "new_stride", "atrous_dilation")
    )


def _is_atrous_pad(module: nn.Module) -> bool:
    """``heatmap_cli.dilation.AtrousPad``: a constant pad by ``pad * factor`` before the map."""
    return type(module).__name__ == "AtrousPad" and all(
        hasattr(module, name) for name in ("pad", "factor")
    )


class _FieldAnalysis:
    """Walks a shape-propagated graph and records every tensor's receptive field."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.gm = graph_module
        self.values: dict[fx.Node, _Value] = {}
        self.always_same = _timm_classes(["Conv2dSame", "MaxPool2dSame", "AvgPool2dSame"])
        self.flag_same = _timm_classes(["StdConv2dSame", "ScaledStdConv2dSame"])
        self.static_convs = _timm_classes(["StdConv2d", "ScaledStdConv2d"])
        self.conv_mlp = _timm_classes(["ConvMlp"], module="timm.models.vgg")
        self.placeholders = 0

    def run(self) -> _Value:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                return self.value(node.args[0])
            self.values[node] = self.visit(node)
        raise _Unsupported("the graph has no output")

    def value(self, arg: object) -> _Value:
        if isinstance(arg, fx.Node):
            return self.values[arg]
        if isinstance(arg, (tuple, list)):
            raise _Unsupported("the graph returns a tuple")
        return None

    def visit(self, node: fx.Node) -> _Value:
        if node.op == "placeholder":
            self.placeholders += 1
            if self.placeholders > 1:
                raise _Unsupported("the graph has more than one input")
            return _Field((2, 3), (_Span(1, 0, 1), _Span(1, 0, 1)))
        if node.op == "get_attr":
            return None
        inputs = [self.values[a] for a in node.all_input_nodes]
        if all(v is None for v in inputs):
            return None  # parameters, constants and shapes: not pixel values
        if not isinstance(node.meta.get("tensor_meta"), TensorMetadata):
            if node.op == "call_method" and node.target in ("size", "dim"):
                return None
            if node.op == "call_function" and node.target is getattr:
                return None
            splits = node.target in ("chunk", "split", torch.chunk, torch.split)
            if not splits:
                raise _Unsupported(f"{self.describe(node)} does not return one tensor")
        for v in inputs:
            if isinstance(v, _Global):
                return v
        if node.op == "call_module":
            return self.visit_module(node, self.gm.get_submodule(str(node.target)))
        if node.op == "call_function":
            return self.visit_function(node)
        return self.visit_method(node)

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"{type(self.gm.get_submodule(str(node.target))).__name__} '{node.target}'"
        return f"{getattr(node.target, '__name__', node.target)} at '{node.name}'"

    # -- helpers --

    def source(self, node: fx.Node) -> tuple[_Field, tuple[int, ...]]:
        """The field and shape of a node's first argument, which must depend on the image."""
        arg = node.args[0] if node.args else next(iter(node.kwargs.values()))
        if not isinstance(arg, fx.Node) or not isinstance(self.values.get(arg), _Field):
            raise _Unsupported(f"{self.describe(node)} has an unexpected first argument")
        field = self.values[arg]
        assert isinstance(field, _Field)
        return field, tuple(arg.meta["tensor_meta"].shape)

    def window_op(
        self,
        node: fx.Node,
        kernel: object,
        stride: object,
        dilation: object,
        padding: object,
        *,
        same: bool = False,
    ) -> _Field:
        """A convolution or pooling: kernel, stride, dilation and leading padding per axis."""
        field, shape = self.source(node)
        if field.dims != (2, 3) or len(shape) != 4:
            raise _Unsupported(f"{self.describe(node)} runs on a non-(N, C, H, W) tensor")
        kernels, strides, dilations = _pair(kernel), _pair(stride), _pair(dilation)
        if same:
            pads = tuple(
                _same_pad_before(shape[2 + a], kernels[a], strides[a], dilations[a]) for a in (0, 1)
            )
        elif padding == "same":
            pads = tuple(dilations[a] * (kernels[a] - 1) // 2 for a in (0, 1))
        elif padding == "valid":
            pads = (0, 0)
        else:
            pads = _pair(padding)
        spans = tuple(
            field.spans[a].window_op(kernels[a], strides[a], dilations[a], pads[a]) for a in (0, 1)
        )
        return _Field(field.dims, spans)  # type: ignore[arg-type]

    def merge(self, node: fx.Node) -> _Value:
        """A pointwise operation: the union of its inputs' fields, aligned by broadcasting."""
        out_shape = tuple(node.meta["tensor_meta"].shape)
        fields: list[_Field] = []
        for arg in node.all_input_nodes:
            value = self.values[arg]
            if value is None:
                continue
            assert isinstance(value, _Field)
            arg_shape = tuple(arg.meta["tensor_meta"].shape)
            if len(arg_shape) != len(out_shape):
                raise _Unsupported(f"{self.describe(node)} broadcasts across ranks")
            for dim in value.dims:
                if arg_shape[dim] == 1 and out_shape[dim] != 1:
                    return _Global(f"{self.describe(node)} spreads one value over the image")
            fields.append(value)
        dims = {f.dims for f in fields}
        if len(dims) != 1:
            raise _Unsupported(f"{self.describe(node)} combines differently laid out tensors")
        spans = []
        for axis in (0, 1):
            axis_spans = [f.spans[axis] for f in fields]
            if len({s.jump for s in axis_spans}) != 1:
                raise _Unsupported(f"{self.describe(node)} combines different strides")
            start = min(s.offset for s in axis_spans)
            end = max(s.offset + s.size for s in axis_spans)
            spans.append(_Span(axis_spans[0].jump, start, end - start))
        return _Field(fields[0].dims, (spans[0], spans[1]))

    def padded(self, node: fx.Node, pad: object) -> _Field:
        """``F.pad``-style padding ``(left, right, top, bottom, ...)`` of the last two dims."""
        field, shape = self.source(node)
        if not isinstance(pad, (tuple, list)) or len(pad) % 2:
            raise _Unsupported(f"{self.describe(node)} has an unexpected padding")
        pads = [int(p) for p in pad]
        before = {len(shape) - 1 - i: pads[2 * i] for i in range(len(pads) // 2)}
        spans = tuple(field.spans[a].shifted(before.get(field.dims[a], 0)) for a in (0, 1))
        return _Field(field.dims, spans)  # type: ignore[arg-type]

    def global_reduction(self, node: fx.Node, dims: object, keep_shape: bool) -> _Value:
        field, shape = self.source(node)
        if isinstance(dims, int):
            dims = (dims,)
        if dims is None:
            return _Global(f"{self.describe(node)} reduces over the whole tensor")
        reduced = {d % len(shape) for d in dims}  # type: ignore[union-attr]
        if reduced & set(field.dims):
            return _Global(f"global pooling {self.describe(node)}")
        if keep_shape:
            return field
        raise _Unsupported(f"{self.describe(node)} drops dimensions")

    def adaptive_pool(self, node: fx.Node) -> _Value:
        field, shape = self.source(node)
        out_shape = tuple(node.meta["tensor_meta"].shape)
        if out_shape[-2:] == shape[-2:]:
            return field
        return _Global(f"adaptive pooling {self.describe(node)}")

    def layer_norm(self, node: fx.Node, normalized_shape: object) -> _Field:
        field, shape = self.source(node)
        count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)  # type: ignore[arg-type]
        if set(range(len(shape) - count, len(shape))) & set(field.dims):
            raise _Unsupported(f"{self.describe(node)} normalizes over image positions")
        return field

    # -- node kinds --

    def visit_module(self, node: fx.Node, module: nn.Module) -> _Value:
        if _is_atrous_op(module):
            # heatmap_cli.dilation's convolutions and pools on denser maps; they say themselves
            # how much they pad (or crop) before a map of a given length.
            _, shape = self.source(node)
            pads = tuple(module.span(shape[2 + a], a).before for a in (0, 1))  # type: ignore[operator]
            return self.window_op(
                node, module.kernel, module.new_stride, module.atrous_dilation, pads
            )
        if _is_atrous_pad(module):
            field, _ = self.source(node)
            left, _, top, _ = module.pad  # type: ignore[misc]
            before = (top * module.factor[0], left * module.factor[1])  # type: ignore[index]
            spans = tuple(field.spans[a].shifted(before[a]) for a in (0, 1))
            return _Field(field.dims, spans)  # type: ignore[arg-type]
        if isinstance(module, nn.Conv2d):
            if module.padding_mode == "circular":
                raise _Unsupported(f"{self.describe(node)} pads circularly")
            if isinstance(module, self.always_same) or (
                isinstance(module, self.flag_same) and getattr(module, "same_pad", False)
            ):
                return self.window_op(
                    node, module.kernel_size, module.stride, module.dilation, 0, same=True
                )
            known = type(module).forward is nn.Conv2d.forward
            if not (known or isinstance(module, self.static_convs + self.flag_same)):
                raise _Unsupported(f"{self.describe(node)} overrides Conv2d.forward")
            return self.window_op(
                node, module.kernel_size, module.stride, module.dilation, module.padding
            )
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            dilation = getattr(module, "dilation", 1)
            if isinstance(module, self.always_same):
                return self.window_op(
                    node, module.kernel_size, module.stride, dilation, 0, same=True
                )
            if type(module).forward not in (nn.MaxPool2d.forward, nn.AvgPool2d.forward):
                raise _Unsupported(f"{self.describe(node)} overrides forward")
            stride = module.stride if module.stride is not None else module.kernel_size
            return self.window_op(node, module.kernel_size, stride, dilation, module.padding)
        if isinstance(module, LinearAsConv2d):
            return self.window_op(node, module.volume[1:], 1, 1, 0)
        if isinstance(module, self.conv_mlp):
            # timm's VGG head: a conv (7x7 at the training size), then a 1x1 conv.
            first, second = module.fc1, module.fc2
            if not (isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)):
                raise _Unsupported(f"{self.describe(node)} has unexpected layers")
            if tuple(second.kernel_size) != (1, 1) or tuple(second.stride) != (1, 1):
                raise _Unsupported(f"{self.describe(node)} has a spatial second layer")
            return self.window_op(
                node, first.kernel_size, first.stride, first.dilation, first.padding
            )
        if isinstance(module, nn.Linear):
            return self.layer_norm(node, 1)  # acts on the last dim, like a LayerNorm over it
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training or module.running_mean is None:
                return _Global(f"{self.describe(node)} normalizes with batch statistics")
            return self.merge(node)
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return self.adaptive_pool(node)
        if isinstance(module, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
            return _Global(f"{self.describe(node)} normalizes over the image")
        if isinstance(module, nn.LayerNorm):
            return self.layer_norm(node, module.normalized_shape)
        if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d)):
            return self.padded(node, module.padding)
        if isinstance(module, nn.ReplicationPad2d):
            return self.padded(node, module.padding)
        if isinstance(module, (*_ELEMENTWISE_MODULES, PerPositionNorm, nn.LocalResponseNorm)):
            return self.merge(node)
        raise _Unsupported(f"unknown module {self.describe(node)}")

    def visit_function(self, node: fx.Node) -> _Value:
        target = node.target
        if target is F.conv2d:
            weight = _arg(node, 1, "weight")
            if not isinstance(weight, fx.Node):
                raise _Unsupported(f"{self.describe(node)} has no weight tensor")
            kernel = tuple(weight.meta["tensor_meta"].shape[-2:])
            return self.window_op(
                node,
                kernel,
                _arg(node, 3, "stride", 1),
                _arg(node, 5, "dilation", 1),
                _arg(node, 4, "padding", 0),
            )
        if target in (F.max_pool2d, F.avg_pool2d):
            kernel = _arg(node, 1, "kernel_size")
            stride = _arg(node, 2, "stride") or kernel
            dilation = _arg(node, 4, "dilation", 1) if target is F.max_pool2d else 1
            return self.window_op(node, kernel, stride, dilation, _arg(node, 3, "padding", 0))
        if target is _dense_pool:
            return self.window_op(node, _arg(node, 1, "kernel"), 1, 1, 0)
        if target is linear_as_conv2d:
            volume = _arg(node, 3, "volume")
            return self.window_op(node, tuple(volume)[1:], 1, 1, 0)  # type: ignore[arg-type]
        if target is F.pad:
            if _arg(node, 2, "mode", "constant") == "circular":
                raise _Unsupported(f"{self.describe(node)} pads circularly")
            return self.padded(node, _arg(node, 1, "pad"))
        if target is F.batch_norm:
            if _arg(node, 5, "training", False):
                return _Global(f"{self.describe(node)} normalizes with batch statistics")
            return self.merge(node)
        if target is F.layer_norm:
            return self.layer_norm(node, _arg(node, 1, "normalized_shape"))
        if target is F.linear:
            return self.layer_norm(node, 1)
        if target in (torch.flatten, torch.reshape):
            return self.reshaped(node)
        if target is torch.transpose:
            return self.transposed(node, _arg(node, 1, "dim0"), _arg(node, 2, "dim1"))
        if target in (torch.chunk, torch.split):
            return self.split(node, _arg(node, 2, "dim", 0))
        if target is operator.getitem:
            return self.item(node)
        if target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            return self.adaptive_pool(node)
        if target in (torch.mean, torch.amax, torch.sum):
            return self.global_reduction(node, _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim")))
        if target is torch.cat:
            tensors = _arg(node, 0, "tensors")
            dim = int(_arg(node, 1, "dim", 0))  # type: ignore[arg-type]
            first = next(self.values[t] for t in tensors if isinstance(t, fx.Node))  # type: ignore[union-attr]
            rank = len(node.meta["tensor_meta"].shape)
            if isinstance(first, _Field) and dim % rank in first.dims:
                raise _Unsupported(f"{self.describe(node)} concatenates along image positions")
            return self.merge(node)
        if target is torch.permute:
            return self.permuted(node, _arg(node, 1, "dims"))
        if target in (_unchanged, layer_norm_over_channels) or target in _ELEMENTWISE_FUNCTIONS:
            return self.merge(node)
        if getattr(target, "__name__", "") == "stochastic_depth" and not _arg(
            node, 2, "training", True
        ):
            return self.merge(node)  # torchvision's residual dropout: the identity in eval mode
        raise _Unsupported(f"unknown function {self.describe(node)}")

    def visit_method(self, node: fx.Node) -> _Value:
        target = node.target
        if target == "permute":
            dims = node.args[1:]
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = tuple(dims[0])
            return self.permuted(node, dims)
        if target in ("mean", "amax", "sum"):
            return self.global_reduction(node, _arg(node, 1, "dim"), bool(_arg(node, 2, "keepdim")))
        if target in ("view", "reshape", "flatten", "unflatten"):
            return self.reshaped(node)
        if target == "transpose":
            return self.transposed(node, _arg(node, 1, "dim0"), _arg(node, 2, "dim1"))
        if target in ("chunk", "split"):
            return self.split(node, _arg(node, 2, "dim", 0))
        if target in _ELEMENTWISE_METHODS:
            return self.merge(node)
        raise _Unsupported(f"unknown method {self.describe(node)}")

    def reshaped(self, node: fx.Node) -> _Field:
        """A reshape that only regroups the dims before the image's rows and columns."""
        field, shape = self.source(node)
        out_shape = tuple(node.meta["tensor_meta"].shape)
        rank = len(shape)
        if field.dims != (rank - 2, rank - 1) or len(out_shape) < 2 or out_shape[-2:] != shape[-2:]:
            raise _Unsupported(f"{self.describe(node)} reshapes the image's rows or columns")
        return _Field((len(out_shape) - 2, len(out_shape) - 1), field.spans)

    def transposed(self, node: fx.Node, first: object, second: object) -> _Field:
        _, shape = self.source(node)
        order = list(range(len(shape)))
        a, b = int(first) % len(shape), int(second) % len(shape)  # type: ignore[call-overload]
        order[a], order[b] = order[b], order[a]
        return self.permuted(node, order)

    def split(self, node: fx.Node, dim: object) -> _Field:
        """``chunk``/``split`` into a tuple along a dim that is not the rows or columns."""
        field, shape = self.source(node)
        if int(dim) % len(shape) in field.dims:  # type: ignore[call-overload]
            raise _Unsupported(f"{self.describe(node)} splits the image")
        return field

    def item(self, node: fx.Node) -> _Field:
        """One element of a ``chunk``/``split`` result (slicing a tensor is not supported)."""
        source = node.args[0]
        if not isinstance(source, fx.Node) or isinstance(
            source.meta.get("tensor_meta"), TensorMetadata
        ):
            raise _Unsupported(f"{self.describe(node)} slices a tensor")
        field = self.values[source]
        assert isinstance(field, _Field)
        return field

    def permuted(self, node: fx.Node, dims: object) -> _Field:
        field, _ = self.source(node)
        order = [int(d) for d in dims]  # type: ignore[union-attr]
        rank = len(order)
        order = [d % rank for d in order]
        new_dims = (order.index(field.dims[0]), order.index(field.dims[1]))
        return _Field(new_dims, field.spans)


# --- Empirical probe ---------------------------------------------------------------------------


def _net_device_dtype(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    for tensor in net.parameters():
        return tensor.device, tensor.dtype
    for tensor in net.buffers():
        return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _probe_field(
    net: nn.Module,
    stride: int,
    window: tuple[int, int],
    input_size: tuple[int, int],
    *,
    max_length: int = 16384,
) -> ReceptiveField:
    """Measures the field by running the network on images with one NaN pixel each.

    Along each axis, a batch of ``stride`` thin images (one window across) carries the NaN at
    ``stride`` consecutive positions ``p``; cell ``j`` turns NaN iff ``j*stride + offset <= p <
    j*stride + offset + size``, so the first and last cells reached over all phases pin ``offset``
    and ``size`` down to the pixel. The image doubles until the NaN's reach stays clear of its
    ends by more than the field (near an edge, missing neighbours could hide a dependence).
    """
    rows, cols = (
        _probe_axis(net, axis, stride, window, input_size[axis], max_length) for axis in (0, 1)
    )
    return ReceptiveField(stride, rows.offset, cols.offset, rows.size, cols.size)


def _probe_axis(
    net: nn.Module,
    axis: int,
    stride: int,
    window: tuple[int, int],
    like: int,
    max_length: int,
) -> _Span:
    device, dtype = _net_device_dtype(net)
    lattice = stride * _period(net, stride)
    remainder = (like - window[axis]) % lattice  # lengths congruent to the input's: same pads
    generator = torch.Generator().manual_seed(0)
    across = window[1 - axis]
    steps = 4 * -(-window[axis] // lattice)  # first guess: a field twice the window
    while True:
        length = window[axis] + remainder + lattice * steps
        base = lattice * (steps // 2)
        shape = (stride, 3, length, across) if axis == 0 else (stride, 3, across, length)
        images = torch.randn(shape, generator=generator)
        for phase in range(stride):
            pixel = (base + phase, across // 2) if axis == 0 else (across // 2, base + phase)
            images[phase, :, pixel[0], pixel[1]] = float("nan")
        with torch.inference_mode():
            hits = torch.cat(
                [
                    torch.isnan(net(chunk.to(device=device, dtype=dtype)))
                    .any(dim=(1, 3) if axis == 0 else (1, 2))
                    .cpu()
                    for chunk in images.split(4)
                ]
            )  # (phases, cells along the axis)
        if not hits.any(dim=1).all():
            raise GeometryError(
                f"the NaN probe reached no cell of {type(net).__name__}: an operation in it "
                "swallows NaN, so its receptive field cannot be measured"
            )
        cells = torch.arange(hits.shape[1])
        first = torch.where(hits, cells, hits.shape[1]).amin(dim=1)
        last = torch.where(hits, cells, -1).amax(dim=1)
        pixel = base + torch.arange(stride)
        offset = int((pixel - stride * last).min())
        end = int((pixel - stride * first).max()) + 1
        extent = end - offset
        clear = bool((first > 0).all() and (last < hits.shape[1] - 1).all())
        if clear and base >= extent + stride and length - base >= extent + 2 * stride:
            return _Span(stride, offset, extent)
        if length >= max_length:
            raise GeometryError(
                f"every cell of {type(net).__name__} depends on more than {max_length // 2} "
                "pixels (global pooling inside the network?); tiles cannot reproduce the "
                "untiled grid exactly"
            )
        steps *= 2


# ---------------------------------------------------------------------------------------------
# Planning tiles
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tile:
    """One tile: the pixels fed to the network, and which of its cells go where.

    Attributes:
        top: First row of the tile in the (snapped) input image.
        left: First column of the tile.
        height: Rows of the tile, of the form ``window + stride * k``.
        width: Columns of the tile.
        rows: Rows of the tile's own grid that are kept.
        cols: Columns of the tile's own grid that are kept.
        out_rows: Rows of the full grid they fill.
        out_cols: Columns of the full grid they fill.
    """

    top: int
    left: int
    height: int
    width: int
    rows: slice
    cols: slice
    out_rows: slice
    out_cols: slice


@dataclass(frozen=True)
class TilePlan:
    """How a snapped input image is cut into tiles.

    Attributes:
        input_size: ``(H, W)`` of the input the tiles cover, ``window + stride * k`` each.
        grid_size: ``(rows, cols)`` of the full score grid.
        tiles: The tiles, row-major; their kept cells fill the grid exactly once.
        field: The receptive field the overlap was derived from (None for a single tile).
    """

    input_size: tuple[int, int]
    grid_size: tuple[int, int]
    tiles: tuple[Tile, ...]
    field: ReceptiveField | None

    @property
    def tile_size(self) -> tuple[int, int]:
        """``(h, w)`` of the largest tile, in pixels."""
        return max(t.height for t in self.tiles), max(t.width for t in self.tiles)

    @property
    def overhead(self) -> float:
        """Pixels fed to the network over pixels in the image (1.0: no overlap)."""
        area = sum(t.height * t.width for t in self.tiles)
        return area / (self.input_size[0] * self.input_size[1])


@dataclass(frozen=True)
class _Segment:
    """One tile along one axis: pixels ``[start, start + length)``, cells kept."""

    start: int
    length: int
    keep_from: int
    keep: int
    out_start: int


@dataclass(frozen=True)
class _AxisRule:
    """What one axis of every tile must respect, in cells of the grid.

    Attributes:
        cells: Cells of the full grid along the axis.
        window: Window side in pixels.
        stride: Cell spacing in pixels.
        period: Tile origins are multiples of ``period`` cells and tile spans are congruent to
            ``cells`` modulo it (1 for a network whose computation repeats every cell).
        before: Cells a tile that does not start at the image's edge loses at its start.
        after: Cells a tile that does not end at the image's edge loses at its end.
    """

    cells: int
    window: int
    stride: int
    period: int
    before: int
    after: int

    @property
    def minimum_span(self) -> int:
        """Fewest cells per tile that keep one cell whatever rounding to the period costs."""
        return self.before + self.after + 2 * self.period - 1

    def segments(self, span: int) -> list[_Segment] | None:
        """Greedy tiles of at most ``span`` cells, left to right; None if one keeps nothing.

        Every tile but the last spans exactly ``span`` cells (congruent to ``cells`` modulo the
        period); the last one runs to the end of the image.
        """
        segments = []
        kept = 0
        while kept < self.cells:
            origin = 0 if kept == 0 else max(0, (kept - self.before) // self.period * self.period)
            if origin + span >= self.cells:
                length = self.window + self.stride * (self.cells - 1 - origin)
                segments.append(
                    _Segment(self.stride * origin, length, kept - origin, self.cells - kept, kept)
                )
                return segments
            last = origin + span - 1 - self.after
            if last < kept:
                return None
            length = self.window + self.stride * (span - 1)
            segments.append(
                _Segment(self.stride * origin, length, kept - origin, last - kept + 1, kept)
            )
            kept = last + 1
        return segments


def _plan_axis(rule: _AxisRule, max_length: int) -> list[_Segment]:
    """Cuts one axis into as few tiles as ``max_length`` allows, each as small as that count lets.

    The greedy cut with the largest allowed span gives the fewest tiles; the smallest span that
    still gives that many is then used, which evens the tiles out and lowers the peak memory.
    """
    if rule.window + rule.stride * (rule.cells - 1) <= max_length:
        return [_Segment(0, rule.window + rule.stride * (rule.cells - 1), 0, rule.cells, 0)]
    largest = (max_length - rule.window) // rule.stride + 1
    largest -= (largest - rule.cells) % rule.period  # spans congruent to the image's
    fewest = rule.segments(largest)
    assert fewest is not None, "tile below the minimum; checked by the caller"
    low, high = 0, (largest - rule.minimum_span) // rule.period  # spans largest - period * k
    while low < high:  # find the largest k (smallest span) that keeps the count
        middle = (low + high + 1) // 2
        candidate = rule.segments(largest - rule.period * middle)
        if candidate is not None and len(candidate) == len(fewest):
            low = middle
        else:
            high = middle - 1
    best = rule.segments(largest - rule.period * low)
    assert best is not None
    return best


def _period(net: nn.Module, stride: int) -> int:
    """Cells after which the network's computation repeats: ``native_stride / stride``.

    A finer-stride network made by shift-and-stitch or "a trous" (``heatmap_cli.dilation``,
    which records ``native_stride``) lays out its passes or holes over the native stride; tiles
    must start on that lattice and have lengths congruent to the image's modulo it.
    """
    native = getattr(net, "native_stride", stride)
    if not isinstance(native, int) or native <= 0 or native % stride:
        return 1
    return native // stride


def _axis_rules(
    net: nn.Module, input_size: tuple[int, int], field: ReceptiveField
) -> tuple[_AxisRule, _AxisRule]:
    stride, window = _net_geometry(net)
    cells = grid_shape(input_size, window, stride)
    period = _period(net, stride)
    dropped = field.cells_dropped(window)
    # A shift-and-stitch pass starts up to (period - 1) cells inside a tile and is cut as far
    # before its end: its own edges move into the tile, so the margins grow by that much.
    extra = period - 1
    return (
        _AxisRule(
            cells[0], window[0], stride, period, dropped[0][0] + extra, dropped[0][1] + extra
        ),
        _AxisRule(
            cells[1], window[1], stride, period, dropped[1][0] + extra, dropped[1][1] + extra
        ),
    )


def minimum_tile(net: nn.Module, input_size: tuple[int, int] | None = None) -> int:
    """The smallest ``tile`` (pixels per side) that :func:`plan_tiles` accepts for a network.

    An interior tile must keep at least one cell after dropping those whose receptive field
    leaves it: ``window + stride * (dropped before + dropped after)`` per axis (plus rounding to
    the native lattice for finer-stride networks).

    Args:
        net: The converted network (``.stride``, ``.window``).
        input_size: ``(H, W)`` of the input, ``window + stride * k`` (see ``receptive_field``).

    Returns:
        The minimum tile side in pixels.
    """
    input_size = _size_or_default(net, input_size)
    field = receptive_field(net, input_size)
    return _minimum_tile(_axis_rules(net, input_size, field))


def _minimum_tile(rules: tuple[_AxisRule, _AxisRule]) -> int:
    return max(rule.window + rule.stride * (rule.minimum_span - 1) for rule in rules)


def plan_tiles(
    net: nn.Module,
    input_size: tuple[int, int],
    tile: int,
    *,
    field: ReceptiveField | None = None,
) -> TilePlan:
    """Cuts an input of ``input_size`` into tiles of at most ``tile`` pixels per side.

    Args:
        net: The converted network (``.stride``, ``.window``; ``.native_stride`` for finer-stride
            networks, whose tiles start on the native lattice).
        input_size: ``(H, W)`` of the input, each side ``window + stride * k``.
        tile: Largest tile side in pixels.
        field: The network's receptive field, if already known (else measured when needed).

    Returns:
        The plan; a single tile when the image fits in one.

    Raises:
        GeometryError: If ``input_size`` is not of the form ``window + stride * k``, if ``tile``
            is smaller than :func:`minimum_tile` (the message says the minimum), or if the
            network's cells depend on the whole image.
    """
    stride, window = _net_geometry(net)
    height, width = int(input_size[0]), int(input_size[1])
    rows, cols = grid_shape((height, width), window, stride)
    if (height - window[0]) % stride or (width - window[1]) % stride:
        raise GeometryError(
            f"input {width}x{height} is not of the form window + {stride} * k; crop it to "
            f"{window[1] + stride * (cols - 1)}x{window[0] + stride * (rows - 1)} first"
        )
    if tile >= height and tile >= width:
        whole = Tile(0, 0, height, width, *(slice(0, n) for n in (rows, cols, rows, cols)))
        return TilePlan((height, width), (rows, cols), (whole,), field)
    if field is None:
        field = receptive_field(net, (height, width))
    rules = _axis_rules(net, (height, width), field)
    smallest = _minimum_tile(rules)
    if tile < smallest:
        (above, below), (before, after) = field.margins(window)
        raise GeometryError(
            f"tile {tile} is too small: the minimum tile for this network is {smallest} pixels "
            f"(window {window[1]}x{window[0]}, each cell's receptive field {field.width}x"
            f"{field.height} reaches {max(above, before)} pixels before and {max(below, after)} "
            "after its window, and every tile must keep at least one cell)"
        )
    row_segments = _plan_axis(rules[0], tile)
    col_segments = _plan_axis(rules[1], tile)
    tiles = tuple(
        Tile(
            r.start,
            c.start,
            r.length,
            c.length,
            slice(r.keep_from, r.keep_from + r.keep),
            slice(c.keep_from, c.keep_from + c.keep),
            slice(r.out_start, r.out_start + r.keep),
            slice(c.out_start, c.out_start + c.keep),
        )
        for r in row_segments
        for c in col_segments
    )
    return TilePlan((height, width), (rows, cols), tiles, field)


# ---------------------------------------------------------------------------------------------
# Tiled evaluation
# ---------------------------------------------------------------------------------------------


def tiled_score_grid(
    net: nn.Module,
    pixels: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    tile: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool | None = None,
    field: ReceptiveField | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """The score grid of a huge image, computed tile by tile, equal to the untiled grid.

    Args:
        net: The converted network in eval mode (``.stride``, ``.window``), e.g. from
            ``convolutionalize``; on ``device``.
        pixels: uint8 ``(H, W, 3)`` RGB image resized for the grid (``resize_for_grid``). Sizes
            of the form ``window + stride * k`` are covered exactly; otherwise the bottom/right
            pixels no whole window covers are ignored, as in ``score_grid``.
        mean: Per-channel mean of the model, in the 0..1 range.
        std: Per-channel standard deviation of the model, in the 0..1 range.
        tile: Largest tile side in pixels (see :func:`choose_tile`); at least
            :func:`minimum_tile`. A tile at least as large as the image means one pass.
        device: Where to run; default: the device of the network's parameters.
        dtype: Floating dtype of the network input.
        channels_last: Run tiles in ``torch.channels_last`` memory format. Default: on the CPU,
            where oneDNN otherwise makes blocked copies of NCHW activations (measured with the
            default model: a third less peak memory and 1.5x faster); the values differ from an
            NCHW pass by float rounding only.
        field: The network's receptive field from :func:`receptive_field`, to skip measuring
            it again (it depends on the network only, and for TF "same" padding on sizes of the
            form ``window + stride * k`` all alike).
        progress: Called as ``progress(done, total)`` after each tile.

    Returns:
        ``(1, K, rows, cols)`` logits on ``device``; cell ``(i, j)`` is the window whose top-left
        corner is ``(i * stride, j * stride)`` in ``pixels``.

    Raises:
        GeometryError: For pixels that are not uint8 ``(H, W, 3)``, an image smaller than the
            window, a tile below the minimum, or a network whose cells see the whole image.
    """
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise GeometryError("pixels must be a uint8 numpy array of shape (H, W, 3)")
    if pixels.shape[2] != 3:
        raise GeometryError("pixels must be a uint8 numpy array of shape (H, W, 3)")
    stride, window = _net_geometry(net)
    rows, cols = grid_shape((pixels.shape[0], pixels.shape[1]), window, stride)
    covered = (window[0] + stride * (rows - 1), window[1] + stride * (cols - 1))
    plan = plan_tiles(net, covered, tile, field=field)
    device = torch.device(device) if device is not None else _net_device_dtype(net)[0]
    if channels_last is None:
        channels_last = device.type == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # A copy with batch norm folded into the convolutions and no padded copies for TF "same"
    # padding (heatmap_cli.lean): the same numbers, and for the default model at 3456-pixel tiles
    # 1.1 GiB less peak memory (two fewer 1 GiB maps) and a sixth less time.
    lean = lean_copy(net)
    grid: torch.Tensor | None = None
    with torch.inference_mode():
        for index, t in enumerate(plan.tiles):
            region = pixels[t.top : t.top + t.height, t.left : t.left + t.width]
            x = normalize(region, mean, std, device=device, dtype=dtype)
            x = x.contiguous(memory_format=memory_format)
            if lean is not None:
                holder = [x]
                del x  # the lean graph drops the tile input once its first layer consumed it
                out = lean(holder)
            else:
                out = net(x)
                del x
            expected = grid_shape((t.height, t.width), window, stride)
            if tuple(out.shape[2:]) != expected:
                raise GeometryError(
                    f"a {t.width}x{t.height} tile gave a {tuple(out.shape[2:])} grid, expected "
                    f"{expected}: the network's .stride or .window does not match its output"
                )
            if grid is None:
                grid = torch.empty(
                    (1, out.shape[1], rows, cols), dtype=out.dtype, device=out.device
                )
            grid[:, :, t.out_rows, t.out_cols] = out[:, :, t.rows, t.cols]
            del out  # free this tile's grid before the next tile's activations
            if progress is not None:
                progress(index + 1, len(plan.tiles))
    assert grid is not None
    return grid


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensors alive at once while a network runs on meta tensors.

    Every operator's fresh outputs (not views, not in-place results) are counted until the
    Python object holding them dies, which on meta tensors happens exactly when it would for
    real ones; the peak of the sum is the peak of tensor memory, less the operators' internal
    scratch buffers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: no new memory
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def estimate_activation_bytes(
    net: nn.Module,
    input_size: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Peak bytes of tensors one forward pass holds at once, from a shape-only run.

    The network runs on storage-less meta tensors while every operator's outputs are counted
    from creation until they are freed; the input is counted throughout (the caller holds it).
    Weights, the Python/torch runtime and operators' internal scratch buffers are not included:
    multiply by :data:`MEMORY_SAFETY_FACTOR` for a budget (measured on the CPU with the default
    model; see ``benchmarks/huge_images.py``).

    Args:
        net: Any module ``(N, 3, H, W) -> (N, K, h, w)`` that runs on meta tensors.
        input_size: ``(H, W)`` of the input.
        dtype: Floating dtype of the input and activations.

    Returns:
        Estimated peak activation bytes for a batch of one.
    """
    return _MetaRun(net, dtype).peak(input_size)


class _MetaRun:
    """A storage-less copy of a network for repeated shape-only passes.

    One pass of the default model takes about a second, most of it in batch norm's meta kernels.
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        self.meta = _meta_clone(net).to(dtype)
        self.dtype = dtype
        self.grid_shape: tuple[int, ...] = ()

    def peak(self, input_size: tuple[int, int]) -> int:
        """Peak live tensor bytes of a pass, input included; records the output's shape."""
        tracker = _LiveTensorBytes()
        x = torch.empty(1, 3, *input_size, device="meta", dtype=self.dtype)
        with torch.inference_mode(), tracker:
            out = self.meta(x)
            self.grid_shape = tuple(out.shape)
            del out
        return int(tracker.peak + x.numel() * x.element_size())


def grid_bytes(net: nn.Module, input_size: tuple[int, int], dtype: torch.dtype) -> int:
    """Bytes of the full ``(1, K, rows, cols)`` score grid for an input size (shape-only)."""
    stride, window = _net_geometry(net)
    rows, cols = grid_shape(input_size, window, stride)
    return _classes(net, dtype) * rows * cols * _element_size(dtype)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# Per network and dtype: (classes K, activation bytes per input pixel at a modest size), for a
# quick answer to "does this image need tiling at all?" without a shape pass per image.
_PER_PIXEL: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, tuple[int, float]]] = (
    weakref.WeakKeyDictionary()
)


def _per_pixel(net: nn.Module, dtype: torch.dtype) -> tuple[int, float]:
    cached = _PER_PIXEL.setdefault(net, {})
    if dtype not in cached:
        stride, window = _net_geometry(net)
        lattice = stride * _period(net, stride)
        size = (window[0] + 8 * lattice, window[1] + 8 * lattice)
        run = _MetaRun(net, dtype)
        peak = run.peak(size)
        cached[dtype] = (int(run.grid_shape[1]), peak / (size[0] * size[1]))
    return cached[dtype]


def _classes(net: nn.Module, dtype: torch.dtype) -> int:
    return _per_pixel(net, dtype)[0]


def default_memory_budget(device: torch.device | str | None = None) -> int:
    """A sensible activation memory budget for a device, in bytes.

    Args:
        device: ``"cpu"`` (default) or a CUDA device.

    Returns:
        On CUDA, ``CUDA_BUDGET_FRACTION`` of the device's free memory; on the CPU,
        ``DEFAULT_CPU_BUDGET`` (4 GiB) or half the available RAM if that is less.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    budget = DEFAULT_CPU_BUDGET
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    budget = min(budget, int(line.split()[1]) * 1024 // 2)
                    break
    except OSError:
        pass  # not Linux: keep the fixed default
    return budget


def choose_tile(
    net: nn.Module,
    input_size: tuple[int, int],
    memory_budget_bytes: int,
    *,
    dtype: torch.dtype = torch.float32,
    safety_factor: float = MEMORY_SAFETY_FACTOR,
) -> int | None:
    """The largest tile whose pass fits a memory budget, or None if the whole image fits.

    Images far below the budget are answered from a per-network bytes-per-pixel figure (one
    shape pass per network, cached); others take a few shape passes of about a second each for
    the default model: the whole image, the smallest tile, and two or three around the size that
    interpolating between those two predicts.

    Args:
        net: The converted network (``.stride``, ``.window``).
        input_size: ``(H, W)`` of the snapped input.
        memory_budget_bytes: Bytes the activations of one pass and the full output grid may
            take together. The process also holds the runtime (about 0.8 GiB for torch, timm
            and the default model) and the decoded uint8 image.
        dtype: Floating dtype of the activations.
        safety_factor: Multiplies :func:`estimate_activation_bytes`, for the operators' scratch
            memory that the estimate does not see (the default is measured for tiles in
            channels-last layout on the CPU, :func:`tiled_score_grid`'s default there; NCHW on
            the CPU needs about 1.45).

    Returns:
        None if the untiled pass fits; else a tile side, at least :func:`minimum_tile`, to pass
        to :func:`tiled_score_grid`.

    Raises:
        GeometryError: If even the smallest tile does not fit the budget (the message says how
            much it needs), or if the network cannot be tiled exactly.
    """
    stride, _ = _net_geometry(net)
    height, width = int(input_size[0]), int(input_size[1])
    available = memory_budget_bytes - grid_bytes(net, (height, width), dtype)
    per_pixel = _per_pixel(net, dtype)[1]
    if per_pixel * height * width * safety_factor * 2 <= available:
        return None  # far below the budget (the per-pixel figure over-counts for larger inputs)
    run = _MetaRun(net, dtype)

    def area(side: int) -> int:
        return min(side, height) * min(side, width)

    def needed(side: int) -> int:
        return int(run.peak((min(side, height), min(side, width))) * safety_factor)

    largest = max(height, width)
    need_full = needed(largest)
    if need_full <= available:
        return None
    smallest = minimum_tile(net, (height, width))
    need_min = needed(smallest)
    if need_min > available:
        raise GeometryError(
            f"a memory budget of {_gib(memory_budget_bytes)} is too small for a "
            f"{width}x{height} input: even the smallest tile ({smallest} pixels) needs about "
            f"{_gib(need_min + memory_budget_bytes - available)}"
        )
    # Activations grow with the tile's area: interpolate, then check the neighbourhood.
    slope = (need_full - need_min) / max(1, area(largest) - area(smallest))
    steps = (largest - smallest) // stride
    low, high = 0, steps  # largest k with a predicted fit, by bisection on the prediction
    while low < high:
        middle = (low + high + 1) // 2
        side = smallest + stride * middle
        if need_min + slope * (area(side) - area(smallest)) <= available:
            low = middle
        else:
            high = middle - 1
    side = smallest + stride * low
    while side > smallest and needed(side) > available:
        side -= stride
    while side + stride < largest and needed(side + stride) <= available:
        side += stride
    return side


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def display_size(original_size: tuple[int, int], max_side: int = 4096) -> tuple[int, int]:
    """Size to render an overlay at: the original, scaled down to at most ``max_side``.

    Args:
        original_size: ``(H, W)`` of the original image.
        max_side: Longest side of the result in pixels.

    Returns:
        ``(H, W)`` with the aspect ratio kept (to rounding); never larger than the original.
    """
    height, width = original_size
    if max_side <= 0:
        raise GeometryError(f"max_side must be positive, got {max_side}")
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
