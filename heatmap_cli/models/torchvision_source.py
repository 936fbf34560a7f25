"""torchvision's ImageNet classifiers (``resnet50``, ``vgg16``...) with their ``DEFAULT`` weights.

Weights are downloaded and cached by torch hub in ``<torch.hub.get_dir()>/checkpoints/``; class
names, mean/std, interpolation and the input size come from torchvision's weights enums. A local
file (a classifier fine-tuned elsewhere) may have any number of classes: the architecture is
built with ``num_classes=K`` (:mod:`~heatmap_cli.models.fitting`); its classes keep ImageNet's
names only when ``K`` is ImageNet's 1000.
"""

from __future__ import annotations

import dataclasses
import http.client
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heatmap_cli.errors import WeightsMismatchError, WeightsUnavailableError
from heatmap_cli.models.base import (
    LoadedModel,
    LoadRequest,
    ModelEntry,
    ModelSource,
    as_interpolation,
    as_triple,
    numbered_classes,
    short_reason,
)
from heatmap_cli.models.fitting import FittedModel, build_for_checkpoint
from heatmap_cli.models.weights import Checkpoint, read_checkpoint, torch_hub_cache_path

if TYPE_CHECKING:  # torchvision is imported where used: importing it takes about a second
    from torchvision.models import WeightsEnum

__all__ = ["TorchvisionSource"]

# The old DenseNet checkpoints name layers 'norm.1' where the modules are now 'norm1';
# torchvision renames them while loading its own weights, so do the same for local files.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@cache
def _torchvision_names() -> frozenset[str]:
    """Names of torchvision's ImageNet classification models (not detection, video, ...)."""
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


class TorchvisionSource(ModelSource):
    """Every model of ``torchvision.models.list_models(module=torchvision.models)``."""

    family = "torchvision"

    def claims(self, name: str) -> bool:
        """Whether ``name`` (any case) is a torchvision classification model."""
        return name.lower() in _torchvision_names()

    def names(self) -> Iterable[str]:
        """Every torchvision classification model, in name order."""
        return sorted(_torchvision_names())

    def entries(self, pattern: str | None = None) -> list[ModelEntry]:
        """Every model with its ``DEFAULT`` weights and whether torch hub has them cached."""
        import torchvision

        del pattern
        entries = []
        for name in self.names():
            enum = torchvision.models.get_model_weights(name).DEFAULT
            path = torch_hub_cache_path(enum.url)
            entries.append(
                ModelEntry(
                    name=name,
                    family=self.family,
                    weights=str(enum),
                    cached=path.is_file(),
                    location=path,
                )
            )
        return entries

    def load(self, name: str, request: LoadRequest) -> LoadedModel:
        """Builds a torchvision classifier with its ``DEFAULT`` weights or a local file."""
        import torchvision

        arch = name.lower()
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        categories = tuple(enum.meta["categories"])
        if request.weights is None:
            fitted = FittedModel(_pretrained(arch, enum, request.download), None, ())
            source = f"torchvision {enum}"
        else:
            checkpoint = read_checkpoint(request.weights, allow_pickle=request.allow_pickle)
            fitted = _from_checkpoint(arch, enum, checkpoint)
            source = str(request.weights)
        if fitted.num_classes not in (None, len(categories)):
            categories = numbered_classes(fitted.num_classes)  # type: ignore[arg-type]
        preset = enum.transforms()
        crop = tuple(preset.crop_size)
        window, notes = fitted.window((crop[0], crop[-1]), request.input_size, arch)
        return LoadedModel(
            name=name,
            model=fitted.model,
            categories=categories,
            mean=as_triple(preset.mean),
            std=as_triple(preset.std),
            input_size=window,
            interpolation=as_interpolation(preset.interpolation.value),
            source=source,
            notes=notes,
        )


def _pretrained(arch: str, enum: WeightsEnum, download: bool) -> nn.Module:
    """Builds ``arch`` with ``enum``'s weights, downloading them first if allowed.

    The download is done here rather than inside torchvision so that a network failure and a
    broken cached file can be told apart and reported with the file's full path.
    """
    import torchvision

    cache_path = torch_hub_cache_path(enum.url)
    if not cache_path.is_file():
        _download(arch, enum, cache_path, download)
    try:
        return torchvision.models.get_model(arch, weights=enum)
    except Exception as err:
        # The file is there, so whatever fails now is the file's fault (truncated, replaced).
        raise WeightsMismatchError(
            f"{cache_path}: cached weights for {arch} cannot be loaded ({short_reason(err)}); "
            "delete the file to download it again, or pass --weights FILE."
        ) from err


def _download(arch: str, enum: WeightsEnum, cache_path: Path, allowed: bool) -> None:
    """Fetches ``enum``'s file into the torch hub cache, or says why it is not there."""
    fix = (
        f"download {enum.url} on a connected machine and put it at {cache_path} "
        "(set TORCH_HOME to use another folder), or pass --weights FILE"
    )
    missing = f"Weights {enum} for {arch} are not cached ({cache_path} is missing)"
    if not allowed:
        raise WeightsUnavailableError(f"{missing}; {fix}.")
    match = torch.hub.HASH_REGEX.search(cache_path.name)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            enum.url, str(cache_path), match.group(1) if match else None, progress=True
        )
    except (OSError, http.client.HTTPException, RuntimeError) as err:
        # RuntimeError: torch.hub's hash check; OSError covers URLError and socket errors.
        raise WeightsUnavailableError(
            f"{missing} and could not be downloaded ({short_reason(err)}); {fix}."
        ) from err


def _from_checkpoint(arch: str, enum: WeightsEnum, checkpoint: Checkpoint) -> FittedModel:
    """Builds ``arch`` without pretrained weights, for the file's classes, and loads the file.

    torchvision's builders change a few constructor arguments when they load pretrained weights;
    the same changes are made here so that a copy of the released file (the usual reason for
    ``--weights`` on an offline machine) gives exactly the pretrained model, and a model
    fine-tuned from it (same architecture, its own number of classes) loads alike.

    Returns:
        The model with the file's weights and number of classes.
    """
    kwargs: dict[str, Any] = {}
    aux_prefixes: tuple[str, ...] = ()
    state_dict = checkpoint.tensors
    if arch in ("googlenet", "inception_v3"):
        aux_prefixes = ("aux1.", "aux2.") if arch == "googlenet" else ("AuxLogits.",)
        # The released weights expect Google's [-1, 1] input; transform_input converts the
        # ImageNet-normalized input to it inside the model, as the builder does.
        kwargs["transform_input"] = True
        kwargs["init_weights"] = False
        kwargs["aux_logits"] = any(aux in key for key in state_dict for aux in aux_prefixes)
    elif arch.startswith("vit_"):
        kwargs["image_size"] = enum.meta["min_size"][0]
    elif arch.startswith("maxvit"):
        kwargs["input_size"] = enum.meta["min_size"]
    if arch.startswith("densenet"):
        state_dict = {
            _DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in state_dict.items()
        }

    def build(num_classes: int | None) -> nn.Module:
        import torchvision

        classes = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(arch, weights=None, **kwargs, **classes)

    renamed = dataclasses.replace(checkpoint, tensors=state_dict)
    fitted = build_for_checkpoint(build, renamed, arch)
    if kwargs.get("aux_logits"):
        # The auxiliary heads only matter in training; drop them as the builder does.
        fitted.model.aux_logits = False
        for prefix in aux_prefixes:
            setattr(fitted.model, prefix.rstrip("."), None)
    return fitted
