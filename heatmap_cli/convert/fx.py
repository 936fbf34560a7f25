"""The ``torch.fx`` toolkit that every graph walker of the package reads.

Three walkers read a converted classifier's graph: the head rewrite
(``heatmap_cli.convert.network``), the "a trous" rewrite (``heatmap_cli.grid.dilate``) and the
receptive-field analysis (``heatmap_cli.grid.tiling``); batch-norm folding
(``heatmap_cli.convert.folding``) edits it. They share what is here, so that a layer taught to one
of them is known to all:

* tracing a classifier (:func:`trace_model`), with timm's not-traced modules and functions
  taken from timm's public registry, and working without timm;
* reading nodes: argument lookup, int-or-pair parsing, shapes, descriptions for messages;
* the op tables: which modules, functions and methods act on each element or position alone,
  which reduce a map to one value per image, which convolve, pool, move or reshape. Each
  function table holds the ATen operators that ``torch.export`` graphs call as well (both the
  default training IR, ``aten.conv2d``/``aten.linear``, and the core ATen IR after
  ``run_decompositions``, ``aten.addmm``/``aten._native_batch_norm_legit_no_training``), so an
  exported program's ``.module()`` is read like a traced one;
* the timm layers the walkers know by class (:func:`timm_layers`, found by name in
  :mod:`heatmap_cli.convert.timm_names`, which refuses a timm model when one is gone).

A walker that meets something it does not know raises :class:`UnsupportedGraph`.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from heatmap_cli.convert.tf_same import FX_LEAVES
from heatmap_cli.convert.timm_names import (
    TimmLayers,
    check_timm_coupling,
    timm_layers,
    timm_not_traced,
)
from heatmap_cli.errors import ConversionError, first_line

__all__ = [
    "ADAPTIVE_POOL_FUNCTIONS",
    "ADAPTIVE_POOL_MODULES",
    "ADDMM_FUNCTIONS",
    "AVG_POOL_FUNCTIONS",
    "BATCH_NORM_FUNCTIONS",
    "CONV_FUNCTIONS",
    "ELEMENTWISE_FUNCTIONS",
    "ELEMENTWISE_METHODS",
    "ELEMENTWISE_MODULES",
    "LAYER_NORM_FUNCTIONS",
    "LINEAR_FUNCTIONS",
    "LOG_SOFTMAX_FUNCTIONS",
    "MAX_POOL_FUNCTIONS",
    "MM_FUNCTIONS",
    "MOVE_FUNCTIONS",
    "MOVE_METHODS",
    "PROBE_SPAN",
    "REDUCE_FUNCTIONS",
    "REDUCE_METHODS",
    "RESHAPE_FUNCTIONS",
    "RESHAPE_METHODS",
    "SIGMOID_FUNCTIONS",
    "SOFTMAX_FUNCTIONS",
    "SOFTMAX_METHODS",
    "SPLIT_FUNCTIONS",
    "SPLIT_METHODS",
    "SQUEEZE_FUNCTIONS",
    "TUPLE_NORM_FUNCTIONS",
    "Pair",
    "TimmLayers",
    "UnsupportedGraph",
    "adaptive_pool_kind",
    "describe",
    "eval_identity_functions",
    "is_elementwise",
    "is_reshape",
    "is_script_module",
    "is_size_query",
    "module_of",
    "node_arg",
    "node_shape",
    "pair",
    "permute_order",
    "reduction_kind",
    "tensor_inputs",
    "timm_layers",
    "trace_model",
]

Pair = tuple[int, int]

PROBE_SPAN = 2**6 * 3 * 5 * 7
"""Input growth in pixels for shape probes: a multiple of every stride a network can have (all
powers of two up to 64, and multiples of 3, 5 and 7), so ``span / stride`` is whole."""


class UnsupportedGraph(Exception):
    """A graph walker met an operation, or an argument, that it does not know."""


# --- Op tables ----------------------------------------------------------------------------------

ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
)
"""Modules that act on every element alone (activations, dropout in eval mode)."""


def _aten(*names: str) -> frozenset[Callable[..., object]]:
    """Every overload of these ATen operators, as the graphs of ``torch.export`` call them."""
    found: set[Callable[..., object]] = set()
    for name in names:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            found.update(getattr(packet, overload) for overload in packet.overloads())
    return frozenset(found)


ELEMENTWISE_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {
        operator.add,
        operator.sub,
        operator.mul,
        operator.truediv,
        operator.neg,
        torch.add,
        torch.sub,
        torch.mul,
        torch.div,
        torch.relu,
        torch.sigmoid,
        torch.tanh,
        torch.clamp,
        F.relu,
        F.relu6,
        F.leaky_relu,
        F.elu,
        F.selu,
        F.gelu,
        F.silu,
        F.mish,
        F.hardswish,
        F.hardsigmoid,
        F.hardtanh,
        F.sigmoid,
        F.tanh,
        F.softplus,
        F.dropout,
        F.alpha_dropout,
    }
) | _aten(
    *("relu", "relu6", "hardtanh", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish"),
    *("hardswish", "hardsigmoid", "sigmoid", "tanh", "add", "sub", "mul", "div", "clamp"),
    *("relu_", "hardtanh_", "leaky_relu_", "elu_", "selu_", "gelu_", "silu_", "mish_"),
    *("hardswish_", "hardsigmoid_", "sigmoid_", "tanh_", "add_", "sub_", "mul_", "div_"),
    *("softplus", "neg", "clamp_", "clamp_min", "clamp_max", "dropout", "dropout_"),
    *("feature_dropout", "alpha_dropout", "clone", "alias", "detach", "_to_copy"),
)
"""Functions that act on every element alone (with broadcasting for the binary ones)."""

ELEMENTWISE_METHODS: frozenset[str] = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "relu",
        "sigmoid",
        "tanh",
        "clamp",
        "contiguous",
        "float",
        "to",
        "type_as",
        "add_",
        "mul_",
        "relu_",
        "sigmoid_",
        "clamp_",
    }
)
"""Tensor methods that act on every element alone."""

CONV_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({F.conv2d, torch.conv2d}) | _aten(
    "conv2d"
)
"""Convolutions called like ``F.conv2d(input, weight, bias, stride, padding, dilation, groups)``
(core ATen's ``aten.convolution`` is not: it is a body operation no walker needs to read)."""
MAX_POOL_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {F.max_pool2d, torch.max_pool2d}
) | _aten("max_pool2d")
AVG_POOL_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({F.avg_pool2d}) | _aten(
    "avg_pool2d"
)

ADAPTIVE_POOL_MODULES: dict[type[nn.Module], str] = {
    nn.AdaptiveAvgPool2d: "avg",
    nn.AdaptiveMaxPool2d: "max",
}
ADAPTIVE_POOL_FUNCTIONS: dict[Callable[..., object], str] = {
    F.adaptive_avg_pool2d: "avg",
    F.adaptive_max_pool2d: "max",
    **dict.fromkeys(_aten("adaptive_avg_pool2d", "_adaptive_avg_pool2d"), "avg"),
}
REDUCE_FUNCTIONS: dict[Callable[..., object], str] = {
    torch.mean: "avg",
    torch.amax: "max",
    **dict.fromkeys(_aten("mean"), "avg"),
    **dict.fromkeys(_aten("amax"), "max"),
}
"""Reductions over a ``dim`` argument: global pools when ``dim`` covers height and width. A sum
is not among them: over a larger map it grows with the number of positions."""
REDUCE_METHODS: dict[str, str] = {"mean": "avg", "amax": "max"}

MOVE_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {operator.getitem, torch.cat, torch.stack, torch.permute, torch.transpose}
) | _aten("cat", "permute", "transpose")
"""Functions that move whole positions around (between tensors, dimensions) without mixing."""
MOVE_METHODS: frozenset[str] = frozenset(
    {"permute", "transpose", "contiguous", "expand", "expand_as"}
)
RESHAPE_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {torch.flatten, torch.reshape}
) | _aten("flatten", "view", "reshape", "_unsafe_view")
RESHAPE_METHODS: frozenset[str] = frozenset({"view", "reshape", "flatten", "unflatten"})
SPLIT_FUNCTIONS: dict[Callable[..., object], int] = {torch.split: 2, torch.chunk: 2}
"""Splits into a tuple of tensors of the same rank, and the position of their ``dim`` argument."""
SPLIT_METHODS: dict[str, int] = {"split": 2, "chunk": 2}
LOG_SOFTMAX_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {F.log_softmax, torch.log_softmax}
) | _aten("log_softmax", "_log_softmax")
SOFTMAX_FUNCTIONS: frozenset[Callable[..., object]] = (
    frozenset({F.softmax, torch.softmax}) | _aten("softmax", "_softmax") | LOG_SOFTMAX_FUNCTIONS
)
"""Softmax and log-softmax along a ``dim`` (the second argument)."""
SOFTMAX_METHODS: frozenset[str] = frozenset({"softmax", "log_softmax"})
SIGMOID_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({torch.sigmoid, F.sigmoid}) | _aten(
    "sigmoid", "sigmoid_"
)
SQUEEZE_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({torch.squeeze}) | _aten("squeeze")
"""``squeeze`` as a function (the method is ``"squeeze"``): drops dimensions of size 1."""

LINEAR_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({F.linear}) | _aten("linear")
"""Called like ``F.linear(input, weight, bias)``."""
ADDMM_FUNCTIONS: frozenset[Callable[..., object]] = _aten("addmm")
"""``addmm(bias, input, weight.t())``: core ATen's Linear."""
MM_FUNCTIONS: frozenset[Callable[..., object]] = _aten("mm")
"""``mm(input, weight.t())``: core ATen's Linear without bias."""
BATCH_NORM_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({F.batch_norm}) | _aten(
    "batch_norm", "_native_batch_norm_legit_no_training"
)
"""Batch norms over the channel dimension (1), input first; per channel in eval mode."""
LAYER_NORM_FUNCTIONS: frozenset[Callable[..., object]] = frozenset({F.layer_norm}) | _aten(
    "layer_norm", "native_layer_norm"
)
"""Called like ``F.layer_norm(input, normalized_shape, weight, bias, eps)``."""
TUPLE_NORM_FUNCTIONS: frozenset[Callable[..., object]] = _aten(
    "_native_batch_norm_legit_no_training", "native_layer_norm"
)
"""Norms of core ATen that return ``(output, statistics...)``; the output is item 0."""

_SIZE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device"})
_SIZE_FUNCTIONS = _aten("sym_size", "sym_numel")


def eval_identity_functions() -> frozenset[Callable[..., object]]:
    """Per-sample functions that fx records as calls and that are the identity in eval mode.

    torchvision's ``stochastic_depth`` (residual dropout); empty while torchvision is not
    imported (a graph can only call it once it is: importing it takes a second).
    """
    ops = sys.modules.get("torchvision.ops")
    return frozenset({ops.stochastic_depth}) if ops is not None else frozenset()


# --- Tracing ------------------------------------------------------------------------------------


class _ClassifierTracer(fx.Tracer):
    """An fx tracer that keeps timm's shape-dependent layers (e.g. ``Conv2dSame``) as leaves."""

    def __init__(self) -> None:
        leaf_modules, functions = timm_not_traced()
        super().__init__(autowrap_functions=functions)
        self._extra_leaves = (*FX_LEAVES, *leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Standard torch.nn modules and timm's dynamic-shape layers are not traced into."""
        if isinstance(m, self._extra_leaves):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace_model(model: nn.Module) -> fx.GraphModule:
    """Traces a classifier into a graph module that shares its submodules and parameters.

    Args:
        model: Any ``nn.Module`` mapping ``(N, 3, H, W)`` images to ``(N, K)`` logits.

    Returns:
        A new ``fx.GraphModule``; the caller's model is not modified.

    Raises:
        ConversionError: If the model's forward cannot be traced symbolically.
        TimmCouplingError: It is built from timm's modules and the imported timm lacks a name
            the walkers know them by (:func:`~heatmap_cli.convert.timm_names.check_timm_coupling`).
    """
    check_timm_coupling(model)
    if is_script_module(model):
        raise ConversionError(
            f"{type(model).__name__} is a TorchScript module, whose code torch.fx cannot trace "
            "into a graph; use method='crops', which runs the unmodified model."
        )
    tracer = _ClassifierTracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # any tracing failure means: cannot convert this model
        raise ConversionError(
            f"cannot trace {type(model).__name__} into a graph ({type(error).__name__}: "
            f"{first_line(error)}); use method='crops', which runs the unmodified model"
        ) from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def is_script_module(model: nn.Module) -> bool:
    """Whether ``model`` is TorchScript (``torch.jit.script``/``trace``/``load``), not Python."""
    return isinstance(model, torch.jit.ScriptModule)


# --- Reading nodes ------------------------------------------------------------------------------


def node_shape(node: object) -> tuple[int, ...] | None:
    """Output shape of a node recorded by a shape pass, or None for non-tensor outputs."""
    if not isinstance(node, fx.Node):
        return None
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return tuple(shape) if shape is not None else None


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    """The node's inputs whose outputs are tensors (after a shape pass)."""
    return [arg for arg in node.all_input_nodes if node_shape(arg) is not None]


def node_arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    """Argument ``index`` of a call, given by position or by ``name``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def pair(value: object) -> Pair:
    """An int, or a one- or two-element sequence, as ``(height, width)``.

    Raises:
        UnsupportedGraph: For anything else.
    """
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) in (1, 2):
        return (int(value[0]), int(value[-1]))
    raise UnsupportedGraph(f"expected an int or a pair, got {value!r}")


def permute_order(node: fx.Node) -> tuple[int, ...]:
    """The dimension order of ``torch.permute(x, dims)`` or ``x.permute(*dims)``."""
    if node.op == "call_function":
        dims = node_arg(node, 1, "dims")
    else:
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
    return tuple(int(d) for d in dims)  # type: ignore[union-attr]


def is_size_query(node: fx.Node) -> bool:
    """Whether the node asks a tensor for its size, rank, dtype or device."""
    if node.op == "call_method":
        return node.target in ("size", "dim")
    if node.op != "call_function":
        return False
    return node.target in _SIZE_FUNCTIONS or (
        node.target is getattr and node.args[1] in _SIZE_ATTRIBUTES
    )


def is_elementwise(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the node acts on every element alone (per the ``ELEMENTWISE_*`` tables)."""
    if node.op == "call_module":
        return isinstance(module_of(graph_module, node), ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in ELEMENTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in ELEMENTWISE_METHODS


def is_reshape(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the node is a flatten, view or reshape (module, function or method)."""
    if node.op == "call_module":
        return isinstance(module_of(graph_module, node), nn.Flatten)
    if node.op == "call_function":
        return node.target in RESHAPE_FUNCTIONS
    return node.op == "call_method" and node.target in RESHAPE_METHODS


def adaptive_pool_kind(graph_module: fx.GraphModule, node: fx.Node) -> str | None:
    """``"avg"``/``"max"`` for an adaptive pool (module or function), else None."""
    if node.op == "call_module":
        module = module_of(graph_module, node)
        kinds = (kind for cls, kind in ADAPTIVE_POOL_MODULES.items() if isinstance(module, cls))
        return next(kinds, None)
    if node.op == "call_function":
        return ADAPTIVE_POOL_FUNCTIONS.get(node.target)  # type: ignore[arg-type]
    return None


def reduction_kind(node: fx.Node) -> str | None:
    """``"avg"``/``"max"`` for a ``mean``/``amax`` call (over some ``dim``), else None."""
    if node.op == "call_function":
        return REDUCE_FUNCTIONS.get(node.target)  # type: ignore[arg-type]
    if node.op == "call_method":
        return REDUCE_METHODS.get(str(node.target))
    return None


def module_of(graph_module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module a ``call_module`` node calls; None for other nodes."""
    if node.op != "call_module":
        return None
    return graph_module.get_submodule(str(node.target))


def describe(graph_module: fx.GraphModule, node: fx.Node) -> str:
    """A short human description of a node for messages: its module type or function name."""
    module = module_of(graph_module, node)
    if module is not None:
        return f"{type(module).__name__} '{node.target}'"
    if node.op == "call_method":
        return f"Tensor.{node.target}() at '{node.name}'"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target}() at '{node.name}'"
