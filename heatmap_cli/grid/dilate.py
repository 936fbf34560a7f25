"""A finer output stride in one pass: the "a trous" (with holes) rewrite of a converted network.

A converted network with native stride ``s`` gives one cell every ``s`` pixels. For a stride
``t = s / f``, the downsampling steps that make the last factor ``f`` run at stride 1 instead, and
every spatial operation after them (convolutions, pools, the converted head's window pooling or
its big first convolution) reads its input with holes: dilation and padding multiplied by how
much denser its input has become. Nothing else changes, and no weight is copied.

The rewrite (``heatmap_cli.convert.atrous``) is generic over the ``torch.fx`` graph: every operation
that reads a denser map, or makes one, must be

* a convolution or pool (``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.AvgPool2d``, their functional
  forms, timm's ``Conv2dSame``/``MaxPool2dSame``/``AvgPool2dSame``, the converted head's
  ``dense_pool`` and ``LinearAsConv2d``/``linear_as_conv2d``) or a constant pad: replaced by an
  ``AtrousOp``/``AtrousPad`` (average pools have no dilation in torch; ``AtrousOp`` sums shifted
  slices and divides by the count torch would use, ``count_include_pad`` included);
* an operation on each position alone (activations, batch norm, norms and Linears over channels,
  residual additions, concatenation and splits along channels, channel shuffles, permutes);
* a reduction to one value per image (squeeze-and-excitation), which then averages a denser map.

Anything else (upsampling, a leaf module it does not know, a reshape that moves height or
width) and the network is not dilated: ``dilate`` warns once and returns a
``heatmap_cli.grid.stitch.StitchedNet``, which computes the same grid by shift-and-stitch.

Geometry. Position ``p`` of a map ``D`` times denser sits where position ``p / D`` of the original
map sits, so with padding ``P * D`` every rewritten operation lines up with the original, and cell
``(i, j)`` of the result is the window at ``(i*t, j*t)``. Each rewritten operation also pads (or
crops) its bottom/right edge so that its output is exactly ``D`` times as long as the original
output; then the positions at multiples of ``D`` see exactly what the original network sees, zero
padding included, and **on the cells of the native grid the dilated network equals the dense
one**, padded network or not (to float rounding; squeeze-and-excitation excepted, see below).
TF-style "same" padding, whose top/left part depends on the input length, is computed from the
original length at every call for the same reason.

Exactness. Without zero padding every cell equals the crop at its window, as with stitching.
With padding, the cells between the native ones differ from stitching near the borders of the
shifted passes: a pass shifted by ``(dy, dx)`` sees zeros above row ``dy`` and left of column
``dx`` (and past the end of its cut) where the dilated pass sees the image, and the layers
before the removed strides run once, on the whole image. The difference fades with the distance
from those borders and is gone beyond the network's receptive field; on real networks it is
smaller than the dense grid's own departure from per-window crops. Squeeze-and-excitation means
average a denser map than any single pass, so on such networks no cell is exactly the dense one.
"""

from __future__ import annotations

import warnings

import torch
from torch import fx, nn

from heatmap_cli.convert.atrous import atrous_graph_module
from heatmap_cli.convert.fx import UnsupportedGraph
from heatmap_cli.convert.network import ConvolutionalizedNet
from heatmap_cli.grid.geometry import check_stride, covered_input
from heatmap_cli.grid.registry import GridMethod, register_method
from heatmap_cli.grid.stitch import StitchedNet, native_network, shift_and_stitch

__all__ = ["DILATE", "DilatedNet", "dilate", "dilate_grid", "dilate_network"]


class DilatedNet(ConvolutionalizedNet):
    """A converted network rewritten "a trous": one cell every ``base.stride / factor`` pixels.

    ``forward`` maps ``(N, 3, H, W)`` to ``(N, K, rows, cols)`` with ``(rows, cols) =
    grid_shape((H, W), window, stride)``; cell ``(i, j)`` is the window at ``(i*stride,
    j*stride)``. Its graph computes the cells and cuts off those past the grid, so like every
    ``ConvolutionalizedNet`` it runs nothing but its graph.

    Attributes:
        base: The native-stride network it was made from (weights shared, not copied).
        factor: ``base.stride // stride``.
    """

    def __init__(
        self, graph_module: fx.GraphModule, *, base: ConvolutionalizedNet, factor: int
    ) -> None:
        super().__init__(
            graph_module,
            stride=base.stride // factor,
            window=base.window,
            native_stride=base.stride,
            global_context=base.global_context,
            source_model=base.source_reference,  # as weakly as the base holds it
        )
        object.__setattr__(self, "base", base)  # not a submodule: its weights are already here
        self.factor = factor


# Where dilate() keeps what it built, on the converted network itself: it lives as long as that
# network does, and is rebuilt for a new conversion.
_CACHE_ATTRIBUTE = "_finer_stride_networks"


def dilate(net: ConvolutionalizedNet, stride: int) -> ConvolutionalizedNet | StitchedNet:
    """The network for a finer output stride, built once per ``(net, stride)`` and cached.

    The result is a ``DilatedNet`` (one pass) or, for a network with an operation the rewrite
    does not know, a ``StitchedNet`` (``factor**2`` shifted passes); a ``UserWarning`` says so
    once, when it is built. Either maps ``(N, 3, H, W)`` to ``(N, K, rows, cols)`` with
    ``(rows, cols) = grid_shape((H, W), net.window, stride)``, cell ``(i, j)`` being the window at
    ``(i*stride, j*stride)``. Neither the caller's model nor ``net`` is modified: the rewritten
    graph lives in a new ``GraphModule`` whose new operations read the shared weights.

    Args:
        net: A converted network (or a result of ``dilate``, whose ``base`` is used).
        stride: Output stride in input pixels; must divide the native stride.

    Returns:
        A network with ``.stride == stride`` and ``.window == net.window``: the native-stride
        network itself when ``stride`` is the native stride.

    Raises:
        GeometryError: If ``stride`` does not divide the native stride (the message lists the
            valid strides).
        TypeError: If ``net`` is not a converted network.
    """
    base = native_network(net)
    if not isinstance(base, ConvolutionalizedNet):
        raise TypeError(
            f"dilate() takes a network from convolutionalize(), not {type(net).__name__}"
        )
    check_stride(stride, base.stride)
    factor = base.stride // stride
    if factor == 1:
        return base
    built: dict[int, ConvolutionalizedNet | StitchedNet]
    built = base.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
    if factor not in built:
        built[factor] = _build(base, factor)
    return built[factor]


def _build(base: ConvolutionalizedNet, factor: int) -> ConvolutionalizedNet | StitchedNet:
    stride = base.stride // factor
    try:
        graph_module = atrous_graph_module(base.graph_module, base.window, stride, factor)
    except UnsupportedGraph as reason:
        model = base.source_model if base.source_model is not None else base
        warnings.warn(
            f"cannot dilate {type(model).__name__} for stride {stride}: {reason}; computing the "
            f"grid by shift-and-stitch instead ({factor * factor} passes, slower, same cells)",
            stacklevel=3,
        )
        return StitchedNet(base, factor=factor, reason=str(reason))
    return DilatedNet(graph_module, base=base, factor=factor)


# --- The grid method (registered in heatmap_cli.grid.registry)
# -------------------------------------------


def dilate_grid(
    net: nn.Module, x: torch.Tensor, stride: int, window: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """``score_grid(method="dilate")``: one pass of the a-trous network for ``stride``.

    A network that cannot be dilated is stitched, ``batch_size`` shifted passes per forward.
    """
    del window  # the network's own
    finer = dilate(net, stride)  # type: ignore[arg-type]
    if isinstance(finer, StitchedNet):  # could not be dilated; the warning was given once
        return shift_and_stitch(finer.base, x, finer.stride, batch_size=batch_size)
    with torch.inference_mode():
        return finer(covered_input(x, finer.window, finer.stride))


def dilate_network(
    net: ConvolutionalizedNet, stride: int, batch_size: int
) -> ConvolutionalizedNet | StitchedNet:
    """The engine's network for ``method="dilate"``: :func:`dilate` (cached on ``net``)."""
    del batch_size  # one pass; a fallback to stitching keeps dilate's own
    return dilate(net, stride)


DILATE = register_method(
    GridMethod(
        "dilate",
        "a finer stride in one pass of the 'a trous' network (stitches where it cannot)",
        dilate_grid,
        dilate_network,
        tileable=True,
        folds_norms=True,
    )
)
