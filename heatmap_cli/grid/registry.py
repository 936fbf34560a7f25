"""The grid method registry: every way to compute a score grid, by name.

Every method returns the same thing: ``(N, K, rows, cols)`` logits where cell ``(i, j)`` is the
classifier's answer on the window whose top-left corner is ``(i * stride, j * stride)`` in the
input. They differ in how they get there; each is a :class:`GridMethod` in its own module
(``heatmap_cli.grid.dense``, ``.stitch``, ``.dilate``, ``.crops``) that registers itself here.

On a network without zero padding all four agree to float precision. With padding, ``"dilate"``
equals ``"dense"`` on the cells of the native grid and differs from ``"stitch"`` near the
borders of the shifted passes (see ``heatmap_cli.grid.dilate``); ``"crops"`` is the exact
reference.

A new method is one new file with its grid function (and the network it builds for the
command's engine) plus one :func:`register_method` line; ``score_grid`` and ``--method`` offer it,
and ``tests/grid/test_every_method.py`` holds it to what it declares (its strides, ``exact``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from heatmap_cli.convert.network import ConvolutionalizedNet
from heatmap_cli.errors import GeometryError, InvalidOptionError
from heatmap_cli.grid.geometry import check_stride

__all__ = [
    "GridFunction",
    "GridMethod",
    "NetworkBuilder",
    "StrideRule",
    "get_method",
    "method_names",
    "register_method",
    "unregister_method",
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
        tileable: Whether its network can be evaluated in exact tiles (``heatmap_cli.grid.tiling``:
            it needs ``.stride``, ``.window`` and, for finer strides, ``.native_stride``).
        folds_norms: Whether its network gains from batch norms folded into the convolutions
            before it is built (``heatmap_cli.convert.folding``).
        exact: What it promises: on a network without zero padding, every cell equals the
            unmodified model on its window (``"crops"``) to float rounding. False for a method
            that approximates; the tests every registered method runs hold it to its promise.
    """

    name: str
    description: str
    grid: GridFunction
    build: NetworkBuilder | None = None
    strides: StrideRule = "divisors"
    needs_converted: bool = True
    tileable: bool = False
    folds_norms: bool = False
    exact: bool = True

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


