"""``score_grid``: a grid of class scores, one per window of an image batch, by any method.

A model given as it is (not converted) is converted once per ``(model, window)`` and the
conversion reused while the model stays the same (:mod:`heatmap_cli.grid.conversions` says what
counts as the same); the window is read from the model where it records one.
"""

from __future__ import annotations

import torch
from torch import nn

from heatmap_cli.convert.network import (
    ConvolutionalizedNet,
    check_classifier,
    convolutionalize,
    source_model,
    window_size,
)
from heatmap_cli.convert.windows import grid_shape
from heatmap_cli.errors import ConversionError, GeometryError
from heatmap_cli.grid.conversions import converted, recorded_window
from heatmap_cli.grid.registry import GridMethod, get_method
from heatmap_cli.grid.stitch import StitchedNet

__all__ = ["DEFAULT_WINDOW", "as_convolutional", "score_grid"]

DEFAULT_WINDOW = (224, 224)
"""The window of a model that records none and is given no ``input_size``: ImageNet's 224."""


def as_convolutional(
    model: nn.Module, input_size: tuple[int, int]
) -> ConvolutionalizedNet | StitchedNet:
    """Returns ``model`` itself if already converted at ``input_size``, else converts it.

    Args:
        model: A classifier, a ``ConvolutionalizedNet`` or a finer-stride network made from
            one (``dilate``'s ``DilatedNet`` or ``StitchedNet``).
        input_size: ``(h, w)`` training size of the classifier.

    Returns:
        The converted network.
    """
    return _converted(model, input_size, cached=False)


def _converted(
    model: nn.Module, input_size: tuple[int, int], *, cached: bool
) -> ConvolutionalizedNet | StitchedNet:
    if isinstance(model, (ConvolutionalizedNet, StitchedNet)):
        if tuple(model.window) != tuple(input_size):
            raise GeometryError(
                f"the network was converted for a {model.window} window, not {tuple(input_size)}"
            )
        return model
    window = tuple(input_size)
    return converted(model, window) if cached else convolutionalize(model, window)  # type: ignore[arg-type]


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise GeometryError(
            f"x must be a float tensor of shape (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )


def _network_and_stride(
    method: GridMethod, model: nn.Module, stride: int | None, window: tuple[int, int]
) -> tuple[nn.Module, int]:
    """What ``method.grid`` runs on, and the stride it runs at."""
    if method.needs_converted:
        net = _converted(model, window, cached=True)
        return net, method.resolve_stride(stride, net.native_stride, net.stride)
    if stride is None:
        try:
            stride = _converted(model, window, cached=True).stride
        except ConversionError as error:
            raise GeometryError(
                f"method {method.name!r} needs an explicit stride for "
                f"{type(source_model(model)).__name__}: it cannot be converted, so it has no "
                "native stride to default to; pass stride=, e.g. stride=32"
            ) from error
    return model, method.resolve_stride(stride, stride)


def score_grid(
    model: nn.Module,
    x: torch.Tensor,
    stride: int | None = None,
    method: str = "dense",
    input_size: int | tuple[int, int] | None = None,
    *,
    batch_size: int = 32,
) -> torch.Tensor:
    """Class scores for every window of an image batch.

    Args:
        model: The classifier in eval mode (never changed; a model in training mode is
            refused), in any floating dtype; a network returned by ``convolutionalize`` or by
            ``heatmap_cli.grid.dilate.dilate`` (used as is); or a loaded model
            (``heatmap_cli.load_model``: its ``model`` and window). A classifier is converted
            on its first call and the conversion reused while the model stays the same
            (``heatmap_cli.grid.conversions``). Must be on ``x``'s device.
        x: ``(N, 3, H, W)`` images normalized with the model's mean/std. Sizes of the form
            ``input_size + stride * k`` are covered exactly; otherwise the bottom/right pixels
            that no whole window covers are ignored.
        stride: Output stride in input pixels; None means the stride of ``model`` (the native
            one, or that of a network made by ``dilate``). For ``"stitch"``/``"dilate"`` it must
            divide the native stride; ``"crops"`` takes any.
        method: A registered method (:func:`method_names`): ``"dense"``, ``"stitch"``,
            ``"dilate"`` or ``"crops"``.
        input_size: ``(h, w)`` the model was trained at (one int: a square): the window of one
            cell. None reads it from the model where it records one (a converted network's
            ``window``, a loaded model's ``input_size``, timm's ``pretrained_cfg``), else
            :data:`DEFAULT_WINDOW`.
        batch_size: Windows per forward pass for ``"crops"``; shifted passes per forward pass
            for ``"stitch"`` (and for ``"dilate"`` when it falls back to stitching).

    Returns:
        ``(N, K, rows, cols)`` float logits; cell ``(i, j)`` is the window whose top-left corner
        is ``(i * stride, j * stride)`` in ``x``.

    Raises:
        TypeError: ``model`` is not a module, ``x`` not a tensor, ``input_size`` neither an int
            nor a pair of ints.
        TrainingModeError: The model is in training mode (call ``model.eval()`` first).
        InvalidOptionError: For an unknown method.
        GeometryError: For an input smaller than the window or an invalid stride.
        ConversionError: If a method that needs the converted network cannot convert the model
            (use ``"crops"``).
    """
    if input_size is None:
        input_size = recorded_window(model) or DEFAULT_WINDOW
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        model = model.model  # type: ignore[attr-defined]  # a loaded model
    check_classifier(model)
    _check_input(x)
    grid_method = get_method(method)
    if batch_size <= 0:
        raise GeometryError(f"batch_size must be positive, got {batch_size}")
    window = window_size(input_size)
    grid_shape((x.shape[2], x.shape[3]), window, stride or 1)  # raises for too-small inputs
    net, stride = _network_and_stride(grid_method, model, stride, window)
    return grid_method.grid(net, x, stride, window, batch_size)
