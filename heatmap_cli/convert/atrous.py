"""The graph rewrite behind ``heatmap_cli.grid.dilate``: a converted network's graph "a trous".

Three shape-only passes on meta tensors (the training size, and that size grown in height, then
in width) give every node's cumulative stride ``S`` and which of its dimensions are height and
width. For an output stride ``t``, a node's map is ``D = S / t`` times denser than in the
converted network (``D = 1`` where ``S <= t``: those nodes are left alone). Every node that reads
or makes a denser map is either replaced by an ``AtrousOp``/``AtrousPad``
(``heatmap_cli.convert.ops``), or must act on each position alone, or reduce the map to one value
per image; anything else raises ``UnsupportedGraph``, and the caller stitches instead.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from heatmap_cli.convert.fx import (
    AVG_POOL_FUNCTIONS,
    BATCH_NORM_FUNCTIONS,
    CONV_FUNCTIONS,
    LAYER_NORM_FUNCTIONS,
    LINEAR_FUNCTIONS,
    MAX_POOL_FUNCTIONS,
    MOVE_FUNCTIONS,
    MOVE_METHODS,
    PROBE_SPAN,
    SOFTMAX_FUNCTIONS,
    SOFTMAX_METHODS,
    SPLIT_FUNCTIONS,
    SPLIT_METHODS,
    TUPLE_NORM_FUNCTIONS,
    Pair,
    UnsupportedGraph,
    adaptive_pool_kind,
    describe,
    eval_identity_functions,
    is_elementwise,
    is_reshape,
    is_size_query,
    module_of,
    node_arg,
    node_shape,
    pair,
    reduction_kind,
    timm_layers,
)
from heatmap_cli.convert.ops import (
    DEFAULT_MATMUL_MAX_CELLS,
    AtrousOp,
    AtrousPad,
    LinearAsConv2d,
    PerPositionNorm,
    conv_padding,
    crop_to_grid,
    dense_pool,
    layer_norm_over_channels,
    linear_as_conv2d,
    linear_kernel,
    unchanged,
)
from heatmap_cli.convert.shapes import meta_clone, shape_pass
from heatmap_cli.convert.windows import grid_shape

__all__ = ["atrous_graph_module"]

# unbind drops the split dimension; it moves positions as much as split and chunk do
_SPLITS: dict[Callable[..., object], int] = {**SPLIT_FUNCTIONS, torch.unbind: 1}
_SPLIT_METHODS: dict[str, int] = {**SPLIT_METHODS, "unbind": 1}
_OpAndArgs = tuple[nn.Module, tuple]


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


def _layout(base: tuple[int, ...], grown_h: tuple[int, ...], grown_w: tuple[int, ...]) -> _Layout:
    """The layout of a map from its shapes at the three probe sizes."""
    dims_h = [d for d in range(len(base)) if grown_h[d] != base[d]]
    dims_w = [d for d in range(len(base)) if grown_w[d] != base[d]]
    if len(dims_h) != 1 or len(dims_w) != 1 or dims_h == dims_w:
        return _Layout((-1, -1), (0, 0), ((0, 0),) * 3, len(base))
    dh, dw = dims_h[0], dims_w[0]
    grow = (grown_h[dh] - base[dh], grown_w[dw] - base[dw])
    stride = [PROBE_SPAN // g if g > 0 and PROBE_SPAN % g == 0 else 0 for g in grow]
    return _Layout(
        (dh, dw),
        (stride[0], stride[1]),
        ((base[dh], base[dw]), (grown_h[dh], grown_h[dw]), (grown_w[dh], grown_w[dw])),
        len(base),
    )


def _probe_layouts(
    graph_module: fx.GraphModule, window: Pair
) -> tuple[dict[str, _Layout | None], dict[str, tuple[int, ...] | None]]:
    """Layout of every node's output, from shape passes at three input sizes.

    Returns:
        The layouts (None: not a map that grows with the input), and every node's output shape
        at the training size (None: not a tensor).
    """
    meta = meta_clone(graph_module)
    sizes = [window, (window[0] + PROBE_SPAN, window[1]), (window[0], window[1] + PROBE_SPAN)]
    shapes: list[dict[str, tuple[int, ...] | None]] = []
    for size in sizes:
        shape_pass(meta, size)  # type: ignore[arg-type]
        shapes.append({node.name: node_shape(node) for node in meta.graph.nodes})

    layouts: dict[str, _Layout | None] = {}
    for name, base in shapes[0].items():
        grown_h, grown_w = shapes[1][name], shapes[2][name]
        layouts[name] = None
        if base is None or grown_h is None or grown_w is None:
            continue
        if not len(base) == len(grown_h) == len(grown_w):
            raise UnsupportedGraph(f"'{name}' changes rank with the input size")
        if grown_h != base or grown_w != base:
            layouts[name] = _layout(base, grown_h, grown_w)
    return layouts, shapes[0]


# --- The rewrite --------------------------------------------------------------------------------


class _Rewriter:
    """Walks a copy of the converted graph and rewrites every node that touches a denser map."""

    def __init__(self, graph_module: fx.GraphModule, window: Pair, stride: int) -> None:
        self.gm = graph_module
        self.graph = graph_module.graph
        self.stride = stride
        self.layouts, self.shapes = _probe_layouts(graph_module, window)
        self.added = 0

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

    def refuse(self, node: fx.Node, why: str) -> UnsupportedGraph:
        return UnsupportedGraph(f"{describe(self.gm, node)} {why}")

    # -- the walk

    def run(self) -> None:
        """Rewrites the graph in place; raises ``UnsupportedGraph`` at the first unknown op."""
        for node in list(self.graph.nodes):
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            inputs = [a for a in node.all_input_nodes if self.layout(a) is not None]
            if not inputs:
                continue
            if self.shapes.get(node.name) is None:  # not a tensor: sizes, or a tuple of parts
                if not (is_size_query(node) or self.is_split(node, inputs[0])):
                    raise self.refuse(node, "returns something unknown")
                continue
            out = self.layout(node)
            in_factors = {self.factor(self.layout(a)) for a in inputs}
            out_factor = self.factor(out)
            if in_factors <= {(1, 1), None} and out_factor in ((1, 1), None):
                continue  # before the strides that are removed: unchanged
            if len(in_factors) != 1 or None in in_factors or (out is not None and not out_factor):
                raise self.refuse(
                    node,
                    "mixes height and width, resizes the map, or combines maps of different "
                    "strides",
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
            raise self.refuse(node, "folds the map in an unknown way")
        op_stride, new_stride = [], []
        for o, i, of, i_f in zip(
            out.stride, source_layout.stride, out_factor, in_factor, strict=True
        ):
            if o % i or (o // of) % (i // i_f):
                raise self.refuse(node, "changes the stride by a fraction")
            op_stride.append(o // i)
            new_stride.append((o // of) // (i // i_f))
        stride, atrous_stride = (op_stride[0], op_stride[1]), (new_stride[0], new_stride[1])
        common = {"factor": in_factor, "stride": stride, "new_stride": atrous_stride}
        replacement = self.spatial_op(node, common)
        if replacement is not None:
            self.replace(node, *replacement)
        elif stride != (1, 1) or not self.is_positionwise(node, source_layout, out):
            raise self.refuse(node, "cannot be dilated")

    # -- operations that leave every position to itself

    def is_split(self, node: fx.Node, source: fx.Node) -> bool:
        """A split into parts along a dimension other than height and width."""
        if node.op == "call_function" and node.target in _SPLITS:
            index = _SPLITS[node.target]  # type: ignore[index]
        elif node.op == "call_method" and node.target in _SPLIT_METHODS:
            index = _SPLIT_METHODS[str(node.target)]
        else:
            return False
        layout = self.layout(source)
        dim = node_arg(node, index, "dim", 0)
        return layout is not None and isinstance(dim, int) and dim % layout.rank not in layout.dims

    def is_positionwise(self, node: fx.Node, source: _Layout, out: _Layout) -> bool:
        if out.dims[0] < 0 or source.sizes != out.sizes:
            return False  # crops, pads, resizes or folds the map
        if is_reshape(self.gm, node):  # trusted while height and width stay the last two dims
            return source.trailing and out.trailing
        if is_elementwise(self.gm, node):
            return True
        if node.op == "call_module":
            return self.is_positionwise_module(module_of(self.gm, node), out)  # type: ignore[arg-type]
        target = node.target
        if node.op == "call_method":
            if target in SOFTMAX_METHODS:
                return self.spares(out, node_arg(node, 1, "dim"))
            return target in MOVE_METHODS
        if target in eval_identity_functions():
            return True
        if target is layer_norm_over_channels:
            return out.dims == (2, 3)
        if target is linear_as_conv2d:
            return tuple(node_arg(node, 3, "volume"))[1:] == (1, 1)  # type: ignore[arg-type]
        if target in LINEAR_FUNCTIONS:
            return self.spares_last(out, 1)
        if target in LAYER_NORM_FUNCTIONS and target not in TUPLE_NORM_FUNCTIONS:
            shape = node_arg(node, 1, "normalized_shape")
            return isinstance(shape, (tuple, list)) and self.spares_last(out, len(shape))
        if target in BATCH_NORM_FUNCTIONS and target not in TUPLE_NORM_FUNCTIONS:
            return out.dims == (2, 3)  # eval mode: per channel (dim 1), positions apart
        if target in SOFTMAX_FUNCTIONS:
            return self.spares(out, node_arg(node, 1, "dim"))
        return target in MOVE_FUNCTIONS or target is unchanged

    def is_positionwise_module(self, module: nn.Module, out: _Layout) -> bool:
        channel_norms = timm_layers().channel_norms
        if isinstance(module, LinearAsConv2d):
            return module.volume[1:] == (1, 1)
        if isinstance(module, nn.Linear):
            return self.spares_last(out, 1)
        if isinstance(module, nn.LayerNorm) and not isinstance(module, channel_norms):
            return self.spares_last(out, len(module.normalized_shape))
        if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
            return self.spares(out, module.dim)
        if isinstance(module, channel_norms):
            return out.dims == (2, 3)
        return isinstance(module, (nn.modules.batchnorm._BatchNorm, PerPositionNorm))

    @staticmethod
    def spares(out: _Layout, dim: object) -> bool:
        """Whether an operation along ``dim`` (a softmax) leaves height and width alone."""
        return isinstance(dim, int) and dim % out.rank not in out.dims

    @staticmethod
    def spares_last(out: _Layout, count: int) -> bool:
        """Whether the last ``count`` dimensions (a Linear's or LayerNorm's) exclude H and W."""
        return max(out.dims) < out.rank - count

    def is_global(self, node: fx.Node) -> bool:
        """A reduction to one value per image, which still summarizes it over a denser map."""
        return adaptive_pool_kind(self.gm, node) is not None or reduction_kind(node) is not None

    # -- operations that get holes

    def spatial_op(self, node: fx.Node, common: dict[str, Pair]) -> _OpAndArgs | None:
        """The dilated replacement of a convolution, pool or pad and its arguments; else None."""
        if node.op == "call_module":
            return self.module_op(node, common)
        if node.op != "call_function":
            return None
        target, x = node.target, node_arg(node, 0, "input")
        if target in CONV_FUNCTIONS:
            return self.conv_function(node, common)
        if target in MAX_POOL_FUNCTIONS or target in AVG_POOL_FUNCTIONS:
            return self.pool_function(node, common)
        if target is dense_pool:
            kernel, kind = pair(node.args[1]), str(node.args[2])
            return AtrousOp(kind, kernel=kernel, dilation=(1, 1), padding=(0, 0), **common), (x,)  # type: ignore[arg-type]
        if target is linear_as_conv2d:
            volume = tuple(node_arg(node, 3, "volume"))  # type: ignore[arg-type]
            if volume[1:] == (1, 1):
                return None
            limit = node_arg(node, 4, "matmul_max_cells", DEFAULT_MATMUL_MAX_CELLS)
            weight = self.insert(
                node, "call_function", linear_kernel, (node_arg(node, 1, "weight"), volume)
            )
            op = self.head_op(volume, limit, common)  # type: ignore[arg-type]
            return op, (x, weight, node_arg(node, 2, "bias"))
        if target is F.pad and node_arg(node, 2, "mode", "constant") == "constant":
            return self.pad_op(node, node_arg(node, 1, "pad"), node_arg(node, 3, "value"), common)
        return None

    def conv_function(self, node: fx.Node, common: dict[str, Pair]) -> _OpAndArgs:
        weight, bias = node_arg(node, 1, "weight"), node_arg(node, 2, "bias")
        kernel = self.kernel_of(weight, node)
        dilation = pair(node_arg(node, 5, "dilation", 1))
        padding = self.symmetric_padding(node_arg(node, 4, "padding", 0), kernel, dilation, node)
        op = AtrousOp(
            "conv",
            kernel=kernel,
            dilation=dilation,
            padding=padding,
            groups=int(node_arg(node, 6, "groups", 1)),  # type: ignore[call-overload]
            **common,  # type: ignore[arg-type]
        )
        return op, (node_arg(node, 0, "input"), weight, bias)

    def pool_function(self, node: fx.Node, common: dict[str, Pair]) -> _OpAndArgs | None:
        kernel = pair(node_arg(node, 1, "kernel_size"))
        padding = pair(node_arg(node, 3, "padding", 0))
        if node.target in MAX_POOL_FUNCTIONS:
            if node_arg(node, 6, "return_indices", False):
                return None
            dilation = pair(node_arg(node, 4, "dilation", 1))
            ceil_mode = bool(node_arg(node, 5, "ceil_mode", False))
            op = AtrousOp(
                "max",
                kernel=kernel,
                dilation=dilation,
                padding=padding,
                ceil_mode=ceil_mode,
                **common,  # type: ignore[arg-type]
            )
        else:
            divisor = node_arg(node, 6, "divisor_override")
            op = AtrousOp(
                "avg",
                kernel=kernel,
                dilation=(1, 1),
                padding=padding,
                ceil_mode=bool(node_arg(node, 4, "ceil_mode", False)),
                count_include_pad=bool(node_arg(node, 5, "count_include_pad", True)),
                divisor_override=int(divisor) if divisor else None,  # type: ignore[call-overload]
                **common,  # type: ignore[arg-type]
            )
        return op, (node_arg(node, 0, "input"),)

    def module_op(self, node: fx.Node, common: dict[str, Pair]) -> _OpAndArgs | None:
        module = module_of(self.gm, node)
        assert module is not None
        x = node_arg(node, 0, "input")
        kind, timm = type(module), timm_layers()
        if kind in timm.same_convs or kind.forward is nn.Conv2d.forward:
            if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros":
                raise self.refuse(node, f"pads with {module.padding_mode!r}")
            kernel, dilation = pair(module.kernel_size), pair(module.dilation)
            same = kind in timm.same_convs
            padding = (
                (0, 0) if same else self.symmetric_padding(module.padding, kernel, dilation, node)
            )
            op = AtrousOp(
                "conv",
                kernel=kernel,
                dilation=dilation,
                padding=padding,
                same=same,
                groups=module.groups,
                module=module,
                **common,  # type: ignore[arg-type]
            )
            return op, (x,)
        if kind in timm.same_pools or kind.forward in (nn.MaxPool2d.forward, nn.AvgPool2d.forward):
            op = self.pool_module(module, kind in timm.same_pools, common)
            return None if op is None else (op, (x,))
        if isinstance(module, LinearAsConv2d) and module.volume[1:] != (1, 1):
            weight = self.insert(node, "get_attr", f"{node.target}.linear.weight", ())
            bias = None
            if module.linear.bias is not None:
                bias = self.insert(node, "get_attr", f"{node.target}.linear.bias", ())
            kernel = self.insert(node, "call_function", linear_kernel, (weight, module.volume))
            return self.head_op(module.volume, module.matmul_max_cells, common), (x, kernel, bias)
        if isinstance(module, nn.modules.padding._ConstantPadNd):
            return self.pad_op(node, module.padding, module.value, common)
        return None

    @staticmethod
    def pool_module(module: nn.Module, same: bool, common: dict[str, Pair]) -> AtrousOp | None:
        if getattr(module, "return_indices", False) or (same and module.ceil_mode):
            return None
        is_max = isinstance(module, nn.MaxPool2d)
        op = AtrousOp(
            "max" if is_max else "avg",
            kernel=pair(module.kernel_size),
            dilation=pair(module.dilation) if is_max else (1, 1),
            padding=(0, 0) if same else pair(module.padding),
            same=same,
            ceil_mode=bool(module.ceil_mode),
            count_include_pad=getattr(module, "count_include_pad", True),
            divisor_override=getattr(module, "divisor_override", None),
            **common,  # type: ignore[arg-type]
        )
        return op

    @staticmethod
    def head_op(volume: tuple[int, int, int], matmul_max_cells: int, common: dict) -> AtrousOp:
        """A converted Linear over ``(C, vh, vw)`` windows, on the denser map."""
        return AtrousOp(
            "conv",
            kernel=(volume[1], volume[2]),
            dilation=(1, 1),
            padding=(0, 0),
            head=True,
            matmul_max_cells=matmul_max_cells,
            **common,
        )

    def pad_op(
        self, node: fx.Node, pad: object, value: object, common: dict[str, Pair]
    ) -> _OpAndArgs | None:
        layout = self.layout(node)
        if (
            common["stride"] != (1, 1)
            or not isinstance(pad, (tuple, list))
            or len(pad) not in (2, 4)
            or layout is None
            or not layout.trailing
        ):
            return None
        left, right, *rest = (int(p) for p in pad)
        top, bottom = rest if rest else (0, 0)
        op = AtrousPad((left, right, top, bottom), float(value or 0.0), common["factor"])  # type: ignore[arg-type]
        return op, (node_arg(node, 0, "input"),)

    # -- helpers

    def kernel_of(self, weight: object, node: fx.Node) -> Pair:
        shape = self.shapes.get(weight.name) if isinstance(weight, fx.Node) else None
        if shape is None or len(shape) != 4:
            raise self.refuse(node, "has a kernel of unknown size")
        return (int(shape[2]), int(shape[3]))

    def symmetric_padding(
        self, padding: object, kernel: Pair, dilation: Pair, node: fx.Node
    ) -> Pair:
        before, after = conv_padding(padding, kernel, dilation)
        if before != after:
            raise self.refuse(node, "has asymmetric 'same' padding")
        return before

    def insert(self, before: fx.Node, op: str, target: object, args: tuple) -> fx.Node:
        """A new ``call_function`` or ``get_attr`` node just before ``before``."""
        with self.graph.inserting_before(before):
            return self.graph.create_node(op, target, args)  # type: ignore[arg-type]

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


# --- The rewritten graph module -----------------------------------------------------------------


def atrous_graph_module(
    source: fx.GraphModule, window: Pair, stride: int, factor: int
) -> fx.GraphModule:
    """A new graph module computing ``source``'s grid at the finer ``stride``, cropped to it.

    Args:
        source: A converted network's graph module, at native stride ``stride * factor``.
        window: ``(h, w)`` window of a cell.
        stride: Output stride in input pixels.
        factor: How many times finer than the native stride.

    Returns:
        A graph module mapping ``(N, 3, H, W)`` to ``(N, K, rows, cols)``, ``(rows, cols) =
        grid_shape((H, W), window, stride)``; its new operations read ``source``'s weights.

    Raises:
        UnsupportedGraph: If the graph holds an operation the rewrite does not know.
    """
    # GraphModule(root, graph) installs the submodules the graph calls (the same objects, so
    # no weight is copied) under new containers; the rewrite only adds new top-level names.
    graph_module = fx.GraphModule(source, copy.deepcopy(source.graph), type(source).__name__)
    try:
        rewriter = _Rewriter(graph_module, window, stride)
    except UnsupportedGraph:
        raise
    except Exception as error:  # a network the shape passes cannot run is left alone
        raise UnsupportedGraph(
            f"shape analysis failed ({type(error).__name__}: {error})"
        ) from error
    rewriter.run()
    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()
    _check_grid_sizes(graph_module, window, stride, factor)
    _crop_output(graph_module, window, stride)
    return graph_module


def _check_grid_sizes(graph_module: fx.GraphModule, window: Pair, stride: int, factor: int) -> None:
    """Checks on shapes that the graph gives at least the cells the finer grid needs."""
    # the input lengths with the most and the fewest cells left over at the native stride
    sizes = [
        (window[0] + stride * factor, window[1] + stride * (2 * factor - 1)),
        (window[0] + stride * (2 * factor - 1), window[1] + stride * factor),
    ]
    try:
        meta = meta_clone(graph_module)
        cells = [shape_pass(meta, size).shape[2:] for size in sizes]  # type: ignore[arg-type, union-attr]
    except Exception as error:
        raise UnsupportedGraph(
            f"the dilated graph does not run ({type(error).__name__})"
        ) from error
    for size, got in zip(sizes, cells, strict=True):
        need = grid_shape(size, window, stride)
        if got[0] < need[0] or got[1] < need[1]:
            raise UnsupportedGraph(
                f"the dilated graph gives {tuple(got)} cells for {size}, not {need}"
            )


def _crop_output(graph_module: fx.GraphModule, window: Pair, stride: int) -> None:
    """Ends the graph with :func:`crop_to_grid`.

    The rewritten graph computes up to ``factor - 1`` more cells at the bottom/right (windows
    hanging over the edge into the zero padding); the crop reads only the input's shape, so the
    input itself can be freed after the first layer.
    """
    graph = graph_module.graph
    placeholder = next(n for n in graph.nodes if n.op == "placeholder")
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_after(placeholder):
        input_shape = graph.call_function(getattr, (placeholder, "shape"))
    with graph.inserting_before(output):
        cropped = graph.call_function(crop_to_grid, (output.args[0], input_shape, window, stride))
    output.args = (cropped,)
    graph.lint()
    graph_module.recompile()
