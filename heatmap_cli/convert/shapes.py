"""Shape-only passes: a classifier's graph run on storage-less (meta) tensors.

The graph walkers need every node's output shape at a few input sizes. Running the graph on
meta tensors gives them without computing anything, but torch runs most meta operations through
Python reference implementations that import ``torch._dynamo`` on first use (about a second, the
better part of converting the default model). So the pass computes the shape itself where it is
plain: batch norms and elementwise modules keep their input's shape, ``+``, ``-``, ``*``
broadcast theirs, an adaptive average pool's is its output size and a linear layer's its
features; every other operation runs on meta tensors as usual.
"""

from __future__ import annotations

import copy
import itertools
import operator
from collections.abc import Callable

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from heatmap_cli.convert.fx import ELEMENTWISE_MODULES, Pair

__all__ = ["meta_clone", "meta_input", "shape_pass"]

_SHAPE_KEEPING_MODULES = (nn.modules.batchnorm._BatchNorm, *ELEMENTWISE_MODULES)
_BROADCASTING: frozenset[Callable[..., object]] = frozenset(
    {operator.add, operator.sub, operator.mul, torch.add, torch.sub, torch.mul}
)
"""Arithmetic whose output has the broadcast shape and the promoted dtype of its two operands."""


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


class _ShapeProp(ShapeProp):
    """Shape propagation that computes plain shapes itself (see the module's docstring).

    Batch norms are passed by: they keep the shape, and in training mode they need a batch.
    """

    def call_module(self, target: str, args: tuple, kwargs: dict) -> object:  # type: ignore[override]
        """A shape-keeping module's input; plain shapes computed; other modules are called."""
        module = self.fetch_attr(target)
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            if isinstance(module, _SHAPE_KEEPING_MODULES):
                return args[0]
            x = args[0]
            if isinstance(module, nn.AdaptiveAvgPool2d) and x.is_meta:
                return _adaptive_pooled(x, module.output_size)
            if type(module) is nn.Linear and x.is_meta and x.shape[-1:] == (module.in_features,):
                return torch.empty(
                    (*x.shape[:-1], module.out_features), dtype=x.dtype, device="meta"
                )
        return super().call_module(target, args, kwargs)

    def call_function(self, target: object, args: tuple, kwargs: dict) -> object:  # type: ignore[override]
        """An empty meta tensor of the broadcast shape for ``+ - *``; else calls ``target``."""
        tensors = [arg for arg in args if isinstance(arg, torch.Tensor)]
        if (
            target in _BROADCASTING
            and len(args) == 2
            and not kwargs
            and tensors
            and all(tensor.is_meta for tensor in tensors)
        ):
            shape = torch.broadcast_shapes(*(tensor.shape for tensor in tensors))
            return torch.empty(shape, dtype=torch.result_type(*args), device="meta")
        return super().call_function(target, args, kwargs)  # type: ignore[arg-type]


def _adaptive_pooled(x: torch.Tensor, output_size: object) -> torch.Tensor:
    """An empty meta ``(..., h, w)`` tensor: ``x`` adaptively pooled to ``output_size``."""
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    height, width = (x.shape[-2 + i] if side is None else side for i, side in enumerate(size))
    return torch.empty((*x.shape[:-2], height, width), dtype=x.dtype, device="meta")


def shape_pass(meta_module: fx.GraphModule, size: Pair, batch: int = 2) -> object:
    """Runs a meta-device graph module on a ``(batch, 3, h, w)`` image, shapes only.

    Every node's ``meta["tensor_meta"]`` then describes its output (see
    ``heatmap_cli.convert.fx.node_shape``).

    Args:
        meta_module: A graph module from :func:`meta_clone`.
        size: ``(h, w)`` of the input.
        batch: Images in the batch (2: a norm in training mode needs more than one value).

    Returns:
        The module's output (meta tensors).
    """
    return _ShapeProp(meta_module).propagate(meta_input(meta_module, size, batch))
