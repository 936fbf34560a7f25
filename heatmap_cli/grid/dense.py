"""The ``dense`` grid method: one pass of the converted network, at its native stride."""

from __future__ import annotations

import torch
from torch import nn

from heatmap_cli.convert.network import ConvolutionalizedNet
from heatmap_cli.grid.geometry import covered_input
from heatmap_cli.grid.methods import DENSE

__all__ = ["DENSE", "dense_grid", "dense_network"]


def dense_grid(
    net: nn.Module, x: torch.Tensor, stride: int, window: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """``score_grid(method="dense")``: one pass of the converted network at its own stride."""
    del stride, window, batch_size  # the network's own; one pass: the batch is the caller's
    with torch.inference_mode():
        return net(covered_input(x, net.window, net.stride))  # type: ignore[arg-type]


def dense_network(net: ConvolutionalizedNet, stride: int, batch_size: int) -> nn.Module:
    """The engine's network for ``method="dense"``: the converted network itself."""
    del stride, batch_size  # checked to be the native stride; one pass
    return net
