"""A toy grid method, written the way a new method is: one file, plus one registry line.

The registry line, ``register_method(MIRROR)``, is run by the ``mirror_method`` fixture of the
tests that use it (and undone after them), so that other tests see the built-in methods only.

``mirror``: the dense grid of the horizontally mirrored image, mirrored back. Each cell is then
the converted network's answer on the mirrored window at the same place.
"""

from __future__ import annotations

import torch
from torch import nn

from heatmap_cli.convert.network import ConvolutionalizedNet
from heatmap_cli.grid import GridMethod
from heatmap_cli.grid.geometry import covered_input


class Mirrored(nn.Module):
    """A converted network run on the mirrored input, its grid mirrored back."""

    def __init__(self, net: ConvolutionalizedNet) -> None:
        super().__init__()
        self.net = net
        self.stride, self.window, self.native_stride = net.stride, net.window, net.native_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flip(3)).flip(3)


def mirrored_grid(net, x, stride, window, batch_size):
    with torch.inference_mode():
        return Mirrored(net)(covered_input(x, window, stride))


def mirrored_network(net, stride, batch_size):
    return Mirrored(net)


MIRROR = GridMethod(
    "mirror",
    "the dense grid of the mirrored image, mirrored back",
    mirrored_grid,
    mirrored_network,
    strides="native",
    folds_norms=True,
    exact=False,  # the mirrored window is not the window
)
