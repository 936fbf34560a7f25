"""The registry of model sources: register, list, get; and the two entry points built on it.

Like torchvision's ``models/_api.py`` (``register_model``, ``list_models``, ``get_model``) and
rembg's ``sessions``: every family of names is one :class:`~heatmap_cli.models.base.ModelSource`
in its own file, registered once in ``heatmap_cli/models/__init__.py``. :func:`load_model` asks
the sources in registration order which one claims a name; :func:`available_models` concatenates
their listings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from heatmap_cli.errors import UnknownModelError
from heatmap_cli.models.base import (
    DEFAULT_MODEL,
    LoadedModel,
    LoadRequest,
    ModelEntry,
    ModelFile,
    ModelSource,
)
from heatmap_cli.models.files import file_sha256
from heatmap_cli.models.overrides import apply_overrides, check_input_size
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
    weights: str | Path | None = None,
    download: bool = True,
    allow_pickle: bool = False,
    labels: str | Path | None = None,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LoadedModel:
    """Builds a classifier by name, with the user's weights, class names and preprocessing.

    Args:
        name: ``"efficientnet_lite0"`` (offline default), a torchvision classification model
            name such as ``"resnet50"``, ``"timm/NAME"`` for a timm model, a model file
            (TorchScript, ``torch.export`` ``.pt2``), ``"path/to/file.py:callable"`` or
            ``"package.module:callable"`` (imports and runs that code), or a name another
            registered source claims.
        weights: A local state dict or checkpoint (``.pth``/``.ckpt``/``.safetensors``...) to
            load instead of the pretrained weights, with any number of classes ``K`` (built with
            ``num_classes=K``), strictly otherwise; training checkpoints' wrappers and key
            prefixes are found (:mod:`~heatmap_cli.models.weights`).
        download: Whether missing pretrained weights may be downloaded. With ``False`` a missing
            file raises ``WeightsUnavailableError`` without touching the network.
        allow_pickle: Load full-model pickles (``torch.save(model)``), as ``weights`` or as the
            model file; unpickling runs code stored in the file.
        labels: A labels file naming the ``K`` classes (one per line, a JSON list or a JSON
            ``{index: name}``).
        input_size: ``(H, W)`` the classifier was trained at (its window), over its metadata.
        mean: Per-channel mean of RGB values in ``[0, 1]``, over its metadata.
        std: Per-channel standard deviation, over its metadata.

    Returns:
        The classifier in eval mode with its class names and preprocessing; ``files`` lists the
        files given, with their digests.

    Raises:
        UnknownModelError: No source knows ``name``; the message lists close matches.
        WeightsUnavailableError: The pretrained weights are not cached and cannot be downloaded;
            the message names the file and where to put it.
        WeightsMismatchError: ``weights`` (or a cached download) is unreadable or fits the
            architecture for no number of classes; the message names the file and the reason.
        ModelFileError: A model file or callable cannot be used.
        LabelsFileError: The labels file cannot be read or names another number of classes.
        InvalidOptionError: A window, mean or std that is not valid.
    """
    source = get_source(name)
    key = name.strip()
    window = None if input_size is None else check_input_size(input_size)
    path = None if weights is None else Path(weights)
    request = LoadRequest(path, download, allow_pickle, window)
    loaded = source.load(key, request)
    loaded.model.eval()
    files = loaded.files
    if path is not None:
        files = (*files, ModelFile("weights", path, file_sha256(path)))
    loaded = replace(loaded, name=name, family=source.family, files=files)
    labels = None if labels is None else Path(labels)
    return apply_overrides(loaded, labels=labels, input_size=window, mean=mean, std=std)


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
