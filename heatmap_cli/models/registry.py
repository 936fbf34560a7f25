"""The registry of model sources: register, list, get; and the two entry points built on it.

Like torchvision's ``models/_api.py`` (``register_model``, ``list_models``, ``get_model``) and
rembg's ``sessions``: every family of names is one :class:`~heatmap_cli.models.base.ModelSource`
in its own file, registered once in ``heatmap_cli/models/__init__.py``. :func:`load_model` asks
the sources in registration order which one claims a name; :func:`available_models` concatenates
their listings.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from heatmap_cli.errors import UnknownModelError
from heatmap_cli.models.base import DEFAULT_MODEL, LoadedModel, ModelEntry, ModelSource
from heatmap_cli.models.suggestions import unknown_model_message

__all__ = [
    "available_models",
    "get_source",
    "list_sources",
    "load_model",
    "register_source",
    "unregister_source",
]

_SOURCES: dict[str, ModelSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Adds a source after the registered ones (earlier sources win a name they both claim).

    Args:
        source: An instance of a :class:`ModelSource` subclass.

    Returns:
        ``source``, so that a registration can be one line.

    Raises:
        ValueError: A source of the same ``family`` is registered already.
    """
    if source.family in _SOURCES:
        raise ValueError(f"a model source named {source.family!r} is registered already")
    _SOURCES[source.family] = source
    return source


def unregister_source(family: str) -> None:
    """Removes the source registered as ``family`` (nothing happens if there is none)."""
    _SOURCES.pop(family, None)


def list_sources() -> tuple[ModelSource, ...]:
    """The registered sources, in the order they are asked."""
    return tuple(_SOURCES.values())


def get_source(name: str) -> ModelSource:
    """The source that loads ``name``: the first registered one that claims it.

    Args:
        name: A model name such as ``"resnet50"`` or ``"timm/convnext_tiny"``.

    Returns:
        The claiming source.

    Raises:
        UnknownModelError: No source claims the name; the message lists close matches.
    """
    key = name.strip()
    for source in _SOURCES.values():
        if source.claims(key):
            return source
    raise UnknownModelError(unknown_model_message(key, list_sources()))


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: Path | None = None,
    download: bool = True,
) -> LoadedModel:
    """Builds a pretrained classifier by name.

    Args:
        name: ``"efficientnet_lite0"`` (offline default), a torchvision classification model
            name such as ``"resnet50"``, ``"timm/NAME"`` for a timm model, or a name another
            registered source claims.
        weights: A local state dict or checkpoint (``.pth``/``.pt``/``.bin`` or
            ``.safetensors``) to load instead of the pretrained weights. It must fit the named
            architecture exactly (strict loading). Checkpoints that wrap the state dict under
            ``"state_dict"``, ``"model_state_dict"`` or ``"model"``, and keys prefixed with
            ``"module."``, are accepted.
        download: Whether missing pretrained weights may be downloaded. With ``False`` a missing
            file raises ``WeightsUnavailableError`` without touching the network.

    Returns:
        The classifier in eval mode with its class names and preprocessing.

    Raises:
        UnknownModelError: No source knows ``name``; the message lists close matches.
        WeightsUnavailableError: The pretrained weights are not cached and cannot be downloaded;
            the message names the file and where to put it.
        WeightsMismatchError: ``weights`` (or a cached download) is unreadable or does not fit
            the architecture; the message names the file and the reason.
    """
    source = get_source(name)
    key = name.strip()
    loaded = source.load(key, weights=None if weights is None else Path(weights), download=download)
    loaded.model.eval()
    return loaded if loaded.name == name else replace(loaded, name=name)


def available_models(pattern: str | None = None) -> list[ModelEntry]:
    """Lists the model names :func:`load_model` accepts, and whether their weights are local.

    Args:
        pattern: A wildcard such as ``"convnext*"`` for sources too large to list whole: with
            it, the timm models with pretrained weights matching it are listed too (as
            ``timm/NAME.TAG``); without it none are (there are well over a thousand).

    Returns:
        Every source's entries in registry order: the default model first, then every
        torchvision classification model in name order, then the matching timm models.
    """
    return [entry for source in _SOURCES.values() for entry in source.entries(pattern)]
