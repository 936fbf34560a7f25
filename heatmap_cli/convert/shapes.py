"""Shape-only passes: a classifier's graph run on storage-less (meta) tensors.

The graph walkers need every node's output shape at a few input sizes. Running the graph on
meta tensors gives them without computing anything, but torch runs most meta operations through
Python reference implementations whose checks (``torch._check``) import sympy and torch's
symbolic shapes on first use (seconds on a small machine, the better part of converting the
default model), and ``torch.fx``'s own ``ShapeProp`` imports them for every node. So the pass
is an interpreter of its own that computes the shape itself where it is plain arithmetic:
convolutions (TensorFlow-"same" ones included) and pools by torch's output-length formula, the
converted head's sliding Linear, batch norms and elementwise operations (their input's shape,
``+ - *`` broadcast), adaptive pools, linear layers and flattening, and the a-trous network's
ops. Every other operation runs
on meta tensors as usual (and imports sympy then, once).
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
from collections.abc import Callable, Sequence

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata

from heatmap_cli.convert.fx import (
    ELEMENTWISE_FUNCTIONS,
    ELEMENTWISE_METHODS,
    ELEMENTWISE_MODULES,
    Pair,
    pair,
)
from heatmap_cli.convert.ops import (
    AtrousOp,
    AtrousPad,
    LinearAsConv2d,
    conv_padding,
    dense_pool,
    layer_norm_over_channels,
    linear_as_conv2d,
    pool_output_length,
    unchanged,
)
from heatmap_cli.convert.tf_same import BandedSameConv2d, ceil_div, same_padding

__all__ = ["meta_clone", "meta_input", "shape_pass"]

_SHAPE_KEEPING_MODULES = (nn.modules.batchnorm._BatchNorm, *ELEMENTWISE_MODULES)
_BROADCASTING: frozenset[Callable[..., object]] = frozenset(
    {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
)
"""Arithmetic whose output has the broadcast shape and the promoted dtype of its two operands."""
_SHAPE_AND_TYPE_KEEPING_METHODS = ELEMENTWISE_METHODS - {"to", "float", "type_as"}
_PLAIN_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def meta_clone(module: nn.Module) -> nn.Module:
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


def meta_input(module: nn.Module, size: Pair, batch: int = 1) -> torch.Tensor:
    """A storage-less ``(batch, 3, h, w)`` image in the dtype of the module's weights."""
    dtype = next(
        (p.dtype for p in module.parameters() if p.is_floating_point()), torch.get_default_dtype()
    )
    return torch.empty(batch, 3, *size, device="meta", dtype=dtype)


def _empty(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _conv_shape(module: nn.Conv2d, x: torch.Tensor) -> tuple[int, ...] | None:
    """Output shape of a plain or TF-"same" 2-D convolution on ``x``; None if not one."""
    if x.dim() != 4 or x.shape[1] != module.in_channels:
        return None
    kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    if type(module) is BandedSameConv2d:
        sides = [same_padding(x.shape[2 + i], kernel[i], stride[i], dilation[i])[2] for i in (0, 1)]
    elif type(module).forward is nn.Conv2d.forward:
        before, after = conv_padding(module.padding, kernel, dilation)
        if before != after:  # "same" with an odd total: torch pads asymmetrically
            return None
        sides = [
            pool_output_length(x.shape[2 + i], kernel[i], stride[i], before[i], dilation[i], False)
            for i in (0, 1)
        ]
    else:
        return None
    return (x.shape[0], module.out_channels, *sides)


def _pool_shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """Output shape of a 2-D max or average pool on ``x``; None if not a plain one."""
    if type(module).forward not in (nn.MaxPool2d.forward, nn.AvgPool2d.forward) or x.dim() != 4:
        return None
    kernel, stride = pair(module.kernel_size), pair(module.stride or module.kernel_size)
    padding = pair(module.padding)
    dilation = pair(getattr(module, "dilation", 1))
    sides = [
        pool_output_length(
            x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], bool(module.ceil_mode)
        )
        for i in (0, 1)
    ]
    return (*x.shape[:2], *sides)


def _adaptive_shape(output_size: object, x: torch.Tensor) -> tuple[int, ...]:
    """Shape of ``x`` adaptively pooled to ``output_size`` (None: that side kept)."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    height, width = (x.shape[-2 + i] if side is None else side for i, side in enumerate(size))
    return (*x.shape[:-2], height, width)


def _broadcast(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The broadcast of ``shapes`` (``torch.broadcast_shapes`` imports sympy in torch 2.14)."""
    ndim = max(len(shape) for shape in shapes)
    padded = [(1,) * (ndim - len(shape)) + tuple(shape) for shape in shapes]
    out = []
    for sizes in zip(*padded, strict=True):
        other = {size for size in sizes if size != 1}
        if len(other) > 1:
            raise RuntimeError(f"shapes {[tuple(s) for s in shapes]} cannot be broadcast")
        out.append(other.pop() if other else 1)
    return tuple(out)


def _flat_shape(x: torch.Tensor, start: int = 0, end: int = -1) -> tuple[int, ...]:
    """Shape of ``torch.flatten(x, start, end)``."""
    dims = x.dim()
    start, end = start % dims if dims else 0, end % dims if dims else 0
    return (*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :])


def _own_function_shape(target: object, args: tuple) -> tuple[int, ...] | None:
    """The shapes of the functions the head rewrite inserts (``heatmap_cli.convert.ops``)."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        return None
    if target in (unchanged, layer_norm_over_channels):
        return tuple(x.shape)
    if target is dense_pool:
        rows, cols = (x.shape[2 + i] - side + 1 for i, side in enumerate(pair(args[1])))
        return (*x.shape[:2], rows, cols) if rows > 0 < cols else None
    if target is linear_as_conv2d and isinstance(args[1], torch.Tensor):
        _, height, width = args[3]
        rows, cols = x.shape[2] - height + 1, x.shape[3] - width + 1
        return (x.shape[0], args[1].shape[0], rows, cols) if rows > 0 < cols else None
    return None


def _atrous_shape(module: nn.Module, args: tuple) -> tuple[int, ...] | None:
    """Output shape of the a-trous network's ops (``heatmap_cli.convert.ops``); None if other."""
    x = args[0]
    if x.dim() != 4:
        return None
    if type(module) is AtrousOp:
        weight = args[1] if len(args) > 1 else getattr(module.module, "weight", None)
        channels = x.shape[1] if module.kind != "conv" else getattr(weight, "shape", (None,))[0]
        rows, cols = module.span(x.shape[2], 0).out, module.span(x.shape[3], 1).out
        return None if channels is None else (x.shape[0], channels, rows, cols)
    if type(module) is AtrousPad:
        left, right, top, bottom = module.pad
        (fh, fw), (h, w) = module.factor, x.shape[2:]
        sides = ((ceil_div(h, fh) + top + bottom) * fh, (ceil_div(w, fw) + left + right) * fw)
        return (*x.shape[:2], *sides)
    return None


def _module_shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """A module's output shape on ``x`` where it is plain arithmetic; None otherwise."""
    if isinstance(module, _SHAPE_KEEPING_MODULES):
        return tuple(x.shape)
    if isinstance(module, nn.Conv2d):
        return _conv_shape(module, x)
    if isinstance(module, _PLAIN_POOLS):
        return _pool_shape(module, x)
    if isinstance(module, _ADAPTIVE_POOLS):
        return _adaptive_shape(module.output_size, x)
    if type(module) is nn.Linear and x.shape[-1:] == (module.in_features,):
        return (*x.shape[:-1], module.out_features)
    if type(module) is nn.Flatten:
        return _flat_shape(x, module.start_dim, module.end_dim)
    if type(module) is LinearAsConv2d and x.dim() == 4:
        _, height, width = module.volume
        rows, cols = x.shape[2] - height + 1, x.shape[3] - width + 1
        return (x.shape[0], module.linear.out_features, rows, cols) if rows > 0 < cols else None
    return None


def _is_meta(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.is_meta


def _as_meta(value: object) -> object:
    """Every tensor in ``value`` (args, nested) as a storage-less one of the same shape."""
    return map_aggregate(
        value,
        lambda v: (
            torch.empty_like(v, device="meta")
            if isinstance(v, torch.Tensor) and not v.is_meta
            else v
        ),
    )


class _ShapeProp(fx.Interpreter):
    """Records every node's output as ``meta["tensor_meta"]``, shapes computed where plain.

    Unlike ``torch.fx.passes.shape_prop.ShapeProp``, it imports nothing per node; batch norms
    are passed by (they keep the shape, and in training mode they would need a batch). It runs on
    the graph module itself: an operation whose shape is not computed here runs on meta tensors,
    a module through a storage-less copy of that module alone, made when first needed.

    Args:
        module: The graph module.
        record: Record the shapes in the nodes' ``meta`` (else only the output is wanted).
    """

    def __init__(self, module: fx.GraphModule, record: bool = True) -> None:
        super().__init__(module)
        self.record = record
        self._meta_modules: dict[str, nn.Module] = {}

    def run_node(self, n: fx.Node) -> object:
        """Runs one node and records what it returned."""
        result = super().run_node(n)
        if not self.record:
            return result
        found = False

        def describe(value: object) -> object:
            nonlocal found
            if not isinstance(value, torch.Tensor):
                return value
            found = True
            return TensorMetadata(
                value.shape, value.dtype, value.requires_grad, value.stride(), None, False, {}
            )

        described = map_aggregate(result, describe)
        if found:
            n.meta["tensor_meta"] = described
        n.meta["type"] = type(result)
        return result

    def call_module(self, target: str, args: tuple, kwargs: dict) -> object:  # type: ignore[override]
        """A plain module's output shape computed; other modules run storage-less."""
        module = self.fetch_attr(target)
        if args and _is_meta(args[0]) and not kwargs:
            shape = _atrous_shape(module, args)
            if shape is None and len(args) == 1:
                shape = _module_shape(module, args[0])
                if shape is not None and isinstance(module, _SHAPE_KEEPING_MODULES):
                    return args[0]
            if shape is not None:
                return _empty(shape, args[0])
        if target not in self._meta_modules:
            tensors = itertools.chain(module.parameters(), module.buffers())
            stored = any(not tensor.is_meta for tensor in tensors)
            self._meta_modules[target] = meta_clone(module) if stored else module
        return self._meta_modules[target](*_as_meta(args), **_as_meta(kwargs))  # type: ignore[arg-type]

    def call_function(self, target: object, args: tuple, kwargs: dict) -> object:  # type: ignore[override]
        """Broadcast shapes for ``+ - *``, elementwise functions, ``flatten``; else calls."""
        values = (*args, *kwargs.values())
        tensors = [a for a in values if isinstance(a, torch.Tensor)]
        if not any(tensor.is_meta for tensor in tensors):
            return super().call_function(target, args, kwargs)  # type: ignore[arg-type]
        first = args[0] if args else None
        if target in _BROADCASTING and len(args) == 2 and not kwargs:
            shape = _broadcast([tensor.shape for tensor in tensors])
            return torch.empty(shape, dtype=torch.result_type(*args), device="meta")
        alone = len(tensors) == 1 and first is tensors[0] and "dtype" not in kwargs
        if target in ELEMENTWISE_FUNCTIONS and alone:  # other arguments are numbers
            return _empty(first.shape, first)
        if target is torch.flatten and first is tensors[0] and not kwargs:
            return _empty(_flat_shape(*args), first)
        if _is_meta(first):
            shape = _own_function_shape(target, args)
            if shape is not None:
                return _empty(shape, first)
        return super().call_function(target, _as_meta(args), _as_meta(kwargs))  # type: ignore[arg-type]

    def call_method(self, target: str, args: tuple, kwargs: dict) -> object:  # type: ignore[override]
        """Elementwise methods and ``flatten`` shaped here; other methods run storage-less."""
        x = args[0] if args else None
        if not any(_is_meta(value) for value in (*args, *kwargs.values())):
            return super().call_method(target, args, kwargs)
        if _is_meta(x) and not kwargs:
            if target in _SHAPE_AND_TYPE_KEEPING_METHODS and len(args) == 1:
                return _empty(x.shape, x)  # type: ignore[union-attr]
            if target == "flatten" and all(isinstance(a, int) for a in args[1:]):
                return _empty(_flat_shape(*args), x)  # type: ignore[arg-type]
        return super().call_method(target, _as_meta(args), _as_meta(kwargs))  # type: ignore[arg-type]


def shape_pass(
    module: fx.GraphModule, size: Pair, batch: int = 2, *, record: bool = True
) -> object:
    """Runs a graph module on a storage-less ``(batch, 3, h, w)`` image, shapes only.

    With ``record``, every node's ``meta["tensor_meta"]`` then describes its output (see
    ``heatmap_cli.convert.fx.node_shape``). The module may hold real weights (nothing is
    computed with them, nor changed) or be a :func:`meta_clone`.

    Args:
        module: The graph module.
        size: ``(h, w)`` of the input.
        batch: Images in the batch (2: a norm in training mode needs more than one value).
        record: Record every node's shape in its ``meta`` (else only the output is wanted).

    Returns:
        The module's output (meta tensors).
    """
    return _ShapeProp(module, record).run(meta_input(module, size, batch))
