"""The receptive field of a converted network, read from its ``torch.fx`` graph.

Every tensor's field is propagated as (jump, offset, size) per axis from the kernels, strides,
dilations and paddings of the layers (``heatmap_cli.convert.fx``'s op tables say which layers act on
each position alone); exact, on shapes only, for any input size. An operation the analysis does
not know raises ``UnsupportedGraph``; a global pool makes every cell depend on the whole image.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from heatmap_cli.convert.fx import (
    ADAPTIVE_POOL_FUNCTIONS,
    ADAPTIVE_POOL_MODULES,
    AVG_POOL_FUNCTIONS,
    CONV_FUNCTIONS,
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    ELEMENTWISE_MODULES,
    MAX_POOL_FUNCTIONS,
    REDUCE_FUNCTIONS,
    REDUCE_METHODS,
    RESHAPE_FUNCTIONS,
    RESHAPE_METHODS,
    SPLIT_FUNCTIONS,
    SPLIT_METHODS,
    Pair,
    UnsupportedGraph,
    describe,
    eval_identity_functions,
    is_size_query,
    node_arg,
    pair,
    permute_order,
    timm_layers,
)
from heatmap_cli.convert.ops import (
    AtrousOp,
    AtrousPad,
    LinearAsConv2d,
    PerPositionNorm,
    conv_padding,
    crop_to_grid,
    dense_pool,
    layer_norm_over_channels,
    linear_as_conv2d,
    unchanged,
)
from heatmap_cli.convert.shapes import meta_clone, shape_pass
from heatmap_cli.convert.tf_same import same_padding
from heatmap_cli.errors import GeometryError

__all__ = ["Span", "graph_field"]


@dataclass(frozen=True)
class Span:
    """Field of position ``u`` along one axis: ``[u * jump + offset, ... + size)`` input pixels."""

    jump: int
    offset: int
    size: int

    def window_op(self, kernel: int, stride: int, dilation: int, pad_before: int) -> Span:
        """The field after a convolution or pool along this axis."""
        return Span(
            self.jump * stride,
            self.offset - pad_before * self.jump,
            self.size + (kernel - 1) * dilation * self.jump,
        )

    def shifted(self, pad_before: int) -> Span:
        """The field after padding ``pad_before`` positions in front."""
        return Span(self.jump, self.offset - pad_before * self.jump, self.size)


@dataclass(frozen=True)
class _Field:
    """The receptive field of every position of a tensor: which dims are rows and columns."""

    dims: Pair
    spans: tuple[Span, Span]


class _Global:
    """Marks a tensor that depends on every pixel of the image (global pooling)."""

    def __init__(self, where: str) -> None:
        self.where = where


_Value = _Field | _Global | None
# A sum over the map is no pool the graph rewrites know, but it also sees the whole image.
_GLOBAL_SUMS = (torch.sum, "sum")


def graph_field(
    graph_module: fx.GraphModule, input_size: Pair, stride: int, name: str
) -> tuple[Span, Span]:
    """The field of one cell of a graph's ``(N, K, h, w)`` output, along rows and columns.

    Args:
        graph_module: The network's graph (not modified: the analysis runs on a meta copy).
        input_size: ``(H, W)`` of the input the field is for.
        stride: The network's cell spacing, which the output's jump must equal.
        name: The network's name, for messages.

    Returns:
        ``(rows, cols)`` spans: cell ``(i, j)`` depends on rows ``[i*stride + rows.offset, ...
        + rows.size)`` and likewise columns.

    Raises:
        UnsupportedGraph: For an operation the analysis does not know.
        GeometryError: If every cell depends on the whole image.
    """
    meta = meta_clone(graph_module)
    try:
        shape_pass(meta, input_size)  # type: ignore[arg-type]
    except Exception as error:  # a graph that does not run on meta tensors cannot be analysed
        raise UnsupportedGraph(f"shape propagation failed ({type(error).__name__})") from error
    result = _FieldAnalysis(meta).run()  # type: ignore[arg-type]
    if isinstance(result, _Global):
        raise GeometryError(
            f"every cell of {name} depends on the whole image ({result.where}); "
            "tiles cannot reproduce the untiled grid exactly"
        )
    if not isinstance(result, _Field) or result.dims != (2, 3):
        raise UnsupportedGraph("the output is not an (N, K, h, w) grid")
    rows, cols = result.spans
    if rows.jump != stride or cols.jump != stride:
        raise UnsupportedGraph(
            f"the graph's output stride {rows.jump} differs from .stride {stride}"
        )
    return rows, cols


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


class _FieldAnalysis:
    """Walks a shape-propagated graph and records every tensor's receptive field."""

    def __init__(self, graph_module: fx.GraphModule) -> None:
        self.gm = graph_module
        self.values: dict[fx.Node, _Value] = {}
        self.placeholders = 0

    def run(self) -> _Value:
        for node in self.gm.graph.nodes:
            if node.op == "output":
                if isinstance(node.args[0], (tuple, list)):
                    raise UnsupportedGraph("the graph returns a tuple")
                return self.values[node.args[0]] if isinstance(node.args[0], fx.Node) else None
            self.values[node] = self.visit(node)
        raise UnsupportedGraph("the graph has no output")

    def visit(self, node: fx.Node) -> _Value:
        if node.op == "placeholder":
            self.placeholders += 1
            if self.placeholders > 1:
                raise UnsupportedGraph("the graph has more than one input")
            return _Field((2, 3), (Span(1, 0, 1), Span(1, 0, 1)))
        if node.op == "get_attr":
            return None
        inputs = [self.values[a] for a in node.all_input_nodes]
        if all(v is None for v in inputs):
            return None  # parameters, constants and shapes: not pixel values
        if not isinstance(node.meta.get("tensor_meta"), TensorMetadata):
            if is_size_query(node):
                return None
            if node.target not in SPLIT_FUNCTIONS and node.target not in SPLIT_METHODS:
                raise UnsupportedGraph(f"{self.describe(node)} does not return one tensor")
        for v in inputs:
            if isinstance(v, _Global):
                return v
        if node.op == "call_module":
            return self.visit_module(node, self.gm.get_submodule(str(node.target)))
        if node.op == "call_function":
            window = self.spatial_function(node)
            return window if window is not None else self.visit_function(node)
        return self.visit_method(node)

    def describe(self, node: fx.Node) -> str:
        return describe(self.gm, node)

    # -- helpers --

    def source(self, node: fx.Node) -> tuple[_Field, tuple[int, ...]]:
        """The field and shape of a node's first argument, which must depend on the image."""
        arg = node.args[0] if node.args else next(iter(node.kwargs.values()))
        if not isinstance(arg, fx.Node) or not isinstance(self.values.get(arg), _Field):
            raise UnsupportedGraph(f"{self.describe(node)} has an unexpected first argument")
        field = self.values[arg]
        assert isinstance(field, _Field)
        return field, _shape(arg)

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
            raise UnsupportedGraph(f"{self.describe(node)} runs on a non-(N, C, H, W) tensor")
        kernels, strides, dilations = pair(kernel), pair(stride), pair(dilation)
        if same:
            pads = tuple(
                same_padding(shape[2 + a], kernels[a], strides[a], dilations[a])[0] for a in (0, 1)
            )
        else:
            pads, _ = conv_padding(padding, kernels, dilations)
        spans = tuple(
            field.spans[a].window_op(kernels[a], strides[a], dilations[a], pads[a]) for a in (0, 1)
        )
        return _Field(field.dims, spans)  # type: ignore[arg-type]

    def merge(self, node: fx.Node) -> _Value:
        """A pointwise operation: the union of its inputs' fields, aligned by broadcasting."""
        out_shape = _shape(node)
        fields: list[_Field] = []
        for arg in node.all_input_nodes:
            value = self.values[arg]
            if value is None:
                continue
            assert isinstance(value, _Field)
            arg_shape = _shape(arg)
            if len(arg_shape) != len(out_shape):
                raise UnsupportedGraph(f"{self.describe(node)} broadcasts across ranks")
            if any(arg_shape[d] == 1 and out_shape[d] != 1 for d in value.dims):
                return _Global(f"{self.describe(node)} spreads one value over the image")
            fields.append(value)
        if len({f.dims for f in fields}) != 1:
            raise UnsupportedGraph(f"{self.describe(node)} combines differently laid out tensors")
        spans = []
        for axis in (0, 1):
            axis_spans = [f.spans[axis] for f in fields]
            if len({s.jump for s in axis_spans}) != 1:
                raise UnsupportedGraph(f"{self.describe(node)} combines different strides")
            start = min(s.offset for s in axis_spans)
            end = max(s.offset + s.size for s in axis_spans)
            spans.append(Span(axis_spans[0].jump, start, end - start))
        return _Field(fields[0].dims, (spans[0], spans[1]))

    def padded(self, node: fx.Node, pad: object) -> _Field:
        """``F.pad``-style padding ``(left, right, top, bottom, ...)`` of the last two dims."""
        field, shape = self.source(node)
        if not isinstance(pad, (tuple, list)) or len(pad) % 2:
            raise UnsupportedGraph(f"{self.describe(node)} has an unexpected padding")
        pads = [int(p) for p in pad]
        before = {len(shape) - 1 - i: pads[2 * i] for i in range(len(pads) // 2)}
        return self.shifted(field, (before.get(field.dims[0], 0), before.get(field.dims[1], 0)))

    @staticmethod
    def shifted(field: _Field, before: Pair) -> _Field:
        spans = (field.spans[0].shifted(before[0]), field.spans[1].shifted(before[1]))
        return _Field(field.dims, spans)

    def global_reduction(self, node: fx.Node) -> _Value:
        field, shape = self.source(node)
        dims, keep_shape = node_arg(node, 1, "dim"), bool(node_arg(node, 2, "keepdim"))
        if isinstance(dims, int):
            dims = (dims,)
        if dims is None:
            return _Global(f"{self.describe(node)} reduces over the whole tensor")
        if {d % len(shape) for d in dims} & set(field.dims):  # type: ignore[union-attr]
            return _Global(f"global pooling {self.describe(node)}")
        if keep_shape:
            return field
        raise UnsupportedGraph(f"{self.describe(node)} drops dimensions")

    def adaptive_pool(self, node: fx.Node) -> _Value:
        field, shape = self.source(node)
        if _shape(node)[-2:] == shape[-2:]:
            return field
        return _Global(f"adaptive pooling {self.describe(node)}")

    def layer_norm(self, node: fx.Node, normalized_shape: object) -> _Field:
        field, shape = self.source(node)
        count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)  # type: ignore[arg-type]
        if set(range(len(shape) - count, len(shape))) & set(field.dims):
            raise UnsupportedGraph(f"{self.describe(node)} normalizes over image positions")
        return field

    # -- modules --

    def visit_module(self, node: fx.Node, module: nn.Module) -> _Value:
        window = self.spatial_module(node, module)
        if window is not None:
            return window
        if isinstance(module, nn.Linear):
            return self.layer_norm(node, 1)  # acts on the last dim, like a LayerNorm over it
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.training or module.running_mean is None:
                return _Global(f"{self.describe(node)} normalizes with batch statistics")
            return self.merge(node)
        if isinstance(module, tuple(ADAPTIVE_POOL_MODULES)):
            return self.adaptive_pool(node)
        if isinstance(module, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
            return _Global(f"{self.describe(node)} normalizes over the image")
        if isinstance(module, nn.LayerNorm):
            return self.layer_norm(node, module.normalized_shape)
        if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d)):
            return self.padded(node, module.padding)
        if isinstance(module, nn.ReplicationPad2d):
            return self.padded(node, module.padding)
        if isinstance(module, (*ELEMENTWISE_MODULES, PerPositionNorm, nn.LocalResponseNorm)):
            return self.merge(node)
        raise UnsupportedGraph(f"unknown module {self.describe(node)}")

    def spatial_module(self, node: fx.Node, module: nn.Module) -> _Field | None:
        """Convolutions, pools, the converted head and the a-trous ops; None for others."""
        if isinstance(module, AtrousOp):
            # heatmap_cli.grid.dilate's convolutions and pools on denser maps; they say themselves
            # how much they pad (or crop) before a map of a given length.
            _, shape = self.source(node)
            pads = tuple(module.span(shape[2 + a], a).before for a in (0, 1))
            return self.window_op(
                node, module.kernel, module.new_stride, module.atrous_dilation, pads
            )
        if isinstance(module, AtrousPad):
            left, _, top, _ = module.pad
            field, _ = self.source(node)
            return self.shifted(field, (top * module.factor[0], left * module.factor[1]))
        if isinstance(module, nn.Conv2d):
            return self.conv_module(node, module)
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            dilation = getattr(module, "dilation", 1)
            if isinstance(module, timm_layers().same_pools):
                return self.window_op(
                    node, module.kernel_size, module.stride, dilation, 0, same=True
                )
            if type(module).forward not in (nn.MaxPool2d.forward, nn.AvgPool2d.forward):
                raise UnsupportedGraph(f"{self.describe(node)} overrides forward")
            stride = module.stride if module.stride is not None else module.kernel_size
            return self.window_op(node, module.kernel_size, stride, dilation, module.padding)
        if isinstance(module, LinearAsConv2d):
            return self.window_op(node, module.volume[1:], 1, 1, 0)
        if isinstance(module, timm_layers().vgg_conv_mlps):
            return self.conv_mlp(node, module)
        return None

    def conv_module(self, node: fx.Node, module: nn.Conv2d) -> _Field:
        timm = timm_layers()
        if module.padding_mode == "circular":
            raise UnsupportedGraph(f"{self.describe(node)} pads circularly")
        if isinstance(module, timm.flagged_same_convs) and not hasattr(module, "same_pad"):
            # which padding it uses is read from same_pad: without it (timm renamed it?), probe
            raise UnsupportedGraph(f"{self.describe(node)} has no same_pad attribute")
        if isinstance(module, timm.same_convs) or (
            isinstance(module, timm.flagged_same_convs) and module.same_pad
        ):
            return self.window_op(
                node, module.kernel_size, module.stride, module.dilation, 0, same=True
            )
        known = type(module).forward is nn.Conv2d.forward
        if not (known or isinstance(module, timm.static_convs + timm.flagged_same_convs)):
            raise UnsupportedGraph(f"{self.describe(node)} overrides Conv2d.forward")
        return self.window_op(
            node, module.kernel_size, module.stride, module.dilation, module.padding
        )

    def conv_mlp(self, node: fx.Node, module: nn.Module) -> _Field:
        """Timm's VGG head: a conv (7x7 at the training size), then a 1x1 conv."""
        first, second = module.fc1, module.fc2
        if not (isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)):
            raise UnsupportedGraph(f"{self.describe(node)} has unexpected layers")
        if tuple(second.kernel_size) != (1, 1) or tuple(second.stride) != (1, 1):
            raise UnsupportedGraph(f"{self.describe(node)} has a spatial second layer")
        return self.window_op(node, first.kernel_size, first.stride, first.dilation, first.padding)

    # -- functions and methods --

    def spatial_function(self, node: fx.Node) -> _Value:
        """Convolutions, pools, pads, the converted head and the crop; None for others."""
        target = node.target
        if target in CONV_FUNCTIONS:
            weight = node_arg(node, 1, "weight")
            if not isinstance(weight, fx.Node):
                raise UnsupportedGraph(f"{self.describe(node)} has no weight tensor")
            stride, padding = node_arg(node, 3, "stride", 1), node_arg(node, 4, "padding", 0)
            dilation = node_arg(node, 5, "dilation", 1)
            return self.window_op(node, _shape(weight)[-2:], stride, dilation, padding)
        if target in MAX_POOL_FUNCTIONS or target in AVG_POOL_FUNCTIONS:
            kernel = node_arg(node, 1, "kernel_size")
            stride = node_arg(node, 2, "stride") or kernel
            dilation = node_arg(node, 4, "dilation", 1) if target in MAX_POOL_FUNCTIONS else 1
            return self.window_op(node, kernel, stride, dilation, node_arg(node, 3, "padding", 0))
        if target is dense_pool:
            return self.window_op(node, node_arg(node, 1, "kernel"), 1, 1, 0)
        if target is linear_as_conv2d:
            volume = node_arg(node, 3, "volume")
            return self.window_op(node, tuple(volume)[1:], 1, 1, 0)  # type: ignore[arg-type]
        if target is F.pad:
            if node_arg(node, 2, "mode", "constant") == "circular":
                raise UnsupportedGraph(f"{self.describe(node)} pads circularly")
            return self.padded(node, node_arg(node, 1, "pad"))
        if target is crop_to_grid:
            return self.source(node)[0]  # keeps the first cells: their fields are unchanged
        return None

    def visit_function(self, node: fx.Node) -> _Value:
        target = node.target
        if target is F.batch_norm:
            if node_arg(node, 5, "training", False):
                return _Global(f"{self.describe(node)} normalizes with batch statistics")
            return self.merge(node)
        if target is F.layer_norm:
            return self.layer_norm(node, node_arg(node, 1, "normalized_shape"))
        if target is F.linear:
            return self.layer_norm(node, 1)
        if target in ADAPTIVE_POOL_FUNCTIONS:
            return self.adaptive_pool(node)
        if target in REDUCE_FUNCTIONS or target in _GLOBAL_SUMS:
            return self.global_reduction(node)
        if target is torch.cat:
            tensors = node_arg(node, 0, "tensors")
            dim = int(node_arg(node, 1, "dim", 0))  # type: ignore[call-overload]
            first = next(self.values[t] for t in tensors if isinstance(t, fx.Node))  # type: ignore[union-attr]
            if isinstance(first, _Field) and dim % len(_shape(node)) in first.dims:
                raise UnsupportedGraph(f"{self.describe(node)} concatenates along image positions")
            return self.merge(node)
        if target in eval_identity_functions() and not node_arg(node, 3, "training", True):
            return self.merge(node)  # torchvision's residual dropout: the identity in eval mode
        if target in (unchanged, layer_norm_over_channels) or target in ELEMENTWISE_FUNCTIONS:
            return self.merge(node)
        if target is operator.getitem:
            return self.item(node)
        return self.arranged(node, f"unknown function {self.describe(node)}")

    def visit_method(self, node: fx.Node) -> _Value:
        target = node.target
        if target in REDUCE_METHODS or target in _GLOBAL_SUMS:
            return self.global_reduction(node)
        if target in ELEMENTWISE_METHODS:
            return self.merge(node)
        return self.arranged(node, f"unknown method {self.describe(node)}")

    def arranged(self, node: fx.Node, unknown: str) -> _Field:
        """Permutes, transposes, reshapes and splits (as functions or methods)."""
        target = node.target
        if target in (torch.permute, "permute"):
            return self.permuted(node, permute_order(node))
        if target in (torch.transpose, "transpose"):
            return self.transposed(node, node_arg(node, 1, "dim0"), node_arg(node, 2, "dim1"))
        if target in RESHAPE_FUNCTIONS or target in RESHAPE_METHODS:
            return self.reshaped(node)
        if target in SPLIT_FUNCTIONS or target in SPLIT_METHODS:
            index = SPLIT_FUNCTIONS.get(target, SPLIT_METHODS.get(target, 2))  # type: ignore[arg-type, call-overload]
            return self.split(node, node_arg(node, index, "dim", 0))
        raise UnsupportedGraph(unknown)

    def reshaped(self, node: fx.Node) -> _Field:
        """A reshape that only regroups the dims before the image's rows and columns."""
        field, shape = self.source(node)
        out_shape = _shape(node)
        rank = len(shape)
        if field.dims != (rank - 2, rank - 1) or len(out_shape) < 2 or out_shape[-2:] != shape[-2:]:
            raise UnsupportedGraph(f"{self.describe(node)} reshapes the image's rows or columns")
        return _Field((len(out_shape) - 2, len(out_shape) - 1), field.spans)

    def transposed(self, node: fx.Node, first: object, second: object) -> _Field:
        _, shape = self.source(node)
        order = list(range(len(shape)))
        a, b = int(first) % len(shape), int(second) % len(shape)  # type: ignore[call-overload]
        order[a], order[b] = order[b], order[a]
        return self.permuted(node, tuple(order))

    def split(self, node: fx.Node, dim: object) -> _Field:
        """``chunk``/``split`` into a tuple along a dim that is not the rows or columns."""
        field, shape = self.source(node)
        if int(dim) % len(shape) in field.dims:  # type: ignore[call-overload]
            raise UnsupportedGraph(f"{self.describe(node)} splits the image")
        return field

    def item(self, node: fx.Node) -> _Field:
        """One element of a ``chunk``/``split`` result (slicing a tensor is not supported)."""
        source = node.args[0]
        if not isinstance(source, fx.Node) or isinstance(
            source.meta.get("tensor_meta"), TensorMetadata
        ):
            raise UnsupportedGraph(f"{self.describe(node)} slices a tensor")
        field = self.values[source]
        assert isinstance(field, _Field)
        return field

    def permuted(self, node: fx.Node, order: tuple[int, ...]) -> _Field:
        field, _ = self.source(node)
        rank = len(order)
        normalized = [d % rank for d in order]
        new_dims = (normalized.index(field.dims[0]), normalized.index(field.dims[1]))
        return _Field(new_dims, field.spans)
