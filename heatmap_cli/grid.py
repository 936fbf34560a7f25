"""``score_grid``: a grid of class scores, one per window of an image, by several methods.

Every method returns the same thing: ``(N, K, rows, cols)`` logits where cell ``(i, j)`` is the
classifier's answer on the window whose top-left corner is ``(i * stride, j * stride)`` in the
input. They differ in how they get there:

* ``"dense"``: one pass of the convolutionalized network, at its native stride;
* ``"crops"``: the unmodified model on every window, batched; the exact reference, and the
  fallback for models that cannot be converted;
* ``"stitch"``: a finer stride ``s/f`` from ``f*f`` passes of the converted network over the
  input shifted by every multiple of ``s/f`` in both directions, interleaved;
* ``"dilate"``: the same finer stride in one pass of an "a trous" network whose last ``f``-fold
  downsampling runs at stride 1 and whose later spatial operations are dilated
  (``heatmap_cli.dilation``). It falls back to stitching, with one warning, for a network it
  cannot dilate.

On a network without zero padding all four agree to float precision. With padding, ``"dilate"``
equals ``"dense"`` on the cells of the native grid and differs from ``"stitch"`` near the
borders of the shifted passes (see ``heatmap_cli.dilation``).
"""

from __future__ import annotations

import itertools
from typing import Protocol

import torch
from torch import nn

from heatmap_cli.errors import ConversionError, GeometryError
from heatmap_cli.geometry import grid_shape
from heatmap_cli.surgery import ConvolutionalizedNet, convolutionalize

__all__ = [
    "METHODS",
    "as_convolutional",
    "check_stride",
    "covered_input",
    "score_grid",
    "stitched_grid",
    "valid_strides",
]


class GridMethod(Protocol):
    """A way to compute the score grid; see ``score_grid`` for the meaning of the arguments."""

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        stride: int | None,
        input_size: tuple[int, int],
        batch_size: int,
    ) -> torch.Tensor: ...


def as_convolutional(model: nn.Module, input_size: tuple[int, int]) -> ConvolutionalizedNet:
    """Returns ``model`` itself if already converted at ``input_size``, else converts it.

    Args:
        model: A classifier, or a ``ConvolutionalizedNet``.
        input_size: ``(h, w)`` training size of the classifier.

    Returns:
        The converted network.
    """
    if isinstance(model, ConvolutionalizedNet):
        if tuple(model.window) != tuple(input_size):
            raise GeometryError(
                f"the network was converted for a {model.window} window, not {tuple(input_size)}"
            )
        return model
    return convolutionalize(model, input_size)


def source_model(model: nn.Module) -> nn.Module:
    """The unmodified classifier behind a converted network (or the model itself)."""
    if isinstance(model, ConvolutionalizedNet) and model.source_model is not None:
        return model.source_model
    return model


def valid_strides(native_stride: int) -> list[int]:
    """Output strides reachable from a native stride: its divisors, largest first."""
    return [d for d in range(native_stride, 0, -1) if native_stride % d == 0]


def check_stride(stride: int, native_stride: int) -> None:
    """Raises ``GeometryError`` unless ``stride`` divides the native stride."""
    if stride <= 0 or native_stride % stride:
        choices = ", ".join(str(s) for s in valid_strides(native_stride))
        raise GeometryError(
            f"stride {stride} does not divide the network's native stride {native_stride}; "
            f"valid strides: {choices}"
        )


def covered_input(x: torch.Tensor, window: tuple[int, int], stride: int) -> torch.Tensor:
    """Drops the bottom/right pixels that no whole window at ``stride`` covers.

    Inputs prepared by ``heatmap_cli.preprocess`` are snapped and lose nothing; an arbitrary
    tensor keeps exactly the region the grid describes.

    Args:
        x: ``(N, C, H, W)`` input.
        window: ``(h, w)`` window.
        stride: Grid stride in pixels.

    Returns:
        ``(N, C, h + stride*a, w + stride*b)``, a view of ``x``.
    """
    rows, cols = grid_shape((x.shape[2], x.shape[3]), window, stride)
    return x[:, :, : window[0] + stride * (rows - 1), : window[1] + stride * (cols - 1)]


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise GeometryError("x must be a float tensor of shape (N, C, H, W)")


def dense_grid(
    model: nn.Module,
    x: torch.Tensor,
    stride: int | None,
    input_size: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """One forward pass of the convolutionalized network at its native stride."""
    del batch_size  # one pass: the batch is the caller's
    net = as_convolutional(model, input_size)
    if stride is not None and stride != net.stride:
        check_stride(stride, net.stride)
        raise GeometryError(
            f"method 'dense' runs at the native stride {net.stride}; for stride {stride} use "
            "method='dilate' or method='stitch'"
        )
    with torch.inference_mode():
        return net(covered_input(x, net.window, net.stride))


def crops_grid(
    model: nn.Module,
    x: torch.Tensor,
    stride: int | None,
    input_size: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """The unmodified model on every window, ``batch_size`` windows per forward pass."""
    window = (int(input_size[0]), int(input_size[1]))
    if stride is None:
        try:
            stride = as_convolutional(model, window).stride
        except ConversionError as error:
            raise GeometryError(
                "method 'crops' needs an explicit stride for a model that cannot be converted "
                f"({error})"
            ) from error
    if stride <= 0:
        raise GeometryError(f"stride must be positive, got {stride}")
    classifier = source_model(model)
    rows, cols = grid_shape((x.shape[2], x.shape[3]), window, stride)
    corners = [(i * stride, j * stride) for i in range(rows) for j in range(cols)]
    scores: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(corners), batch_size):
            chunk = corners[start : start + batch_size]
            windows = torch.stack(
                [x[:, :, top : top + window[0], left : left + window[1]] for top, left in chunk],
                dim=1,
            )  # (N, len(chunk), C, h, w)
            logits = classifier(windows.flatten(0, 1))
            scores.append(logits.reshape(x.shape[0], len(chunk), -1))
    grid = torch.cat(scores, dim=1)  # (N, rows*cols, K), cells in row-major order
    return grid.permute(0, 2, 1).reshape(x.shape[0], -1, rows, cols)


def native_network(model: nn.Module, input_size: tuple[int, int]) -> ConvolutionalizedNet:
    """The converted network at its native stride behind ``model``.

    Args:
        model: A classifier, a ``ConvolutionalizedNet``, or a finer-stride network made from one
            by ``heatmap_cli.dilation.dilate`` (which keeps its native network as ``.base``).
        input_size: ``(h, w)`` training size of the classifier.

    Returns:
        The native-stride converted network.
    """
    net = as_convolutional(model, input_size)
    base = getattr(net, "base", None)
    return base if isinstance(base, ConvolutionalizedNet) else net


def stitched_grid(
    net: ConvolutionalizedNet, x: torch.Tensor, stride: int, *, batch_size: int = 32
) -> torch.Tensor:
    """Shift-and-stitch: a grid at ``stride = net.stride / f`` from ``f*f`` shifted passes.

    The pass for offset ``(dy, dx)`` (every multiple of ``stride`` below the native stride, in
    both directions) sees ``x[:, :, dy:, dx:]`` cut to the largest ``window + native*k`` it
    covers, and its cells land at ``(i*f + dy/stride, j*f + dx/stride)``. Passes whose inputs have
    the same shape run together, ``batch_size`` passes per forward.

    Args:
        net: Converted network at its native stride.
        x: ``(N, C, H, W)`` normalized images, ``H, W >= window``.
        stride: Output stride; must divide ``net.stride``.
        batch_size: Shifted passes per forward pass.

    Returns:
        ``(N, K, rows, cols)`` logits, ``(rows, cols) = grid_shape((H, W), window, stride)``;
        cell ``(i, j)`` is the window whose top-left corner is ``(i*stride, j*stride)``.

    Raises:
        GeometryError: If ``stride`` does not divide the native stride.
    """
    check_stride(stride, net.stride)
    window, factor, n = net.window, net.stride // stride, x.shape[0]
    rows, cols = grid_shape((x.shape[2], x.shape[3]), window, stride)
    # pass (a, b) is shifted by (a*stride, b*stride) and fills cells (a::factor, b::factor)
    passes: dict[tuple[int, ...], list[tuple[int, int, torch.Tensor]]] = {}
    for a, b in itertools.product(range(min(factor, rows)), range(min(factor, cols))):
        shifted = covered_input(x[:, :, a * stride :, b * stride :], window, net.stride)
        passes.setdefault(tuple(shifted.shape), []).append((a, b, shifted))

    grid: torch.Tensor | None = None
    with torch.inference_mode():
        for same_shape in passes.values():
            for start in range(0, len(same_shape), batch_size):
                chunk = same_shape[start : start + batch_size]
                scores = net(torch.cat([shifted for _, _, shifted in chunk]))
                if grid is None:
                    grid = scores.new_empty(n, scores.shape[1], rows, cols)
                for k, (a, b, _) in enumerate(chunk):
                    grid[:, :, a::factor, b::factor] = scores[k * n : (k + 1) * n]
    assert grid is not None  # rows, cols >= 1: the (0, 0) pass always exists
    return grid


def stitch_grid(
    model: nn.Module,
    x: torch.Tensor,
    stride: int | None,
    input_size: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """Shift-and-stitch at a stride that divides the native one (see ``stitched_grid``)."""
    if stride is None:
        stride = as_convolutional(model, input_size).stride
    return stitched_grid(native_network(model, input_size), x, stride, batch_size=batch_size)


def dilate_grid(
    model: nn.Module,
    x: torch.Tensor,
    stride: int | None,
    input_size: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """One pass of the "a trous" network for ``stride`` (see ``heatmap_cli.dilation``)."""
    # dilation imports this module; importing it here keeps the import graph acyclic
    from heatmap_cli.dilation import StitchedNet, dilate

    net = as_convolutional(model, input_size)
    finer = dilate(net, net.stride if stride is None else stride)
    if isinstance(finer, StitchedNet):  # could not be dilated; the warning was given once
        return stitched_grid(finer.base, x, finer.stride, batch_size=batch_size)
    with torch.inference_mode():
        return finer(covered_input(x, finer.window, finer.stride))


METHODS: dict[str, GridMethod] = {
    "dense": dense_grid,
    "stitch": stitch_grid,
    "dilate": dilate_grid,
    "crops": crops_grid,
}


def score_grid(
    model: nn.Module,
    x: torch.Tensor,
    stride: int | None = None,
    method: str = "dense",
    input_size: tuple[int, int] = (224, 224),
    *,
    batch_size: int = 32,
) -> torch.Tensor:
    """Class scores for every window of an image batch.

    Args:
        model: The classifier (eval mode), or a network returned by ``convolutionalize`` or by
            ``heatmap_cli.dilation.dilate`` (reused as is, which saves converting it on every
            call). Must be on ``x``'s device.
        x: ``(N, 3, H, W)`` images normalized with the model's mean/std. Sizes of the form
            ``input_size + stride * k`` are covered exactly; otherwise the bottom/right pixels
            that no whole window covers are ignored.
        stride: Output stride in input pixels; None means the stride of ``model`` (the native
            one, or that of a network made by ``dilate``). For ``"stitch"``/``"dilate"`` it must
            divide the native stride; ``"crops"`` takes any.
        method: ``"dense"``, ``"stitch"``, ``"dilate"`` or ``"crops"``.
        input_size: ``(h, w)`` the model was trained at: the window of one cell.
        batch_size: Windows per forward pass for ``"crops"``; shifted passes per forward pass
            for ``"stitch"`` (and for ``"dilate"`` when it falls back to stitching).

    Returns:
        ``(N, K, rows, cols)`` float logits; cell ``(i, j)`` is the window whose top-left corner
        is ``(i * stride, j * stride)`` in ``x``.

    Raises:
        GeometryError: For an input smaller than the window, an invalid stride, or an unknown
            method.
        ConversionError: If a method that needs the converted network cannot convert the model
            (use ``"crops"``).
    """
    _check_input(x)
    if method not in METHODS:
        raise GeometryError(f"unknown method {method!r}; choose from {', '.join(sorted(METHODS))}")
    if batch_size <= 0:
        raise GeometryError(f"batch_size must be positive, got {batch_size}")
    window = (int(input_size[0]), int(input_size[1]))
    grid_shape((x.shape[2], x.shape[3]), window, stride or 1)  # raises for too-small inputs
    return METHODS[method](model, x, stride, window, batch_size)
