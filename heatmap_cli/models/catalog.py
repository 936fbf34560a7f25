"""What the model libraries offer, known without importing them: names, weights, preprocessing.

Importing torchvision or timm takes seconds on a small machine (torch first, then their model
zoos), yet the answers that need no computation (``--list-models``, a mistyped ``--model``, a
``--class`` checked against ImageNet's names) only need their lists. Those lists ship with the
package, generated from the installed libraries (``python -m heatmap_cli.models.catalog_writer``):

* ``data/imagenet_categories.txt``: the 1000 ImageNet-1k class names, torchvision's;
* ``data/catalog.json``: every torchvision classification model with its ``DEFAULT`` weights
  (name, URL, categories, window, mean, std, interpolation), every timm architecture, and the
  default model's card (its window, preprocessing and native stride, derived by converting it).

Each list records the version of the library it came from. When the installed version is
another (read from the library's ``version.py`` file, not by importing it), that list is made
from the library itself, once per process, so an upgrade never gives stale names; a test checks
the shipped files against the installed libraries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from heatmap_cli.versions import installed_version

__all__ = [
    "CATALOG_FILE",
    "CATEGORIES_FILE",
    "build_catalog",
    "default_card",
    "imagenet_categories",
    "timm_architectures",
    "torchvision_models",
]

_DATA = Path(__file__).with_name("data")
CATALOG_FILE = _DATA / "catalog.json"
"""The shipped catalog of torchvision and timm models and the default model's card."""
CATEGORIES_FILE = _DATA / "imagenet_categories.txt"
"""The 1000 ImageNet-1k class names, one per line, in index order."""

@cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard (sorted WordNet id) order.

    The names are torchvision's (its weights' ``meta["categories"]``), shipped as a file.

    Returns:
        Short names, e.g. index 281 ``"tabby"``.
    """
    return tuple(CATEGORIES_FILE.read_text(encoding="utf-8").splitlines())


@cache
def _shipped() -> Mapping[str, Any]:
    return json.loads(CATALOG_FILE.read_text(encoding="utf-8"))


@cache
def torchvision_models() -> Mapping[str, Mapping[str, Any]]:
    """Every torchvision classification model and its ``DEFAULT`` weights.

    Returns:
        ``{name: {"weights": "ResNet50_Weights.IMAGENET1K_V2", "url": ..., "categories":
        "imagenet" or a list of names, "input_size": [h, w], "mean": [r, g, b], "std": [...],
        "interpolation": "bilinear"}}`` in name order; empty without torchvision.
    """
    version = installed_version("torchvision")
    if version is None:
        return {}
    shipped = _shipped()["torchvision"]
    if shipped["version"] == version:
        return shipped["models"]
    return _live_torchvision()


@cache
def timm_architectures(deprecated: bool = False) -> frozenset[str]:
    """Every architecture name timm knows; empty without timm.

    Args:
        deprecated: Also the old names timm still accepts for renamed models (``timm.is_model``
            says yes, ``timm.list_models()`` leaves them out).
    """
    version = installed_version("timm")
    if version is None:
        return frozenset()
    shipped = _shipped()["timm"]
    if shipped["version"] != version:
        shipped = _live_timm()
    names = frozenset(shipped["models"])
    return names | frozenset(shipped["deprecated"]) if deprecated else names


def default_card() -> Mapping[str, Any]:
    """The default model's card: what loading and converting it gives, but its weights.

    Returns:
        ``{"input_size": [h, w], "mean": [...], "std": [...], "interpolation": ...,
        "num_classes": 1000, "output": "logits", "native_stride": 32, "dtype": "float32"}``
        as derived from the network by :func:`build_catalog`.
    """
    return _shipped()["default"]


def _live_torchvision() -> dict[str, dict[str, Any]]:
    """:func:`torchvision_models` made from the installed torchvision (imports it)."""
    import torchvision

    imagenet = list(imagenet_categories())
    models = {}
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        enum = torchvision.models.get_model_weights(name).DEFAULT
        preset = enum.transforms()
        crop = list(preset.crop_size)
        categories = list(enum.meta["categories"])
        models[name] = {
            "weights": str(enum),
            "url": enum.url,
            "categories": "imagenet" if categories == imagenet else categories,
            "input_size": [crop[0], crop[-1]],
            "mean": [float(v) for v in preset.mean],
            "std": [float(v) for v in preset.std],
            "interpolation": preset.interpolation.value,
        }
    return models


def _live_timm() -> dict[str, Any]:
    """The timm part of the catalog, from the installed timm (imports it)."""
    import timm
    from timm.models import _registry

    renamed = getattr(_registry, "_deprecated_models", {})  # no public list of the old names
    return {
        "version": timm.__version__,
        "models": sorted(timm.list_models()),
        "deprecated": sorted(name for name in renamed if timm.is_model(name)),
    }


def _live_default_card() -> dict[str, Any]:
    """:func:`default_card` derived from the installed default model (loads and converts it)."""
    from heatmap_cli.convert.network import convolutionalize
    from heatmap_cli.models.base import DEFAULT_MODEL
    from heatmap_cli.models.registry import load_model

    loaded = load_model(DEFAULT_MODEL)
    converted = convolutionalize(loaded.model, loaded.input_size)
    dtype = next(p.dtype for p in loaded.model.parameters() if p.is_floating_point())
    return {
        "input_size": list(loaded.input_size),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "interpolation": loaded.interpolation,
        "num_classes": loaded.num_classes,
        "output": loaded.output,
        "native_stride": converted.stride,
        "dtype": str(dtype).removeprefix("torch."),
    }


def build_catalog() -> dict[str, Any]:
    """The catalog made from the installed libraries (imports torchvision and timm).

    Returns:
        What ``data/catalog.json`` holds.
    """
    import torchvision

    return {
        "generated_by": "python -m heatmap_cli.models.catalog_writer",
        "torchvision": {"version": torchvision.__version__, "models": _live_torchvision()},
        "timm": _live_timm(),
        "default": _live_default_card(),
    }
