"""The ``heatmap`` command's click parameter types and callbacks (no torch import).

Values that the library parses (sizes, outputs, methods, poolings) are checked by the library's
own functions, imported when a value is checked, so ``heatmap --help`` stays fast; numbers are
checked for NaN, infinity and range while parsing, before anything is created.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import click

from heatmap_cli.errors import UsageError

__all__ = [
    "SETTING_FLAGS",
    "FiniteFloatRange",
    "LazyChoice",
    "at_least_a_byte",
    "list_models",
    "parsed",
    "positive",
]


SETTING_FLAGS = {
    "classes": "--class",
    "image_format": "--format",
    "max_display_side": "--max-overlay-side",
}
"""The options whose flag is not the library's parameter name with dashes (the library's
messages name settings by parameter; see ``heatmap_cli.errors.setting``)."""


class LazyChoice(click.Choice):
    """A ``click.Choice`` whose values are a library list, looked up when a value is checked.

    The lists live next to the code that uses them (the registered grid methods, the rankings'
    poolings); importing them for ``--help`` would import torch, so the option names a metavar
    instead of listing the values. A function is called at every check, so a method registered
    after start-up is offered too.
    """

    def __init__(self, module: str, attribute: str) -> None:
        self._source = (module, attribute)
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        """The values, imported on first use."""
        module, attribute = self._source
        values = getattr(importlib.import_module(module), attribute)
        return tuple(values() if callable(values) else values)


def parsed(module: str, function: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that parses an option's text with a library function (imported on use)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return getattr(importlib.import_module(module), function)(value)
        except UsageError as error:
            raise click.BadParameter(str(error), ctx=ctx, param=param) from None

    return parse


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN (which passes every comparison) and infinity."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """The number, or a usage error naming the option for NaN, infinity or out of range."""
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """Callback: refuses a number below 1."""
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}", ctx=ctx, param=param)
    return value


def at_least_a_byte(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    """Callback: refuses a size in GiB that rounds to no byte at all."""
    if value is not None and round(value * 2**30) < 1:  # it would round to no budget at all
        raise click.BadParameter(f"{value} GiB is less than one byte", ctx=ctx, param=param)
    return value


def list_models(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Eager ``--list-models``: prints what can be used, and the road for own models; exits."""
    if not value or ctx.resilient_parsing:
        return
    from heatmap_cli.models import available_models

    for entry in available_models():
        cached = "cached" if entry.cached else ""
        click.echo(f"{entry.name:<24} {entry.family:<12} {entry.weights:<28} {cached}".rstrip())
    click.echo("Any timm model: timm/NAME (e.g. timm/resnet50.a1_in1k); see timm.list_models().")
    click.echo(
        "Your own fine-tuned classifier: save its state dict, then\n"
        "  heatmap photo.jpg --model resnet18 --weights my.pth --labels labels.txt "
        "--input-size 224\n"
        "  (any torchvision or timm architecture, any number of classes; checkpoints too).\n"
        "Your own architecture: --model path/to/file.py:callable or package.module:callable "
        "(runs that code).\n"
        "A model file: --model FILE, a torch.export archive (.pt2) or a TorchScript file.\n"
        "A WSInfer model folder: --model DIR (its config.json and TorchScript file)."
    )
    ctx.exit(0)
