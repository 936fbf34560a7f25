"""The receptive field of one cell: the input pixels it depends on.

Computed from the network, not typed in: by propagating (jump, offset, size) through the
``torch.fx`` graph from the kernels, strides, dilations and paddings of its layers (exact,
instant, any input size; ``heatmap_cli.grid.tiling.analysis``), or, for networks whose graph holds
an operation that analysis does not know, by an empirical probe: a NaN pixel in the input marks
exactly the output cells that depend on it, since NaN survives convolution, batch norm, ReLU and
max pooling.

Also here, for every part of the tiling: a network's cell geometry (:func:`net_geometry`) and the
period after which its computation repeats (:func:`lattice_period`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import fx, nn

from heatmap_cli.convert.fx import UnsupportedGraph
from heatmap_cli.errors import GeometryError
from heatmap_cli.grid.tiling.analysis import Span, graph_field

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldMethod",
    "lattice_period",
    "net_device_dtype",
    "net_geometry",
    "receptive_field",
    "size_or_default",
]

ReceptiveFieldMethod = Literal["auto", "analytic", "probe"]


@dataclass(frozen=True)
class ReceptiveField:
    """The input pixels on which one cell of a network's score grid depends.

    Cell ``(i, j)`` depends on rows ``[i*stride + top, i*stride + top + height)`` and columns
    ``[j*stride + left, j*stride + left + width)`` of the input; positions outside the input are
    zero padding. Cell ``(i, j)``'s *window* starts at ``(i*stride, j*stride)``, so for zero-padded
    networks ``top`` and ``left`` are negative and the field is larger than the window.

    Attributes:
        stride: Spacing of the cells in input pixels (the network's ``.stride``).
        top: First row of cell ``(0, 0)``'s field, relative to its window (may be negative).
        left: First column of cell ``(0, 0)``'s field, relative to its window.
        height: Rows in the field.
        width: Columns in the field.
    """

    stride: int
    top: int
    left: int
    height: int
    width: int

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the field in input pixels."""
        return self.height, self.width

    def margins(self, window: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """How far the field reaches beyond the window on each side, in pixels (0 if not).

        Args:
            window: ``(h, w)`` window of a cell.

        Returns:
            ``((above, below), (left, right))``.
        """
        return (
            (max(0, -self.top), max(0, self.top + self.height - window[0])),
            (max(0, -self.left), max(0, self.left + self.width - window[1])),
        )

    def cells_dropped(self, window: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Cells an interior tile loses on each side because their field leaves the tile.

        Args:
            window: ``(h, w)`` window of a cell.

        Returns:
            ``((top, bottom), (left, right))`` counts of cells.
        """
        (above, below), (before, after) = self.margins(window)
        s = self.stride
        return ((-(-above // s), -(-below // s)), (-(-before // s), -(-after // s)))


def net_geometry(net: nn.Module) -> tuple[int, tuple[int, int]]:
    """``(stride, (win_h, win_w))`` of a network that computes a score grid."""
    stride = getattr(net, "stride", None)
    window = getattr(net, "window", None)
    if not isinstance(stride, int) or stride <= 0 or window is None or len(window) != 2:
        raise GeometryError(
            f"{type(net).__name__} has no positive integer .stride and (h, w) .window; convert "
            "the classifier with convolutionalize() first"
        )
    return stride, (int(window[0]), int(window[1]))


def lattice_period(net: nn.Module, stride: int) -> int:
    """Cells after which the network's computation repeats: ``native_stride / stride``.

    A finer-stride network made by shift-and-stitch or "a trous" (which record
    ``native_stride``) lays out its passes or holes over the native stride; tiles must start on
    that lattice and have lengths congruent to the image's modulo it.
    """
    native = getattr(net, "native_stride", stride)
    if not isinstance(native, int) or native <= 0 or native % stride:
        return 1
    return native // stride


def size_or_default(net: nn.Module, input_size: tuple[int, int] | None) -> tuple[int, int]:
    """``input_size`` as ints, or ``window + 2 * native stride`` (a size of every lattice)."""
    if input_size is not None:
        return int(input_size[0]), int(input_size[1])
    stride, window = net_geometry(net)
    lattice = stride * lattice_period(net, stride)
    return window[0] + 2 * lattice, window[1] + 2 * lattice


def net_device_dtype(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a network's weights live, and their dtype (the CPU and float32 without any)."""
    for tensor in net.parameters():
        return tensor.device, tensor.dtype
    for tensor in net.buffers():
        return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def receptive_field(
    net: nn.Module,
    input_size: tuple[int, int] | None = None,
    *,
    method: ReceptiveFieldMethod = "auto",
) -> ReceptiveField:
    """Measures which input pixels one cell of a network's score grid depends on.

    Args:
        net: A module ``(N, 3, H, W) -> (N, K, h, w)`` with ``.stride`` (cell spacing in pixels)
            and ``.window`` (``(h, w)`` window of a cell), e.g. a ``ConvolutionalizedNet``.
            It must be in eval mode (batch statistics make every cell depend on every pixel).
        input_size: ``(H, W)`` of the input the field is for, of the form ``window + stride*k``.
            Only needed for networks whose padding depends on the input size (TensorFlow "same"
            padding), where the field is the same for every size of that form (for finer-stride
            networks: every size congruent modulo the native stride). Default:
            ``window + 2 * native stride``.
        method: ``"analytic"`` propagates (jump, offset, size) through ``net.graph_module``;
            ``"probe"`` runs the network on images with one NaN pixel; ``"auto"`` uses the
            analysis when the graph holds only operations it knows, else the probe.

    Returns:
        The receptive field of one cell.

    Raises:
        GeometryError: If cells depend on the whole image (global pooling inside the body, e.g.
            squeeze-and-excitation, or batch norm in training mode): no tiling is exact then.
            Also if ``method="analytic"`` meets an operation it does not know.
    """
    stride, window = net_geometry(net)
    input_size = size_or_default(net, input_size)
    if method not in ("auto", "analytic", "probe"):
        raise GeometryError(f"unknown receptive field method {method!r}")
    if method != "probe":
        try:
            return _analytic_field(net, input_size, stride)
        except UnsupportedGraph as reason:
            if method == "analytic":
                raise GeometryError(
                    f"cannot analyse the receptive field of {type(net).__name__}: {reason}"
                ) from None
    return _probe_field(net, stride, window, input_size)


def _analytic_field(net: nn.Module, input_size: tuple[int, int], stride: int) -> ReceptiveField:
    """Propagates the receptive field through ``net.graph_module``, on shapes only."""
    graph_module = getattr(net, "graph_module", None)
    if not isinstance(graph_module, fx.GraphModule):
        raise UnsupportedGraph(f"{type(net).__name__} has no .graph_module to analyse")
    rows, cols = graph_field(graph_module, input_size, stride, type(net).__name__)
    return ReceptiveField(stride, rows.offset, cols.offset, rows.size, cols.size)


# --- Empirical probe ---------------------------------------------------------------------------


def _probe_field(
    net: nn.Module,
    stride: int,
    window: tuple[int, int],
    input_size: tuple[int, int],
    *,
    max_length: int = 16384,
) -> ReceptiveField:
    """Measures the field by running the network on images with one NaN pixel each.

    Along each axis, a batch of ``stride`` thin images (one window across) carries the NaN at
    ``stride`` consecutive positions ``p``; cell ``j`` turns NaN iff ``j*stride + offset <= p <
    j*stride + offset + size``, so the first and last cells reached over all phases pin ``offset``
    and ``size`` down to the pixel. The image doubles until the NaN's reach stays clear of its
    ends by more than the field (near an edge, missing neighbours could hide a dependence).
    """
    rows, cols = (
        _probe_axis(net, axis, stride, window, input_size[axis], max_length) for axis in (0, 1)
    )
    return ReceptiveField(stride, rows.offset, cols.offset, rows.size, cols.size)


def _nan_hits(net: nn.Module, images: torch.Tensor, axis: int) -> torch.Tensor:
    """``(images, cells along the axis)``: which cells of each image's grid turned NaN."""
    device, dtype = net_device_dtype(net)
    with torch.inference_mode():
        return torch.cat(
            [
                torch.isnan(net(chunk.to(device=device, dtype=dtype)))
                .any(dim=(1, 3) if axis == 0 else (1, 2))
                .cpu()
                for chunk in images.split(4)
            ]
        )


def _probe_axis(
    net: nn.Module,
    axis: int,
    stride: int,
    window: tuple[int, int],
    like: int,
    max_length: int,
) -> Span:
    lattice = stride * lattice_period(net, stride)
    remainder = (like - window[axis]) % lattice  # lengths congruent to the input's: same pads
    generator = torch.Generator().manual_seed(0)
    across = window[1 - axis]
    steps = 4 * -(-window[axis] // lattice)  # first guess: a field twice the window
    while True:
        length = window[axis] + remainder + lattice * steps
        base = lattice * (steps // 2)
        shape = (stride, 3, length, across) if axis == 0 else (stride, 3, across, length)
        images = torch.randn(shape, generator=generator)
        for phase in range(stride):
            pixel = (base + phase, across // 2) if axis == 0 else (across // 2, base + phase)
            images[phase, :, pixel[0], pixel[1]] = float("nan")
        hits = _nan_hits(net, images, axis)
        if not hits.any(dim=1).all():
            raise GeometryError(
                f"the NaN probe reached no cell of {type(net).__name__}: an operation in it "
                "swallows NaN, so its receptive field cannot be measured"
            )
        cells = torch.arange(hits.shape[1])
        first = torch.where(hits, cells, hits.shape[1]).amin(dim=1)
        last = torch.where(hits, cells, -1).amax(dim=1)
        pixel = base + torch.arange(stride)
        offset = int((pixel - stride * last).min())
        extent = int((pixel - stride * first).max()) + 1 - offset
        clear = bool((first > 0).all() and (last < hits.shape[1] - 1).all())
        if clear and base >= extent + stride and length - base >= extent + 2 * stride:
            return Span(stride, offset, extent)
        if length >= max_length:
            raise GeometryError(
                f"every cell of {type(net).__name__} depends on more than {max_length // 2} "
                "pixels (global pooling inside the network?); tiles cannot reproduce the "
                "untiled grid exactly"
            )
        steps *= 2
