"""``score_grid``: a grid of class scores, one per window of an image, and the method registry.

Every method returns the same thing: ``(N, K, rows, cols)`` logits where cell ``(i, j)`` is the
classifier's answer on the window whose top-left corner is ``(i * stride, j * stride)`` in the
input. They differ in how they get there; each is a :class:`GridMethod`, registered here once:

* ``"dense"``: one pass of the convolutionalized network, at its native stride;
* ``"stitch"``: a finer stride ``s/f`` from ``f*f`` shifted passes, interleaved
  (``heatmap_cli.stitch``);
* ``"dilate"``: the same finer stride in one pass of an "a trous" network
  (``heatmap_cli.dilate``), which falls back to stitching, with one warning, for a network it
  cannot dilate;
* ``"crops"``: the unmodified model on every window, batched; the exact reference, and the
  fallback for models that cannot be converted (``heatmap_cli.crops``).

On a network without zero padding all four agree to float precision. With padding, ``"dilate"``
equals ``"dense"`` on the cells of the native grid and differs from ``"stitch"`` near the
borders of the shifted passes (see ``heatmap_cli.dilate``).

A new method is one new file with its grid function (and the network it builds for the
command's engine) plus one :func:`register_method` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from heatmap_cli.crops import crops_grid
from heatmap_cli.dilate import dilate_grid, dilated_network
from heatmap_cli.errors import ConversionError, GeometryError, InvalidOptionError
from heatmap_cli.geometry import grid_shape
from heatmap_cli.stitch import (
    StitchedNet,
    check_stride,
    covered_input,
    stitch_grid,
    stitched_network,
)
from heatmap_cli.surgery import (
    ConvolutionalizedNet,
    check_classifier,
    convolutionalize,
    source_model,
    window_size,
)

__all__ = [
    "GridFunction",
    "GridMethod",
    "NetworkBuilder",
    "StrideRule",
    "as_convolutional",
    "get_method",
    "method_names",
    "register_method",
    "score_grid",
]

GridFunction = Callable[[nn.Module, torch.Tensor, int, tuple[int, int], int], torch.Tensor]
"""``grid(net, x, stride, window, batch_size) -> (N, K, rows, cols)`` logits. ``net`` is the
converted network (or a finer-stride one made from it) for methods that need one, else the
model as given; ``stride`` is already checked against :attr:`GridMethod.strides`."""

NetworkBuilder = Callable[[ConvolutionalizedNet, int, int], nn.Module]
"""``build(native_net, stride, batch_size) -> network``: the one module the command's engine
runs, ``(N, 3, H, W) -> (N, K, rows, cols)`` with ``.stride`` and ``.window``."""

StrideRule = Literal["native", "divisors", "any"]


@dataclass(frozen=True)
class GridMethod:
    """One way to compute a score grid.

    Attributes:
        name: What ``score_grid(method=...)`` and ``--method`` call it.
        description: One line for the command's ``--help``.
        grid: Computes the grid for ``score_grid`` (see :data:`GridFunction`).
        build: Builds the network the command's engine runs for a native converted network
            (see :data:`NetworkBuilder`); None when there is no such network (``crops`` runs the
            unmodified model window by window).
        strides: Which strides it accepts: ``"native"`` (the network's own), ``"divisors"``
            (those dividing the native stride), ``"any"`` positive one.
        needs_converted: Whether it needs the converted network (else it gets the model).
        tileable: Whether its network can be evaluated in exact tiles (``heatmap_cli.tiling``:
            it needs ``.stride``, ``.window`` and, for finer strides, ``.native_stride``).
        folds_norms: Whether its network gains from batch norms folded into the convolutions
            before it is built (``heatmap_cli.fold``).
    """

    name: str
    description: str
    grid: GridFunction
    build: NetworkBuilder | None = None
    strides: StrideRule = "divisors"
    needs_converted: bool = True
    tileable: bool = False
    folds_norms: bool = False

    def __post_init__(self) -> None:
        if self.build is None and (self.tileable or self.folds_norms):
            raise ValueError(f"method {self.name!r} builds no network to tile or fold")
        if self.build is not None and not self.needs_converted:
            raise ValueError(f"method {self.name!r} builds its network from a converted one")

    def resolve_stride(
        self, stride: int | None, native_stride: int, own_stride: int | None = None
    ) -> int:
        """The stride this method runs at: ``stride`` checked, or the network's own when None.

        Args:
            stride: The stride asked for, in input pixels; None for the network's own.
            native_stride: The native stride of the converted network (what ``"divisors"``
                must divide).
            own_stride: The stride of the network given, when it is a finer-stride one (a
                result of ``dilate``); default ``native_stride``.

        Returns:
            The output stride.

        Raises:
            GeometryError: If the method does not accept ``stride`` (the message lists what
                it accepts).
        """
        own = native_stride if own_stride is None else own_stride
        if stride is None:
            return own
        if self.strides == "any":
            if stride <= 0:
                raise GeometryError(f"stride must be positive, got {stride}")
        elif self.strides == "divisors":
            check_stride(stride, native_stride)
        elif stride != own:
            check_stride(stride, own)
            finer = " or ".join(
                f"method={m.name!r}" for m in _METHODS.values() if m.strides == "divisors"
            )
            raise GeometryError(
                f"method {self.name!r} runs at the native stride {own}; for stride {stride} "
                f"use {finer}"
            )
        return stride


_METHODS: dict[str, GridMethod] = {}


def register_method(method: GridMethod) -> GridMethod:
    """Adds a grid method to the registry (registering the same object again changes nothing).

    Args:
        method: The method; its name must be new (``"auto"`` is the command's own choice).

    Returns:
        ``method``, so a module can write ``MINE = register_method(GridMethod(...))``.

    Raises:
        InvalidOptionError: If another method has that name.
    """
    if method.name == "auto":
        raise InvalidOptionError("'auto' is reserved: the command's choice of dense or dilate")
    existing = _METHODS.get(method.name)
    if existing is not None and existing is not method:
        raise InvalidOptionError(f"a grid method named {method.name!r} already exists")
    _METHODS[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Removes a method from the registry (a test's or a plug-in's own; absent names are fine).

    Args:
        name: The method's name.
    """
    _METHODS.pop(name, None)


def get_method(name: str) -> GridMethod:
    """The registered method called ``name``.

    Raises:
        InvalidOptionError: If there is none; the message lists the choices.
    """
    if name not in _METHODS:
        raise InvalidOptionError(
            f"unknown method {name!r}; choose from {', '.join(method_names())}"
        )
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    """The names of the registered methods, in registration order."""
    return tuple(_METHODS)


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
    if isinstance(model, (ConvolutionalizedNet, StitchedNet)):
        if tuple(model.window) != tuple(input_size):
            raise GeometryError(
                f"the network was converted for a {model.window} window, not {tuple(input_size)}"
            )
        return model
    return convolutionalize(model, input_size)


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


register_method(
    GridMethod(
        "dense",
        "one pass of the converted network, at its native stride",
        dense_grid,
        dense_network,
        strides="native",
        tileable=True,
        folds_norms=True,
    )
)
register_method(
    GridMethod(
        "stitch",
        "a finer stride from f*f passes over the input shifted by the stride, interleaved",
        stitch_grid,
        stitched_network,
        tileable=True,
        folds_norms=True,
    )
)
register_method(
    GridMethod(
        "dilate",
        "a finer stride in one pass of the 'a trous' network (stitches where it cannot)",
        dilate_grid,
        dilated_network,
        tileable=True,
        folds_norms=True,
    )
)
register_method(
    GridMethod(
        "crops",
        "the unmodified model on every window: the exact reference, slow",
        crops_grid,
        strides="any",
        needs_converted=False,
    )
)


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
        net = as_convolutional(model, window)
        return net, method.resolve_stride(stride, net.native_stride, net.stride)
    if stride is None:
        try:
            stride = as_convolutional(model, window).stride
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
    input_size: tuple[int, int] = (224, 224),
    *,
    batch_size: int = 32,
) -> torch.Tensor:
    """Class scores for every window of an image batch.

    Args:
        model: The classifier in eval mode (never changed; a model in training mode is
            refused), in any floating dtype, or a network returned by ``convolutionalize`` or by
            ``heatmap_cli.dilate.dilate`` (reused as is, which saves converting it on every
            call). Must be on ``x``'s device.
        x: ``(N, 3, H, W)`` images normalized with the model's mean/std. Sizes of the form
            ``input_size + stride * k`` are covered exactly; otherwise the bottom/right pixels
            that no whole window covers are ignored.
        stride: Output stride in input pixels; None means the stride of ``model`` (the native
            one, or that of a network made by ``dilate``). For ``"stitch"``/``"dilate"`` it must
            divide the native stride; ``"crops"`` takes any.
        method: A registered method (:func:`method_names`): ``"dense"``, ``"stitch"``,
            ``"dilate"`` or ``"crops"``.
        input_size: ``(h, w)`` the model was trained at (one int: a square): the window of one
            cell.
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
    check_classifier(model)
    _check_input(x)
    grid_method = get_method(method)
    if batch_size <= 0:
        raise GeometryError(f"batch_size must be positive, got {batch_size}")
    window = window_size(input_size)
    grid_shape((x.shape[2], x.shape[3]), window, stride or 1)  # raises for too-small inputs
    net, stride = _network_and_stride(grid_method, model, stride, window)
    return grid_method.grid(net, x, stride, window, batch_size)
