"""Test networks as ready-to-run models: a network plus the metadata the application needs."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from heatmap_cli.models import LoadedModel


def as_loaded(
    model: nn.Module,
    *,
    window: tuple[int, int],
    categories: Sequence[str] | None = None,
    name: str = "tiny",
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
    std: tuple[float, float, float] = (0.25, 0.25, 0.25),
    interpolation: str = "bilinear",
    source: str = "test",
) -> LoadedModel:
    """``model`` (in eval mode) as a loaded model; without ``categories``, ten "class N"."""
    return LoadedModel(
        name=name,
        model=model.eval(),
        categories=tuple(categories or (f"class {i}" for i in range(10))),
        mean=mean,
        std=std,
        input_size=window,
        interpolation=interpolation,  # type: ignore[arg-type]
        source=source,
    )
