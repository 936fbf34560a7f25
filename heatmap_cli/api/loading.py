"""Models for the notebook API: by name or file as the command loads them, or a module in hand.

:func:`load_model` is the command's ``--model``, ``--weights``, ``--labels``, ``--input-size``,
``--mean`` and ``--std`` as one call (a thin front of :func:`heatmap_cli.models.load_model`).
:func:`describe_module` makes the same kind of loaded model of an ``nn.Module`` the caller
already has (a torchvision or timm model fine-tuned in the notebook), with what it records about
itself and what the caller says.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from heatmap_cli.convert.network import ConvolutionalizedNet, check_classifier, window_size
from heatmap_cli.convert.timm_names import is_timm_module
from heatmap_cli.errors import InvalidOptionError, LabelsFileError
from heatmap_cli.grid.conversions import recorded_window
from heatmap_cli.models import DEFAULT_MODEL, LoadedModel, parse_channels, parse_input_size
from heatmap_cli.models import load_model as load_by_name
from heatmap_cli.models.base import Interpolation, as_interpolation
from heatmap_cli.models.overrides import apply_overrides, check_channels
from heatmap_cli.models.own import own_loaded_model
from heatmap_cli.models.timm_source import timm_loaded_model

__all__ = ["Categories", "Channels", "WindowSize", "describe_module", "load_model", "loaded_model"]

WindowSize = int | tuple[int, int] | str
"""A window: ``224``, ``(256, 192)`` as ``(H, W)``, or the command's spelling ``"256,192"``."""
Channels = Sequence[float] | str
"""Three per-channel numbers ``(R, G, B)``, or the command's spelling ``"0.5,0.5,0.5"``."""
Categories = Sequence[str] | str | os.PathLike[str]
"""Class names: one per class, in the order of the model's outputs, or a labels file."""


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    input_size: WindowSize | None = None,
    mean: Channels | None = None,
    std: Channels | None = None,
    *,
    allow_pickle: bool = False,
    download: bool = True,
) -> LoadedModel:
    """A classifier with its class names and preprocessing, as the command's ``--model`` loads it.

    Args:
        name_or_path: ``"efficientnet_lite0"`` (the default, offline), a torchvision model
            (``"resnet50"``), ``"timm/NAME"``, a TorchScript or ``.pt2`` file, a WSInfer-style
            folder or another registered source's name, ``"file.py:callable"`` or
            ``"package.module:callable"`` (imports and runs that code).
        weights: A local state dict or checkpoint with any number of classes, instead of the
            pretrained weights.
        labels: A labels file naming the classes (one per line, a JSON list or ``{index: name}``).
        input_size: The window the classifier was trained at, over what the model records.
        mean: Per-channel mean of RGB values in ``[0, 1]``, over what the model records.
        std: Per-channel standard deviation, over what the model records.
        allow_pickle: Load full-model pickles (unpickling runs code stored in the file).
        download: Whether missing pretrained weights may be downloaded.

    Returns:
        The classifier in eval mode with ``categories``, ``mean``, ``std``, ``input_size``
        (its window) and ``interpolation``; hand it to :class:`heatmap_cli.HeatmapModel`.

    Raises:
        UsageError: A subclass naming what is wrong: ``UnknownModelError`` (with close
            matches), ``WeightsMismatchError``, ``ModelFileError``, ``LabelsFileError``,
            ``InvalidOptionError`` (a window, mean or std that is not valid).
        WeightsUnavailableError: The weights are neither cached nor downloadable.
    """
    return load_by_name(
        os.fspath(name_or_path),
        weights=weights,
        download=download,
        allow_pickle=allow_pickle,
        labels=labels,
        input_size=_window(input_size),
        mean=_channels(mean, "mean"),
        std=_channels(std, "std", positive=True),
    )


def _window(size: WindowSize | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, str):
        return parse_input_size(size, "input_size")
    return window_size(size)


def _channels(
    values: Channels | None, name: str, *, positive: bool = False
) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return parse_channels(values, name, positive=positive)
    return check_channels(list(values), name, positive=positive)


def describe_module(
    model: nn.Module,
    *,
    input_size: WindowSize | None = None,
    categories: Categories | None = None,
    mean: Channels | None = None,
    std: Channels | None = None,
    interpolation: str | None = None,
    name: str | None = None,
) -> LoadedModel:
    """A module the caller holds as a loaded model: what it records, then what the caller says.

    A timm model brings its class names, window, mean, std and interpolation
    (``pretrained_cfg``); a converted network its window. Anything else is described by one
    forward pass at the window, as a model file is (:mod:`heatmap_cli.models.own`): its number
    of classes, named ``class 0`` ... unless ``categories`` names them, ImageNet's mean and
    std, bilinear resizing, and a window of 224 (with a note) unless one is given or recorded.

    Args:
        model: A classifier in eval mode (never put in another mode, never copied; the engine
            that scores with it moves it to its device, as ``model.to(device)`` does).
        input_size: The window it was trained at.
        categories: Its ``K`` class names, or a labels file naming them; for a torchvision
            model, ``weights.meta["categories"]``.
        mean: Per-channel mean of RGB values in ``[0, 1]`` (torchvision's and timm's
            ImageNet models: ``(0.485, 0.456, 0.406)``).
        std: Per-channel standard deviation.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``: how photos are resized.
        name: What the outputs call the model; default its class name.

    Raises:
        TrainingModeError: The model is in training mode (call ``model.eval()`` first).
        ModelFileError: It does not run at the window, or does not return ``(N, K)`` scores.
        LabelsFileError: ``categories`` does not name ``K`` classes.
        InvalidOptionError: A window, mean or std that is not valid.
    """
    if isinstance(model, ConvolutionalizedNet) and model.source_model is not None:
        input_size = model.window if input_size is None else input_size
        model = model.source_model
    check_classifier(model)
    label = name or type(model).__name__
    window = _window(input_size)
    if is_timm_module(model) and hasattr(model, "pretrained_cfg"):
        loaded = timm_loaded_model(label, model, "the model given")
    else:
        loaded = own_loaded_model(
            label, model, source="the model given", window=window or recorded_window(model)
        )
    return _overridden(loaded, window, categories, mean, std, interpolation)


def _overridden(
    loaded: LoadedModel,
    window: tuple[int, int] | None,
    categories: Categories | None,
    mean: Channels | None,
    std: Channels | None,
    interpolation: str | None,
) -> LoadedModel:
    """``loaded`` with the caller's window, class names, mean, std and resizing over its own."""
    labels = categories if isinstance(categories, (str, os.PathLike)) else None
    loaded = apply_overrides(
        loaded,
        labels=None if labels is None else Path(labels),
        input_size=window,
        mean=_channels(mean, "mean"),
        std=_channels(std, "std", positive=True),
    )
    if categories is not None and labels is None:
        names = tuple(str(name) for name in categories)
        if len(names) != loaded.num_classes:
            raise LabelsFileError(
                f"categories names {len(names)} classes, but the model has {loaded.num_classes}"
            )
        loaded = dataclasses.replace(loaded, categories=names)
    if interpolation is not None:
        loaded = dataclasses.replace(loaded, interpolation=_interpolation(interpolation))
    return loaded


def loaded_model(
    model: LoadedModel | nn.Module | str | os.PathLike[str],
    *,
    input_size: WindowSize | None = None,
    categories: Categories | None = None,
    mean: Channels | None = None,
    std: Channels | None = None,
    interpolation: str | None = None,
) -> LoadedModel:
    """Any model the API takes, as a loaded model with the caller's word over its own.

    Args:
        model: A loaded model (:func:`load_model`), a name or file for :func:`load_model`, or
            a module (:func:`describe_module`).
        input_size: The window it was trained at.
        categories: Its class names, or a labels file.
        mean: Per-channel mean of RGB values in ``[0, 1]``.
        std: Per-channel standard deviation.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.

    Raises:
        TypeError: ``model`` is none of these.
        UsageError: As :func:`load_model` and :func:`describe_module` raise.
    """
    if isinstance(model, nn.Module):
        return describe_module(
            model,
            input_size=input_size,
            categories=categories,
            mean=mean,
            std=std,
            interpolation=interpolation,
        )
    if isinstance(model, (str, os.PathLike)):
        # The window, mean, std and a labels file go to the loading itself: a model without
        # metadata is run at the window to count its classes.
        labels = categories if isinstance(categories, (str, os.PathLike)) else None
        loaded = load_model(model, labels=labels, input_size=input_size, mean=mean, std=std)
        names = None if labels is not None else categories
        return _overridden(loaded, None, names, None, None, interpolation)
    if isinstance(model, LoadedModel):
        window = _window(input_size)
        return _overridden(model, window, categories, mean, std, interpolation)
    raise TypeError(
        "model must be a name or file for load_model, a loaded model or a torch.nn.Module, "
        f"got {type(model).__name__}"
    )


def _interpolation(value: str) -> Interpolation:
    if value.lower() not in ("bilinear", "bicubic", "nearest"):
        raise InvalidOptionError(
            f"interpolation must be bilinear, bicubic or nearest, got {value!r}"
        )
    return as_interpolation(value)
