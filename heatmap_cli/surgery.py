"""Rewrite a classifier's fully-connected head as convolutions ("convolutionalization").

The classifier is traced into a ``torch.fx`` graph. Every node is classified as *spatial* (its
output still has the image's rows and columns) or not. The nodes that fold the feature map into
one vector per image (global pools, ``flatten``) are *reducers*. A reducer whose result flows back
into the feature map (the squeeze-and-excitation blocks of MobileNetV3 or EfficientNet-B*) stays
global; the reducers that feed only the classifier start the *head*, which is rewritten so that it
computes, at every position of a larger feature map, what the original head computed on the one
window of the training input:

* a global average (or max) pool over the ``(fh, fw)`` feature map of the training input becomes
  a sliding ``avg_pool2d(kernel=(fh, fw), stride=1)`` (or ``max_pool2d``);
* ``flatten`` of a ``(C, h, w)`` volume disappears, and the ``Linear(C*h*w, K)`` that reads it
  becomes ``conv2d`` with kernel ``(h, w)`` and the Linear's weight reshaped to ``(K, C, h, w)``,
  a view of the same storage; later Linears become 1x1 convolutions (``windowed_linear``
  computes them as a matrix product when the grid is small, where that is faster);
* ``BatchNorm1d`` and ``LayerNorm`` over the vector act per position over the channels;
* an adaptive pool that is the identity at the training size (torchvision's VGG and AlexNet)
  disappears, otherwise every input would collapse back to one cell.

The converted network shares its weights with the model it came from (nothing is copied and
nothing is written to them); its own module hierarchy is new, so replacing or moving its modules
does not touch the caller's model, but ``.to(device)`` or ``.train()`` on the converted network
reaches the shared parameters and submodules, exactly as on the original.
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from heatmap_cli.errors import ConversionError, GeometryError

__all__ = ["ConvolutionalizedNet", "convolutionalize", "trace_model"]

# The span used to measure the native stride: n(window + span) - n(window) = span / stride for
# every stride that divides it (all powers of two up to 64, and multiples of 3, 5 and 7).
_STRIDE_PROBE_SPAN = 2**6 * 3 * 5 * 7

_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
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

_ELEMENTWISE_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
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
        torch.nn.functional.relu,
        torch.nn.functional.relu6,
        torch.nn.functional.leaky_relu,
        torch.nn.functional.elu,
        torch.nn.functional.selu,
        torch.nn.functional.gelu,
        torch.nn.functional.silu,
        torch.nn.functional.mish,
        torch.nn.functional.hardswish,
        torch.nn.functional.hardsigmoid,
        torch.nn.functional.hardtanh,
        torch.nn.functional.sigmoid,
        torch.nn.functional.tanh,
        torch.nn.functional.softplus,
        torch.nn.functional.dropout,
        torch.nn.functional.alpha_dropout,
    }
)

_ELEMENTWISE_METHODS: frozenset[str] = frozenset(
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

_GLOBAL_AVG_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {F.adaptive_avg_pool2d, torch.mean}
)
_GLOBAL_MAX_FUNCTIONS: frozenset[Callable[..., object]] = frozenset(
    {F.adaptive_max_pool2d, torch.amax}
)


def _timm_tracing_hints() -> tuple[set[type[nn.Module]], tuple[Callable[..., object], ...]]:
    """Modules and functions that timm marks as not traceable (dynamic shapes inside)."""
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return set(), ()
    leaf_modules = set(getattr(timm_fx, "_leaf_modules", set()))
    functions = tuple(getattr(timm_fx, "_autowrap_functions", ()))
    return leaf_modules, functions


class _ClassifierTracer(fx.Tracer):
    """An fx tracer that keeps timm's shape-dependent layers (e.g. ``Conv2dSame``) as leaves."""

    def __init__(self) -> None:
        leaf_modules, functions = _timm_tracing_hints()
        super().__init__(autowrap_functions=functions)
        self._extra_leaves = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        """Standard torch.nn modules and timm's dynamic-shape layers are not traced into."""
        if self._extra_leaves and isinstance(m, self._extra_leaves):
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
    """
    tracer = _ClassifierTracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # any tracing failure means: cannot convert this model
        raise ConversionError(
            f"cannot trace {type(model).__name__} into a graph ({type(error).__name__}: "
            f"{_first_line(error)}); use method='crops', which runs the unmodified model"
        ) from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _meta_clone(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are storage-less meta tensors.

    Shape-only passes run on it in milliseconds per layer, allocate nothing of weight size,
    and never touch the caller's model.
    """
    memo: dict[int, object] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (
            nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
        )
    return copy.deepcopy(module, memo)


def _propagate_shapes(graph_module: fx.GraphModule, input_size: tuple[int, int]) -> None:
    """Records every node's output shape at the training size, without computing anything."""
    meta_module = _meta_clone(graph_module)
    sample = torch.empty(2, 3, *input_size, device="meta")  # 2: BatchNorm in training mode
    try:
        ShapeProp(meta_module).propagate(sample)
    except Exception as error:
        raise ConversionError(
            f"{graph_module.__class__.__name__} does not run on a {input_size[1]}x{input_size[0]} "
            f"input ({type(error).__name__}: {_first_line(error)})"
        ) from error
    for node, meta_node in zip(graph_module.graph.nodes, meta_module.graph.nodes, strict=True):
        if "tensor_meta" in meta_node.meta:
            node.meta["tensor_meta"] = meta_node.meta["tensor_meta"]


def _shape(node: object) -> tuple[int, ...] | None:
    """Output shape of a node recorded by shape propagation, or None for non-tensor outputs."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [arg for arg in node.all_input_nodes if _shape(arg) is not None]


def _module(graph_module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op != "call_module":
        return None
    return graph_module.get_submodule(str(node.target))


def _describe(graph_module: fx.GraphModule, node: fx.Node) -> str:
    """A short human description of a node: its module type or function name."""
    module = _module(graph_module, node)
    if module is not None:
        return f"{type(module).__name__} '{node.target}'"
    if node.op == "call_method":
        return f"Tensor.{node.target}() at '{node.name}'"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target}() at '{node.name}'"


# --- Attention ----------------------------------------------------------------------------------


def _refuse_attention(graph_module: fx.GraphModule, model_name: str) -> None:
    """Raises if any operation mixes all positions of the feature map with each other."""
    input_dependent: set[fx.Node] = set()
    for node in graph_module.graph.nodes:
        if node.op == "placeholder" or any(a in input_dependent for a in node.all_input_nodes):
            input_dependent.add(node)
        if node not in input_dependent:
            continue
        module = _module(graph_module, node)
        if module is not None:
            is_attention = "attention" in type(module).__name__.lower()
        else:
            is_attention = "attention" in getattr(node.target, "__name__", str(node.target)).lower()
        if node.target in (torch.matmul, torch.bmm, torch.einsum, operator.matmul) or (
            node.op == "call_method" and node.target in ("matmul", "bmm")
        ):
            operands = [a for a in node.all_input_nodes if a in input_dependent]
            is_attention = is_attention or len(operands) >= 2
        if is_attention:
            raise ConversionError(
                f"{model_name} uses attention ({_describe(graph_module, node)}), which mixes "
                "every position of the image with every other; its answer on a window cannot be "
                "computed by sliding convolutions. Use method='crops', which runs the unmodified "
                "model on every window."
            )


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


def _spatial_dims_of(arg: object) -> tuple[int, ...] | None:
    if isinstance(arg, int):
        return (arg,)
    if isinstance(arg, (tuple, list)) and all(isinstance(a, int) for a in arg):
        return tuple(arg)
    return None


def _covers_spatial_dims(dims: tuple[int, ...] | None) -> bool:
    if dims is None:
        return False
    normalized = {d % 4 for d in dims}
    return normalized == {2, 3}


def _node_arg(node: fx.Node, index: int, name: str, default: object = None) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _classify_reducer(graph_module: fx.GraphModule, node: fx.Node) -> _Reducer | None:
    """Recognizes nodes that fold a 4D feature map into one value (or volume) per image."""
    inputs = _tensor_inputs(node)
    if not inputs:
        return None
    in_shape = _shape(inputs[0])
    out_shape = _shape(node)
    if in_shape is None or len(in_shape) != 4 or out_shape is None:
        return None
    feature_size = (in_shape[2], in_shape[3])
    keeps_dims = len(out_shape) == 4
    module = _module(graph_module, node)
    target = node.target

    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or target in (
        F.adaptive_avg_pool2d,
        F.adaptive_max_pool2d,
    ):
        if tuple(out_shape[2:]) == feature_size:
            return None  # the identity at the training size; removed from the body separately
        if tuple(out_shape[2:]) != (1, 1):
            raise ConversionError(
                f"{_describe(graph_module, node)} pools a {feature_size[1]}x{feature_size[0]} "
                f"feature map to {out_shape[3]}x{out_shape[2]} bins of unequal size; it has no "
                "sliding equivalent at this input size. Use method='crops'."
            )
        is_max = isinstance(module, nn.AdaptiveMaxPool2d) or target is F.adaptive_max_pool2d
        return _Reducer("max" if is_max else "avg", feature_size, keeps_dims)

    if isinstance(module, (nn.AvgPool2d, nn.MaxPool2d)) or target in (F.avg_pool2d, F.max_pool2d):
        if keeps_dims and tuple(out_shape[2:]) == (1, 1) and feature_size != (1, 1):
            kernel = module.kernel_size if module is not None else _node_arg(node, 1, "kernel_size")
            kernel_hw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)  # type: ignore[arg-type]
            if kernel_hw == feature_size:
                is_max = isinstance(module, nn.MaxPool2d) or target is F.max_pool2d
                return _Reducer("max" if is_max else "avg", feature_size, True)
        return None

    reduction = None
    if target in _GLOBAL_AVG_FUNCTIONS or (node.op == "call_method" and target == "mean"):
        reduction = "avg"
    elif target in _GLOBAL_MAX_FUNCTIONS or (node.op == "call_method" and target == "amax"):
        reduction = "max"
    if reduction is not None:
        dims = _spatial_dims_of(_node_arg(node, 1, "dim"))
        if _covers_spatial_dims(dims):
            return _Reducer(reduction, feature_size, keeps_dims)
        return None

    is_flatten = isinstance(module, nn.Flatten) or target is torch.flatten
    is_flatten = is_flatten or (
        node.op == "call_method" and target in ("flatten", "view", "reshape")
    )
    if is_flatten and len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
        return _Reducer("flatten", feature_size, False)
    if is_flatten and len(out_shape) < 4 and out_shape[-1] != math.prod(in_shape[1:]):
        raise ConversionError(
            f"{_describe(graph_module, node)} turns the feature map into a sequence of tokens; "
            "a head over tokens cannot be written as convolutions. Use method='crops'."
        )
    return None


def _is_identity_adaptive_pool(graph_module: fx.GraphModule, node: fx.Node) -> bool:
    module = _module(graph_module, node)
    if not isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) and node.target not in (
        F.adaptive_avg_pool2d,
        F.adaptive_max_pool2d,
    ):
        return False
    inputs = _tensor_inputs(node)
    in_shape, out_shape = _shape(inputs[0]) if inputs else None, _shape(node)
    return (
        in_shape is not None
        and out_shape is not None
        and len(in_shape) == 4
        and tuple(in_shape[2:]) == tuple(out_shape[2:])
    )


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
    """A head value that was ``(N, C, 1, 1)``; ``perm`` says where N, C, H, W now sit."""

    channels: int
    perm: tuple[int, int, int, int] = (0, 1, 2, 3)


_Layout = _Vector | _Pooled


class LinearAsConv2d(nn.Module):
    """A ``Linear`` that reads ``(C, vh, vw)`` windows, applied at every position as a conv.

    The weight is the Linear's own, reshaped to ``(K, C, vh, vw)``: a view, never a copy.

    Args:
        linear: The Linear layer to slide; it is shared, not copied.
        volume: ``(C, vh, vw)``, the volume its input vector was flattened from.
    """

    def __init__(self, linear: nn.Linear, volume: tuple[int, int, int]) -> None:
        super().__init__()
        if math.prod(volume) != linear.in_features:
            raise ConversionError(
                f"Linear with {linear.in_features} inputs reads a {volume} volume "
                f"({math.prod(volume)} values)"
            )
        self.linear = linear
        self.volume = volume

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Slides the Linear over the feature map.

        Args:
            x: ``(N, C, H, W)`` feature map.

        Returns:
            ``(N, K, H - vh + 1, W - vw + 1)`` outputs, one per window.
        """
        return linear_as_conv2d(x, self.linear.weight, self.linear.bias, self.volume)


def linear_as_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    volume: tuple[int, int, int],
) -> torch.Tensor:
    """``F.linear`` on every ``(C, vh, vw)`` window of a feature map: a convolution.

    Computed by :func:`windowed_linear`, as a convolution or as a matrix product.

    Args:
        x: ``(N, C, H, W)`` feature map.
        weight: ``(K, C*vh*vw)`` Linear weight.
        bias: ``(K,)`` bias or None.
        volume: ``(C, vh, vw)``.

    Returns:
        ``(N, K, H - vh + 1, W - vw + 1)``.
    """
    kernel = weight.reshape(weight.shape[0], *volume)
    return windowed_linear(x, kernel, bias)


# Above this many output cells (images x rows x columns) oneDNN's convolution beats the unfolded
# matrix product for a VGG-sized head (measured on a 2-core Zen 4: at 36 cells the product takes a
# third of the convolution's time, at about 200 they tie, at 288 the convolution is 1.3x faster).
MATMUL_HEAD_MAX_CELLS = 200


def windowed_linear(
    x: torch.Tensor,
    kernel: torch.Tensor,
    bias: torch.Tensor | None,
    dilation: tuple[int, int] = (1, 1),
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

    Returns:
        ``(N, K, H - dh*(kh-1), W - dw*(kw-1))``; may be stored channels-last.
    """
    n, k = x.shape[0], kernel.shape[0]
    kh, kw = kernel.shape[2:]
    rows, cols = x.shape[2] - dilation[0] * (kh - 1), x.shape[3] - dilation[1] * (kw - 1)
    if n * rows * cols > MATMUL_HEAD_MAX_CELLS or rows <= 0 or cols <= 0:
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
        """Normalizes each position's channel vector.

        Args:
            x: ``(N, C, H, W)``.

        Returns:
            ``(N, C, H, W)``.
        """
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


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    """Identity: a flatten of the original head becomes this in the dense network."""
    return x


def _dense_pool(x: torch.Tensor, kernel: tuple[int, int], kind: str) -> torch.Tensor:
    """The sliding equivalent of a global pool over a ``kernel``-sized training feature map."""
    if kind == "max":
        return F.max_pool2d(x, kernel, stride=1)
    return F.avg_pool2d(x, kernel, stride=1)


# --- The rewrite --------------------------------------------------------------------------------


class _HeadRewriter:
    """Rewrites the head nodes of a traced classifier, one node at a time in graph order."""

    def __init__(self, graph_module: fx.GraphModule, model_name: str) -> None:
        self.gm = graph_module
        self.graph = graph_module.graph
        self.model_name = model_name
        self.layouts: dict[fx.Node, _Layout] = {}
        self._new_modules = 0

    def refuse(self, node: fx.Node, why: str) -> ConversionError:
        return ConversionError(
            f"cannot convert the head of {self.model_name}: {_describe(self.gm, node)} {why}. "
            "Use method='crops', which runs the unmodified model on every window."
        )

    def add_module(self, module: nn.Module) -> str:
        name = f"dense_head_{self._new_modules}"
        self._new_modules += 1
        self.gm.add_submodule(name, module)
        return name

    def make_pass_through(self, node: fx.Node, source: fx.Node, layout: _Layout) -> None:
        """Turns a reshape that only served the 1x1 case into a no-op with its own layout."""
        node.op, node.target, node.args, node.kwargs = "call_function", _unchanged, (source,), {}
        self.layouts[node] = layout

    def rewrite_reducer(self, node: fx.Node, reducer: _Reducer) -> None:
        source = _tensor_inputs(node)[0]
        if reducer.kind == "flatten":
            shape = _shape(source)
            assert shape is not None
            self.make_pass_through(node, source, _Vector((shape[1], shape[2], shape[3])))
            return
        with self.graph.inserting_after(node):
            pooled = self.graph.call_function(
                _dense_pool, (source, reducer.feature_size, reducer.kind)
            )
        node.replace_all_uses_with(pooled)
        channels = _shape(source)[1]  # type: ignore[index]
        self.layouts[pooled] = (
            _Pooled(channels) if reducer.keeps_dims else _Vector((channels, 1, 1))
        )

    def head_inputs(self, node: fx.Node) -> list[tuple[fx.Node, _Layout]]:
        return [(a, self.layouts[a]) for a in node.all_input_nodes if a in self.layouts]

    def rewrite(self, node: fx.Node) -> None:
        """Rewrites one node whose tensor inputs include head values."""
        inputs = self.head_inputs(node)
        layouts = {layout for _, layout in inputs}
        if len(layouts) > 1:
            raise self.refuse(node, "combines head values of different layouts")
        (source, layout), *_ = inputs
        module = _module(self.gm, node)

        if node.op == "output":
            if isinstance(layout, _Vector) and layout.volume[1:] != (1, 1):
                raise self.refuse(node, "returns a flattened volume rather than class scores")
            if isinstance(layout, _Pooled) and layout.perm != (0, 1, 2, 3):
                raise self.refuse(node, "returns a permuted tensor")
            return

        if self._is_elementwise(node, module):
            if any(
                isinstance(a, fx.Node) and a not in self.layouts and _shape(a) is not None
                for a in node.all_input_nodes
            ):
                raise self.refuse(node, "combines the head with a tensor that is not per-window")
            self.layouts[node] = layout
            return

        if isinstance(layout, _Pooled):
            self._rewrite_pooled(node, module, source, layout)
        else:
            self._rewrite_vector(node, module, source, layout)

    def _is_elementwise(self, node: fx.Node, module: nn.Module | None) -> bool:
        if module is not None:
            return isinstance(module, _ELEMENTWISE_MODULES)
        if node.op == "call_function":
            return node.target in _ELEMENTWISE_FUNCTIONS
        return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS

    def _rewrite_pooled(
        self, node: fx.Node, module: nn.Module | None, source: fx.Node, layout: _Pooled
    ) -> None:
        target = node.target
        channels_first = layout.perm == (0, 1, 2, 3)
        if node.op in ("call_function", "call_method") and target in (
            torch.permute,
            "permute",
        ):
            dims = node.args[1:]
            if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                dims = tuple(dims[0])
            order = tuple(int(d) for d in dims)  # type: ignore[arg-type]
            perm = tuple(layout.perm[d] for d in order)
            self.layouts[node] = _Pooled(layout.channels, perm)  # type: ignore[arg-type]
            return
        if target is F.layer_norm and len(_node_arg(node, 1, "normalized_shape")) == 1:  # type: ignore[arg-type]
            if layout.perm[3] != 1:
                raise self.refuse(node, "normalizes over a dimension other than the channels")
            self.layouts[node] = layout
            return
        if channels_first and isinstance(module, nn.Conv2d):
            if tuple(module.kernel_size) != (1, 1) or tuple(module.stride) != (1, 1):
                raise self.refuse(node, "is a convolution larger than 1x1 on a pooled vector")
            self.layouts[node] = _Pooled(module.out_channels)
            return
        if channels_first and isinstance(module, nn.BatchNorm2d):
            self.layouts[node] = layout
            return
        if channels_first and (
            isinstance(module, nn.Flatten)
            or target is torch.flatten
            or (node.op == "call_method" and target in ("flatten", "view", "reshape", "squeeze"))
        ):
            out_shape = _shape(node)
            channels = layout.channels
            if out_shape is None or len(out_shape) != 2 or out_shape[1] != channels:
                raise self.refuse(node, f"reshapes the pooled vector to {out_shape}")
            self.make_pass_through(node, source, _Vector((channels, 1, 1)))
            return
        is_spatial_mean = target in (torch.mean, torch.amax) or (
            node.op == "call_method" and target == "mean"
        )
        if channels_first and is_spatial_mean:  # noqa: SIM102 (two distinct reasons to refuse)
            if _covers_spatial_dims(_spatial_dims_of(_node_arg(node, 1, "dim"))):
                keeps = len(_shape(node) or ()) == 4
                self.make_pass_through(
                    node, source, layout if keeps else _Vector((layout.channels, 1, 1))
                )
                return
        raise self.refuse(node, "has no per-position equivalent")

    def _rewrite_vector(
        self, node: fx.Node, module: nn.Module | None, source: fx.Node, layout: _Vector
    ) -> None:
        target = node.target
        per_position = layout.volume[1:] == (1, 1)
        if isinstance(module, nn.Linear):
            node.target = self.add_module(LinearAsConv2d(module, layout.volume))
            self.layouts[node] = _Vector((module.out_features, 1, 1))
            return
        if target is F.linear:
            weight = _node_arg(node, 1, "weight")
            bias = _node_arg(node, 2, "bias")
            node.target = linear_as_conv2d
            node.args = (source, weight, bias, layout.volume)
            node.kwargs = {}
            out_shape = _shape(node)
            assert out_shape is not None
            self.layouts[node] = _Vector((out_shape[-1], 1, 1))
            return
        if (
            isinstance(module, nn.Flatten)
            or target is torch.flatten
            or (node.op == "call_method" and target in ("flatten", "view", "reshape"))
        ):
            out_shape = _shape(node)
            if out_shape is None or len(out_shape) != 2:
                raise self.refuse(node, f"reshapes the head vector to {out_shape}")
            self.make_pass_through(node, source, layout)
            return
        if per_position and isinstance(module, (nn.BatchNorm1d, nn.LayerNorm)):
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
                raise self.refuse(node, "normalizes over more than the channels")
            node.target = self.add_module(PerPositionNorm(module))
            self.layouts[node] = layout
            return
        if per_position and target is F.layer_norm:
            node.target = layer_norm_over_channels
            self.layouts[node] = layout
            return
        if per_position and target is torch.cat:
            dim = _node_arg(node, 1, "dim", 0)
            if dim not in (1, -1):
                raise self.refuse(node, "concatenates along a dimension other than the features")
            node.args = (node.args[0], 1)
            node.kwargs = {}
            out_shape = _shape(node)
            assert out_shape is not None
            self.layouts[node] = _Vector((out_shape[1], 1, 1))
            return
        raise self.refuse(node, "has no per-position equivalent")


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
        if not any(arg in spatial for arg in node.all_input_nodes):
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
            (user in spatial and _shape(user) is not None and len(_shape(user) or ()) >= 4)
            or feeds_spatial.get(user, False)
            for user in node.users
        )
    head_reducers = {n: r for n, r in reducers.items() if not feeds_spatial[n]}
    global_context = [n for n in reducers if feeds_spatial[n]]
    return spatial, head_reducers, global_context


class ConvolutionalizedNet(nn.Module):
    """A classifier whose head slides over the feature map: ``(N,3,H,W) -> (N,K,h,w)``.

    Cell ``(i, j)`` of the output holds the classifier's logits for the ``window``-sized part of
    the input whose top-left corner is ``(i * stride, j * stride)``, as far as zero padding allows
    (see the README: the dense pass sees real neighbours where a crop would see zeros).

    Attributes:
        graph_module: The rewritten ``fx.GraphModule`` that computes the grid.
        stride: Native output stride in input pixels, measured from the network.
        window: ``(h, w)`` window of one cell: the training input size.
        global_context: Names of global pools left inside the body (squeeze-and-excitation);
            empty when every cell depends only on its own window.
        source_model: The unmodified model it was converted from (shared, not copied).
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        *,
        stride: int,
        window: tuple[int, int],
        global_context: Iterable[str] = (),
        source_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.graph_module = graph_module
        # A plain reference, not a submodule: the weights are already registered through the
        # graph module, and crops evaluation needs the unmodified model.
        object.__setattr__(self, "source_model", source_model)
        self.stride = stride
        self.window = window
        self.global_context = tuple(global_context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the class-score grid.

        Args:
            x: ``(N, 3, H, W)`` normalized images with ``H, W >= window``.

        Returns:
            ``(N, K, h, w)`` logits, ``h = (H - window_h) // stride + 1`` for inputs snapped to
            ``window + stride * k``.
        """
        return self.graph_module(x)

    def grid_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Output ``(h, w)`` for an input size, computed without running the network."""
        return _output_size(self.graph_module, input_size)

    def extra_repr(self) -> str:
        """Shown by ``print(net)``."""
        return f"stride={self.stride}, window={self.window}"


def _output_size(graph_module: nn.Module, input_size: tuple[int, int]) -> tuple[int, int]:
    return _output_sizes(_meta_clone(graph_module), [input_size])[0]


def _output_sizes(
    meta_module: nn.Module, input_sizes: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Grid sizes of a meta-device network for several input sizes (shapes only)."""
    sizes = []
    for size in input_sizes:
        out = meta_module(torch.empty(2, 3, *size, device="meta"))  # 2: BatchNorm in training
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ConversionError("the converted network does not return an (N, K, h, w) grid")
        sizes.append((int(out.shape[2]), int(out.shape[3])))
    return sizes


def _measure_stride(graph_module: fx.GraphModule, window: tuple[int, int]) -> int:
    """Native stride: how many input pixels move the grid by one cell, measured on shapes."""
    meta_module = _meta_clone(graph_module)
    span = _STRIDE_PROBE_SPAN
    at_window, (rows, _) = _output_sizes(meta_module, [window, (window[0] + span, window[1])])
    if at_window != (1, 1):
        raise ConversionError(
            f"at its training size {window[1]}x{window[0]} the converted network does not give a "
            "single cell; is input_size the size the model was trained at?"
        )
    if rows <= 1 or span % (rows - 1):
        raise ConversionError(f"could not measure a whole-pixel stride ({rows} cells over {span})")
    stride = span // (rows - 1)
    (check,) = _output_sizes(meta_module, [(window[0] + 2 * stride, window[1] + 3 * stride)])
    if check != (3, 4):
        raise ConversionError(f"inconsistent geometry: stride {stride} gives a {check} grid")
    return stride


def convolutionalize(
    model: nn.Module, input_size: tuple[int, int] = (224, 224)
) -> ConvolutionalizedNet:
    """Converts a classifier into a network that outputs a grid of class scores.

    Args:
        model: A classifier in eval mode, ``(N, 3, h, w) -> (N, K)`` at its training size
            ``input_size``. It is not modified; the result shares its weights (no copy).
        input_size: ``(h, w)`` the model was trained at; the window each cell sees.

    Returns:
        A ``ConvolutionalizedNet`` mapping ``(N, 3, H, W) -> (N, K, h', w')``, with ``stride``
        and ``window`` derived from the network. At ``input_size`` its 1x1 grid equals the
        original logits.

    Raises:
        ConversionError: If the model cannot be traced, uses attention over positions, or has a
            head operation with no per-position equivalent. The message names the operation
            and points to ``method="crops"``.
    """
    name = type(model).__name__
    window = (int(input_size[0]), int(input_size[1]))
    if window[0] <= 0 or window[1] <= 0:
        raise GeometryError(f"input_size must be positive, got {input_size}")
    if model.training:
        warnings.warn(
            f"{name} is in training mode: dropout and batch statistics make the grid random; "
            "call model.eval() first",
            stacklevel=2,
        )
    graph_module = trace_model(model)
    _refuse_attention(graph_module, name)
    _propagate_shapes(graph_module, window)

    for node in list(graph_module.graph.nodes):
        if _is_identity_adaptive_pool(graph_module, node):
            node.replace_all_uses_with(_tensor_inputs(node)[0])

    spatial, head_reducers, global_context = _classify_nodes(graph_module)
    if not head_reducers:
        output = next(n for n in graph_module.graph.nodes if n.op == "output")
        out_shape = _shape(output.all_input_nodes[0]) if output.all_input_nodes else None
        if out_shape is not None and len(out_shape) == 4:
            head_reducers = {}
        else:
            raise ConversionError(f"{name}: found no global pool or flatten before the classifier")

    rewriter = _HeadRewriter(graph_module, name)
    for node in list(graph_module.graph.nodes):
        if node in head_reducers:
            rewriter.rewrite_reducer(node, head_reducers[node])
        elif (
            node not in spatial
            and rewriter.head_inputs(node)
            and (node.op == "output" or _shape(node) is not None)
        ):
            rewriter.rewrite(node)  # non-tensor nodes (x.size(0) for a view) die with the view

    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()
    _delete_unused_submodules(graph_module)

    stride = _measure_stride(graph_module, window)
    context_names = [str(n.target) if n.op == "call_module" else n.name for n in global_context]
    if context_names:
        warnings.warn(
            f"{name} has global pooling inside its body ({len(context_names)} "
            f"squeeze-and-excitation style pools, e.g. '{context_names[0]}'): every cell of the "
            "dense grid also sees image-wide context, so it departs from per-window crops more "
            "than zero padding alone explains",
            stacklevel=2,
        )
    return ConvolutionalizedNet(
        graph_module,
        stride=stride,
        window=window,
        global_context=context_names,
        source_model=model,
    )


def _delete_unused_submodules(graph_module: fx.GraphModule) -> None:
    """Drops references to modules the rewritten graph no longer calls (e.g. removed pools)."""
    graph_module.delete_all_unused_submodules()
