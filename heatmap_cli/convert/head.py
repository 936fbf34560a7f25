"""The head rewrite behind ``heatmap_cli.convert.network``: the classifier's head made to slide.

Every node is classified as *spatial* (its output still has the image's rows and columns) or
not. The nodes that fold the feature map into one vector per image (global pools, ``flatten``)
are *reducers*. A reducer whose result flows back into the feature map (squeeze-and-excitation)
stays global; the reducers that feed only the classifier start the *head*, whose nodes are then
rewritten one by one, in graph order, with the layers of ``heatmap_cli.convert.ops``.

What acts on the class (channel) dimension of one window acts on the channel dimension of each
cell: a softmax or log-softmax over the classes, batch and layer norms of the vector; what acts
on every element (activations, dropout, a sigmoid) is kept as it is.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn

from heatmap_cli.convert.fx import (
    ADDMM_FUNCTIONS,
    AVG_POOL_FUNCTIONS,
    BATCH_NORM_FUNCTIONS,
    LAYER_NORM_FUNCTIONS,
    LINEAR_FUNCTIONS,
    LOG_SOFTMAX_FUNCTIONS,
    MAX_POOL_FUNCTIONS,
    MM_FUNCTIONS,
    SOFTMAX_FUNCTIONS,
    SOFTMAX_METHODS,
    SQUEEZE_FUNCTIONS,
    TUPLE_NORM_FUNCTIONS,
    adaptive_pool_kind,
    describe,
    is_elementwise,
    is_reshape,
    module_of,
    node_arg,
    node_shape,
    pair,
    permute_order,
    reduction_kind,
    tensor_inputs,
)
from heatmap_cli.convert.ops import (
    LinearAsConv2d,
    PerPositionNorm,
    dense_pool,
    layer_norm_over_channels,
    linear_as_conv2d,
    unchanged,
)
from heatmap_cli.errors import ConversionError

__all__ = ["rewrite_head"]


# --- Classifying nodes --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reducer:
    """How a node folds the spatial feature map, and what replaces it in the dense network.

    Attributes:
        kind: ``"avg"`` or ``"max"`` (global pools), ``"flatten"`` (a volume read whole).
        feature_size: ``(fh, fw)`` of its input at the training size.
        keeps_dims: Whether the original output is still 4D ``(N, C, 1, 1)``.
    """

    kind: str
    feature_size: tuple[int, int]
    keeps_dims: bool


def _covers_spatial_dims(dims: object) -> bool:
    """Whether a reduction's ``dim`` argument is exactly height and width of a 4D map."""
    if isinstance(dims, int):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims):
        return False
    return {d % 4 for d in dims} == {2, 3}


def _pool_reducer(
    graph_module: fx.GraphModule, node: fx.Node, feature_size: tuple[int, int], out: tuple[int, ...]
) -> _Reducer | None:
    """A pooling node that folds the map: an adaptive pool to 1x1, or a pool over all of it."""
    module, keeps_dims = module_of(graph_module, node), len(out) == 4
    adaptive = adaptive_pool_kind(graph_module, node)
    if adaptive is not None:
        if tuple(out[2:]) == feature_size:
            return None  # the identity at the training size; removed from the body separately
        if tuple(out[2:]) != (1, 1):
            raise ConversionError(
                f"{describe(graph_module, node)} pools a {feature_size[1]}x{feature_size[0]} "
                f"feature map to {out[3]}x{out[2]} bins of unequal size; it has no "
                "sliding equivalent at this input size. Use method='crops'."
            )
        return _Reducer(adaptive, feature_size, keeps_dims)
    is_max = isinstance(module, nn.MaxPool2d) or node.target in MAX_POOL_FUNCTIONS
    if (
        not is_max
        and not isinstance(module, nn.AvgPool2d)
        and node.target not in AVG_POOL_FUNCTIONS
    ):
        return None
    if keeps_dims and tuple(out[2:]) == (1, 1) and feature_size != (1, 1):
        kernel = module.kernel_size if module is not None else node_arg(node, 1, "kernel_size")
        if pair(kernel) == feature_size:
            return _Reducer("max" if is_max else "avg", feature_size, True)
    return None


def _classify_reducer(graph_module: fx.GraphModule, node: fx.Node) -> _Reducer | None:
    """Recognizes nodes that fold a 4D feature map into one value (or volume) per image."""
    inputs = tensor_inputs(node)
    in_shape = node_shape(inputs[0]) if inputs else None
    out_shape = node_shape(node)
    if in_shape is None or len(in_shape) != 4 or out_shape is None:
        return None
    feature_size = (in_shape[2], in_shape[3])
    module = module_of(graph_module, node)
    if adaptive_pool_kind(graph_module, node) or isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)):
        return _pool_reducer(graph_module, node, feature_size, out_shape)
    if node.target in AVG_POOL_FUNCTIONS | MAX_POOL_FUNCTIONS:
        return _pool_reducer(graph_module, node, feature_size, out_shape)
    reduction = reduction_kind(node)
    if reduction is not None:
        if _covers_spatial_dims(node_arg(node, 1, "dim")):
            return _Reducer(reduction, feature_size, len(out_shape) == 4)
        return None
    if not is_reshape(graph_module, node):
        return None
    volume = math.prod(in_shape[1:])
    if len(out_shape) == 2 and out_shape[1] == volume:
        return _Reducer("flatten", feature_size, False)
    if len(out_shape) < 4 and out_shape[-1] != volume:
        raise ConversionError(
            f"{describe(graph_module, node)} turns the feature map into a sequence of tokens; "
            "a head over tokens cannot be written as convolutions. Use method='crops'."
        )
    return None


def _is_identity_adaptive_pool(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    if adaptive_pool_kind(graph_module, node) is None:
        return False
    inputs = tensor_inputs(node)
    in_shape, out_shape = node_shape(inputs[0]) if inputs else None, node_shape(node)
    return (
        in_shape is not None
        and out_shape is not None
        and len(in_shape) == 4
        and tuple(in_shape[2:]) == tuple(out_shape[2:])
    )


def _classify_nodes(
    graph_module: fx.GraphModule,
) -> tuple[set[fx.Node], dict[fx.Node, _Reducer], list[fx.Node]]:
    """Finds spatial nodes, reducers that start the head, and reducers that stay global."""
    spatial: set[fx.Node] = set()
    reducers: dict[fx.Node, _Reducer] = {}
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            spatial.add(node)
            continue
        # A size read from the image (x.shape[0] in a head's reshape) does not make a node spatial.
        if not any(arg in spatial and "tensor_meta" in arg.meta for arg in node.all_input_nodes):
            continue
        reducer = _classify_reducer(graph_module, node)
        if reducer is not None:
            reducers[node] = reducer
        else:
            spatial.add(node)

    # A reducer whose result flows back into the feature map (squeeze-and-excitation) stays.
    feeds_spatial: dict[fx.Node, bool] = {}
    for node in reversed(graph_module.graph.nodes):
        feeds_spatial[node] = any(
            (user in spatial and len(node_shape(user) or ()) >= 4) or feeds_spatial.get(user, False)
            for user in node.users
        )
    head_reducers = {n: r for n, r in reducers.items() if not feeds_spatial[n]}
    global_context = [n for n in reducers if feeds_spatial[n]]
    return spatial, head_reducers, global_context


# --- Head layouts -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Vector:
    """A head value that was ``(N, C*vh*vw)`` in the original; dense it is ``(N, C, h, w)``.

    Each position of the dense tensor starts a ``(C, vh, vw)`` window whose flattening is the
    original vector; ``vh = vw = 1`` after global pooling.
    """

    volume: tuple[int, int, int]


@dataclass(frozen=True)
class _Pooled:
    """A head value that was ``(N, C, 1, 1)``; ``perm`` says where N, C, H, W now sit.

    ``rank`` 3: it was ``(N, C, 1)`` (one squeeze of two), still ``(N, C, h, w)`` dense.
    """

    channels: int
    perm: tuple[int, int, int, int] = (0, 1, 2, 3)
    rank: int = 4


_Layout = _Vector | _Pooled


# --- The rewrite --------------------------------------------------------------------------------


class _HeadRewriter:
    """Rewrites the head nodes of a traced classifier, one node at a time in graph order."""

    def __init__(
        self, graph_module: fx.GraphModule, model_name: str, matmul_max_cells: int
    ) -> None:
        self.gm = graph_module
        self.graph = graph_module.graph
        self.model_name = model_name
        self.matmul_max_cells = matmul_max_cells
        self.layouts: dict[fx.Node, _Layout] = {}
        self.untupled: set[fx.Node] = set()
        self._new_modules = 0

    def refuse(self, node: fx.Node, why: str) -> ConversionError:
        return ConversionError(
            f"cannot convert the head of {self.model_name}: {describe(self.gm, node)} {why}. "
            "Use method='crops', which runs the unmodified model on every window."
        )

    def add_module(self, module: nn.Module) -> str:
        name = f"dense_head_{self._new_modules}"
        self._new_modules += 1
        self.gm.add_submodule(name, module)
        return name

    def make_pass_through(self, node: fx.Node, source: fx.Node, layout: _Layout) -> None:
        """Turns a reshape that only served the 1x1 case into a no-op with its own layout."""
        node.op, node.target, node.args, node.kwargs = "call_function", unchanged, (source,), {}
        self.layouts[node] = layout

    def rewrite_reducer(self, node: fx.Node, reducer: _Reducer) -> None:
        source = tensor_inputs(node)[0]
        shape = node_shape(source)
        assert shape is not None
        if reducer.kind == "flatten":
            self.make_pass_through(node, source, _Vector((shape[1], shape[2], shape[3])))
            return
        with self.graph.inserting_after(node):
            pooled = self.graph.call_function(
                dense_pool, (source, reducer.feature_size, reducer.kind)
            )
        node.replace_all_uses_with(pooled)
        channels = shape[1]
        self.layouts[pooled] = (
            _Pooled(channels) if reducer.keeps_dims else _Vector((channels, 1, 1))
        )

    def head_inputs(self, node: fx.Node) -> list[tuple[fx.Node, _Layout]]:
        return [(a, self.layouts[a]) for a in node.all_input_nodes if a in self.layouts]

    def rewrite(self, node: fx.Node) -> None:
        """Rewrites one node whose tensor inputs include head values."""
        inputs = self.head_inputs(node)
        if len({layout for _, layout in inputs}) > 1:
            raise self.refuse(node, "combines head values of different layouts")
        (source, layout), *_ = inputs
        if node.op == "output":
            if isinstance(layout, _Vector) and layout.volume[1:] != (1, 1):
                raise self.refuse(node, "returns a flattened volume rather than class scores")
            if isinstance(layout, _Pooled) and (layout.perm, layout.rank) != ((0, 1, 2, 3), 4):
                raise self.refuse(node, "returns a permuted or squeezed tensor")
            return
        if is_elementwise(self.gm, node):
            if any(
                a not in self.layouts and node_shape(a) is not None for a in node.all_input_nodes
            ):
                raise self.refuse(node, "combines the head with a tensor that is not per-window")
            self.layouts[node] = layout
            return
        module = module_of(self.gm, node)
        if self._rewrite_per_channel(node, module, source, layout):
            return
        if isinstance(layout, _Pooled):
            self._rewrite_pooled(node, module, source, layout)
        elif not self._rewrite_linear(node, module, source, layout):
            self._rewrite_vector(node, module, source, layout)

    def _rewrite_per_channel(
        self, node: fx.Node, module: nn.Module | None, source: fx.Node, layout: _Layout
    ) -> bool:
        """A softmax over the classes, a batch norm, or an item of a norm's output tuple.

        Returns:
            Whether the node was one of these (and is rewritten).
        """
        channel = _channel_dim(layout)
        if node.target is operator.getitem and source.target in TUPLE_NORM_FUNCTIONS:
            if node.args[1] != 0:
                raise self.refuse(node, "reads a norm's statistics")
            self.layouts[node] = layout
            return True
        if node.target is operator.getitem and source in self.untupled:
            self.make_pass_through(node, source, layout)
            return True
        if node.target in BATCH_NORM_FUNCTIONS:
            if channel != 1:
                raise self.refuse(node, "normalizes a vector that is not one per position")
            self.layouts[node] = layout
            return True
        softmax = _softmax_of(node, module)
        if softmax is None:
            return False
        function, dim = softmax
        rank = layout.rank if isinstance(layout, _Pooled) else 2
        if channel is None or (dim if dim is not None else 1) % rank != channel % rank:
            raise self.refuse(node, "is a softmax over something other than the classes")
        node.op, node.target = "call_function", function
        node.args, node.kwargs = (node.args[0], channel), {}
        self.layouts[node] = layout
        return True

    def _rewrite_pooled(
        self, node: fx.Node, module: nn.Module | None, source: fx.Node, layout: _Pooled
    ) -> None:
        """A node on an ``(N, C, 1, 1)`` value, which is ``(N, C, h, w)`` in the dense network."""
        reshapes = is_reshape(self.gm, node) or _is_squeeze(node)
        if layout.rank != 4 and not reshapes:
            raise self.refuse(node, "has no per-position equivalent on a squeezed vector")
        if node.op != "call_module" and node.target in (torch.permute, "permute"):
            perm = tuple(layout.perm[d] for d in permute_order(node))
            self.layouts[node] = _Pooled(layout.channels, perm)  # type: ignore[arg-type]
            return
        shape = node_arg(node, 1, "normalized_shape")
        if node.target in LAYER_NORM_FUNCTIONS and len(shape) == 1:  # type: ignore[arg-type]
            if layout.perm[3] != 1:
                raise self.refuse(node, "normalizes over a dimension other than the channels")
            self.layouts[node] = layout
            return
        if layout.perm != (0, 1, 2, 3):
            raise self.refuse(node, "has no per-position equivalent")
        if isinstance(module, nn.Conv2d):
            if tuple(module.kernel_size) != (1, 1) or tuple(module.stride) != (1, 1):
                raise self.refuse(node, "is a convolution larger than 1x1 on a pooled vector")
            self.layouts[node] = _Pooled(module.out_channels)
        elif isinstance(module, nn.BatchNorm2d):
            self.layouts[node] = layout
        elif reshapes:
            out_shape = node_shape(node)
            if out_shape is not None and tuple(out_shape[1:]) == (layout.channels, 1):
                self.make_pass_through(node, source, _Pooled(layout.channels, rank=3))
                return
            if out_shape is None or len(out_shape) != 2 or out_shape[1] != layout.channels:
                raise self.refuse(node, f"reshapes the pooled vector to {out_shape}")
            self.make_pass_through(node, source, _Vector((layout.channels, 1, 1)))
        elif reduction_kind(node) is not None:
            if not _covers_spatial_dims(node_arg(node, 1, "dim")):
                raise self.refuse(node, "has no per-position equivalent")
            keeps = len(node_shape(node) or ()) == 4
            self.make_pass_through(
                node, source, layout if keeps else _Vector((layout.channels, 1, 1))
            )
        else:
            raise self.refuse(node, "has no per-position equivalent")

    def _rewrite_linear(
        self, node: fx.Node, module: nn.Module | None, source: fx.Node, layout: _Vector
    ) -> bool:
        """A Linear on a head vector becomes a convolution.

        The Linear is a module, ``F.linear``/``aten.linear``, or core ATen's
        ``addmm(bias, x, weight.t())``/``mm(x, weight.t())``.
        """
        if isinstance(module, nn.Linear):
            dense = LinearAsConv2d(module, layout.volume, matmul_max_cells=self.matmul_max_cells)
            node.target = self.add_module(dense)
            self.layouts[node] = _Vector((module.out_features, 1, 1))
            return True
        if node.target in LINEAR_FUNCTIONS:
            weight, bias = node_arg(node, 1, "weight"), node_arg(node, 2, "bias")
        elif node.target in ADDMM_FUNCTIONS or node.target in MM_FUNCTIONS:
            addmm = node.target in ADDMM_FUNCTIONS
            bias, x, transposed = node.args[:3] if addmm else (None, *node.args[:2])
            if x is not source or node.kwargs:
                raise self.refuse(node, "multiplies the head vector from the right or scales it")
            with self.graph.inserting_before(node):
                weight = self.graph.call_function(torch.t, (transposed,))
        else:
            return False
        node.op, node.target = "call_function", linear_as_conv2d
        node.args = (source, weight, bias, layout.volume, self.matmul_max_cells)
        node.kwargs = {}
        self.layouts[node] = _Vector((node_shape(node)[-1], 1, 1))  # type: ignore[index]
        return True

    def _rewrite_vector(
        self, node: fx.Node, module: nn.Module | None, source: fx.Node, layout: _Vector
    ) -> None:
        """A reshape, norm or concatenation of head vectors."""
        per_position = layout.volume[1:] == (1, 1)
        if is_reshape(self.gm, node) or _is_squeeze(node):
            out_shape = node_shape(node)
            # (N, 1) -> (N,): a one-class model's scores; they stay (N, 1, h, w) in the grid
            single = out_shape is not None and len(out_shape) == 1 and layout.volume == (1, 1, 1)
            if out_shape is None or (len(out_shape) != 2 and not single):
                raise self.refuse(node, f"reshapes the head vector to {out_shape}")
            self.make_pass_through(node, source, layout)
        elif per_position and isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                raise self.refuse(node, "normalizes over more than the channels")
            node.target = self.add_module(PerPositionNorm(module))
            self.layouts[node] = layout
        elif per_position and node.target in LAYER_NORM_FUNCTIONS:
            if len(node_arg(node, 1, "normalized_shape")) != 1:  # type: ignore[arg-type]
                raise self.refuse(node, "normalizes over more than the channels")
            if node.target in TUPLE_NORM_FUNCTIONS:
                self.untupled.add(node)  # now returns the output alone, not (output, stats)
            args = [node_arg(node, i, name) for i, name in enumerate(_LAYER_NORM_ARGS)]
            node.target, node.kwargs = layer_norm_over_channels, {}
            node.args = (*args[:4], 1e-5 if args[4] is None else args[4])
            self.layouts[node] = layout
        elif per_position and node.target is torch.cat:
            if node_arg(node, 1, "dim", 0) not in (1, -1):
                raise self.refuse(node, "concatenates along a dimension other than the features")
            node.args = (node.args[0], 1)
            node.kwargs = {}
            self.layouts[node] = _Vector((node_shape(node)[1], 1, 1))  # type: ignore[index]
        else:
            raise self.refuse(node, "has no per-position equivalent")


_LAYER_NORM_ARGS = ("input", "normalized_shape", "weight", "bias", "eps")


def _channel_dim(layout: _Layout) -> int | None:
    """Where the channels (classes) sit in a head value; None for a flattened volume."""
    if isinstance(layout, _Pooled):
        return layout.perm.index(1)
    return 1 if layout.volume[1:] == (1, 1) else None


def _softmax_of(
    node: fx.Node, module: nn.Module | None
) -> tuple[Callable[..., torch.Tensor], int | None] | None:
    """``(F.softmax or F.log_softmax, dim)`` for a softmax node of any form, else None."""
    if isinstance(module, (nn.Softmax, nn.LogSoftmax)):
        function = F.log_softmax if isinstance(module, nn.LogSoftmax) else F.softmax
        return function, module.dim
    if node.op == "call_method" and node.target in SOFTMAX_METHODS:
        function = F.log_softmax if node.target == "log_softmax" else F.softmax
    elif node.op == "call_function" and node.target in SOFTMAX_FUNCTIONS:
        function = F.log_softmax if node.target in LOG_SOFTMAX_FUNCTIONS else F.softmax
    else:
        return None
    return function, node_arg(node, 1, "dim")  # type: ignore[return-value]


def _is_squeeze(node: fx.Node) -> bool:
    return node.target in SQUEEZE_FUNCTIONS or (node.op, node.target) == ("call_method", "squeeze")


def rewrite_head(graph_module: fx.GraphModule, name: str, matmul_max_cells: int) -> list[str]:
    """Rewrites, in place, the head of a classifier's graph so that it slides over the map.

    Args:
        graph_module: The traced classifier, its nodes' shapes recorded at the training size
            (``node.meta["tensor_meta"]``); its submodules are shared with the caller's model
            and never written to (new modules get new top-level names).
        name: The model's name, for messages.
        matmul_max_cells: Stored on the converted Linears (``heatmap_cli.convert.ops``).

    Returns:
        The names of the global pools that stay inside the body (squeeze-and-excitation).

    Raises:
        ConversionError: For a head operation with no per-position equivalent, or no head.
    """
    for node in list(graph_module.graph.nodes):
        if _is_identity_adaptive_pool(graph_module, node):
            node.replace_all_uses_with(tensor_inputs(node)[0])

    spatial, head_reducers, global_context = _classify_nodes(graph_module)
    if not head_reducers:
        output = next(n for n in graph_module.graph.nodes if n.op == "output")
        out_shape = node_shape(output.all_input_nodes[0]) if output.all_input_nodes else None
        if out_shape is None or len(out_shape) != 4:
            raise ConversionError(f"{name}: found no global pool or flatten before the classifier")

    rewriter = _HeadRewriter(graph_module, name, matmul_max_cells)
    for node in list(graph_module.graph.nodes):
        if node in head_reducers:
            rewriter.rewrite_reducer(node, head_reducers[node])
        elif (
            node not in spatial
            and rewriter.head_inputs(node)
            and (node.op == "output" or "tensor_meta" in node.meta)  # tensors, tuples of them
        ):
            rewriter.rewrite(node)  # non-tensor nodes (x.size(0) for a view) die with the view

    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()
    # drop references to modules the rewritten graph no longer calls (e.g. removed pools)
    graph_module.delete_all_unused_submodules()
    return [str(n.target) if n.op == "call_module" else n.name for n in global_context]
