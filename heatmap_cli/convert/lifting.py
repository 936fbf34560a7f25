"""Convolutions and batch norms called as ATen functions made modules again.

A graph that comes from ``torch.export`` (a ``.pt2`` archive, or TorchScript through torch.export's
converter) calls ``aten.conv2d(x, weight, bias, ...)`` and ``aten.batch_norm(...)`` on weights it
reads with ``get_attr``, where a Python model calls ``nn.Conv2d`` and ``nn.BatchNorm2d`` modules.
The rewrites that speed up a converted network work on those modules: batch norms folded into
the convolutions before them (:func:`~heatmap_cli.convert.folding.fold_batch_norms`, 1.2-1.5x on
the CPU). :func:`lift_modules` puts every such call back as a module that holds the same tensors
(no copy), so an exported network runs as fast as the Python one it came from.

Only calls whose every setting is a constant are lifted, and a batch norm only when it reads a
lifted convolution (so its input is known to be ``(N, C, H, W)``); anything else stays a call.
The numbers are unchanged: the modules run the same operators on the same tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn

__all__ = ["lift_modules"]

_CONV2D = torch.ops.aten.conv2d.default
_BATCH_NORM = torch.ops.aten.batch_norm.default


def lift_modules(graph_module: fx.GraphModule) -> int:
    """Replaces, in place, ATen convolution and batch-norm calls on stored weights by modules.

    Args:
        graph_module: A graph module (an exported program's module, traced); the new modules
            take its mode.

    Returns:
        How many calls became modules.
    """
    lifted = 0
    convs: set[fx.Node] = set()
    for node in list(graph_module.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is _CONV2D:
            module = _conv(graph_module, node)
        elif node.target is _BATCH_NORM and node.args and node.args[0] in convs:
            module = _batch_norm(graph_module, node)
        else:
            continue
        if module is None:
            continue
        module.train(graph_module.training)
        new = _replace(graph_module, node, module)
        if isinstance(module, nn.Conv2d):
            convs.add(new)
        lifted += 1
    if lifted:
        graph_module.graph.eliminate_dead_code()
        graph_module.graph.lint()
        graph_module.recompile()
    return lifted


def _tensor(graph_module: fx.GraphModule, value: object) -> torch.Tensor | None:
    """The stored tensor a ``get_attr`` node reads, else None."""
    if not isinstance(value, fx.Node) or value.op != "get_attr":
        return None
    found: object = graph_module
    for part in str(value.target).split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, torch.Tensor) else None


def _pair(value: object, default: int) -> tuple[int, int] | None:
    """Two whole numbers from a constant setting (one is repeated), else None."""
    values = [default] if value is None else value
    if isinstance(values, int):
        values = [values]
    if not isinstance(values, Sequence) or len(values) not in (1, 2):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    return values[0], values[-1]


def _conv(graph_module: fx.GraphModule, node: fx.Node) -> nn.Conv2d | None:
    """``aten.conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)``."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    args = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    weight = _tensor(graph_module, args.get("weight"))
    bias = args.get("bias")
    bias_tensor = None if bias is None else _tensor(graph_module, bias)
    stride, padding = _pair(args.get("stride"), 1), _pair(args.get("padding"), 0)
    dilation, groups = _pair(args.get("dilation"), 1), args.get("groups", 1)
    settings = (stride, padding, dilation)
    if weight is None or weight.dim() != 4 or (bias is not None and bias_tensor is None):
        return None
    if any(s is None for s in settings) or not isinstance(groups, int):
        return None
    out_channels, per_group, *kernel = weight.shape
    conv = nn.Conv2d(
        per_group * groups, out_channels, tuple(kernel), stride, padding, dilation, groups,
        bias=bias_tensor is not None, device="meta",
    )  # fmt: skip
    conv.weight = _parameter(weight)
    conv.bias = None if bias_tensor is None else _parameter(bias_tensor)
    return conv


def _batch_norm(graph_module: fx.GraphModule, node: fx.Node) -> nn.BatchNorm2d | None:
    """``aten.batch_norm(input, weight, bias, mean, var, training, momentum, eps, cudnn)``."""
    if len(node.args) != 9 or node.kwargs or node.args[5] is not False:
        return None
    weight, bias, mean, var = (_tensor(graph_module, a) for a in node.args[1:5])
    momentum, eps = node.args[6], node.args[7]
    if mean is None or var is None or (weight is None) != (node.args[1] is None):
        return None
    if (bias is None) != (node.args[2] is None) or not isinstance(eps, float):
        return None
    affine = weight is not None and bias is not None
    if not affine and (weight is not None or bias is not None):
        return None
    norm = nn.BatchNorm2d(len(mean), eps, momentum, affine=affine, device="meta")
    if affine:
        norm.weight, norm.bias = _parameter(weight), _parameter(bias)  # type: ignore[arg-type]
    norm.running_mean, norm.running_var = mean, var
    norm.num_batches_tracked = torch.zeros((), dtype=torch.long, device=mean.device)
    return norm


def _parameter(tensor: torch.Tensor) -> nn.Parameter:
    """The stored tensor as a parameter: the same storage, no copy."""
    if isinstance(tensor, nn.Parameter):
        return tensor
    return nn.Parameter(tensor, requires_grad=False)


def _replace(graph_module: fx.GraphModule, node: fx.Node, module: nn.Module) -> fx.Node:
    """Adds ``module`` under a fresh name and calls it on the node's input instead."""
    kind = "conv" if isinstance(module, nn.Conv2d) else "bn"
    name, index = f"lifted_{kind}", 0
    while hasattr(graph_module, f"{name}_{index}"):
        index += 1
    graph_module.add_submodule(f"{name}_{index}", module)
    with graph_module.graph.inserting_before(node):
        call = graph_module.graph.call_module(f"{name}_{index}", (node.args[0],))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    graph_module.graph.erase_node(node)
    return call
