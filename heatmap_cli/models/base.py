"""What every model source shares: the loaded model, a listing entry, and the source interface.

A *model source* is one family of names (``efficientnet_lite0``, torchvision's ``resnet50``,
``timm/NAME``, a model file, ``file.py:callable``...): it says which names it takes
(:meth:`ModelSource.claims`), builds them with their class names and preprocessing
(:meth:`ModelSource.load`, given a :class:`LoadRequest`) and lists what it offers
(:meth:`ModelSource.entries`). Sources are registered in :mod:`heatmap_cli.models.registry`.
"""

from __future__ import annotations

import urllib.error
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, get_args

from torch import nn

from heatmap_cli.errors import first_line

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MODEL_OUTPUTS",
    "Interpolation",
    "LoadRequest",
    "LoadedModel",
    "ModelEntry",
    "ModelFile",
    "ModelOutput",
    "ModelSource",
    "as_interpolation",
    "as_triple",
    "numbered_classes",
    "short_reason",
]

DEFAULT_MODEL = "efficientnet_lite0"
"""The model used when none is named; its weights ship with a Python package (no download)."""

Interpolation = Literal["bilinear", "bicubic", "nearest"]

ModelOutput = Literal["logits", "softmax", "log_softmax", "sigmoid"]
"""What a classifier returns: logits, or what the activation its head ends with makes of them
(probabilities from a softmax or sigmoid, log-probabilities from a log-softmax)."""
MODEL_OUTPUTS: tuple[str, ...] = get_args(ModelOutput)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel mean of ImageNet's RGB values in ``[0, 1]``: the default for models without one."""
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelFile:
    """A file a model was made from, identified by its content.

    Attributes:
        role: What the file gave: ``"model"`` (an archive), ``"code"`` (a Python file),
            ``"weights"`` or ``"labels"``.
        path: The file as given.
        sha256: Hex digest of its bytes.
    """

    role: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class LoadRequest:
    """What the user said about a model besides its name.

    Attributes:
        weights: A local state dict or checkpoint to load instead of the pretrained weights.
        download: Whether missing pretrained weights may be downloaded.
        allow_pickle: Whether a full-model pickle may be loaded (unpickling runs code stored in
            the file).
        input_size: ``(H, W)`` the classifier was trained at, when the user says so; sources
            that cannot know it otherwise run their model at this size.
    """

    weights: Path | None = None
    download: bool = True
    allow_pickle: bool = False
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A pretrained classifier with what is needed to feed it and to name its outputs.

    Attributes:
        name: The model name as the user gave it.
        model: The classifier in eval mode; maps a normalized ``(N, 3, H, W)`` float tensor to
            ``(N, K)`` logits.
        categories: The ``K`` class names, index ``k`` naming logit ``k``.
        mean: Per-channel mean subtracted from RGB values scaled to ``[0, 1]``.
        std: Per-channel standard deviation the centred values are divided by.
        input_size: ``(H, W)`` of the input the classifier was trained/evaluated at, in pixels.
        interpolation: Resampling filter of the reference preprocessing: ``"bilinear"``,
            ``"bicubic"`` or ``"nearest"``.
        source: Short human-readable description of where the weights came from.
        output: What ``model`` returns: ``"logits"``, or probabilities (``"softmax"``,
            ``"sigmoid"``) or log-probabilities (``"log_softmax"``) when its head ends so.
        family: The model source that loaded it (``"torchvision"``, ``"file"``...).
        files: The files it was made from, with their digests.
        notes: What the user should know about how it was loaded (a checkpoint's key prefix
            that was stripped, a window that was assumed).
        mpp: Micrometres per pixel of the input the classifier was trained at, for models that
            record it (a WSInfer model folder), else None: the physical scale a slide is read at
            unless the user gives another.
    """

    name: str
    model: nn.Module
    categories: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    interpolation: Interpolation
    source: str
    output: ModelOutput = "logits"
    family: str = ""
    files: tuple[ModelFile, ...] = ()
    notes: tuple[str, ...] = ()
    mpp: float | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (the length of :attr:`categories`)."""
        return len(self.categories)


@dataclass(frozen=True)
class ModelEntry:
    """One line of ``heatmap --list-models``.

    Attributes:
        name: What to pass to ``load_model`` (and to ``--model``).
        family: The source's :attr:`ModelSource.family`, e.g. ``"torchvision"``.
        weights: The pretrained weights ``load_model`` would use, e.g.
            ``"ResNet50_Weights.IMAGENET1K_V2"``.
        cached: Whether those weights are already on this machine (no download needed).
        location: Where the weights file is, or where it is expected once downloaded; ``None``
            where unknown.
    """

    name: str
    family: str
    weights: str
    cached: bool
    location: Path | None


class ModelSource(ABC):
    """One family of model names: which names it takes, how it builds them, what it lists.

    A new source is a subclass in a new file under ``heatmap_cli/models/`` and one
    ``register_source`` line in ``heatmap_cli/models/__init__.py``. The first registered source
    whose :meth:`claims` accepts a name loads it.

    Attributes:
        family: Short name shown by ``--list-models`` and used as the registry key.
        prefix: What this source's names start with (``"timm/"``), or ``""`` for bare names. An
            unknown name is matched against the names of the sources of the same kind.
        hint: A clause appended to the unknown-model message (how to name any model of the
            family), or ``""``.
    """

    family: ClassVar[str]
    prefix: ClassVar[str] = ""
    hint: ClassVar[str] = ""

    @abstractmethod
    def claims(self, name: str) -> bool:
        """Whether ``name`` (stripped of surrounding spaces) is one of this source's models."""

    @abstractmethod
    def load(self, name: str, request: LoadRequest) -> LoadedModel:
        """Builds a claimed model.

        Args:
            name: A name :meth:`claims` accepted.
            request: The weights file, whether to download or unpickle, the training size.

        Returns:
            The classifier with its class names and preprocessing. With ``request.weights``,
            it has as many classes as the file's classifier.

        Raises:
            UnknownModelError: The name is the source's, but no such model or tag exists.
            WeightsUnavailableError: The pretrained weights are neither cached nor downloadable.
            WeightsMismatchError: ``weights`` (or a cached file) is unreadable or does not fit.
            ModelFileError: A model file or callable cannot be used.
        """

    def entries(self, pattern: str | None = None) -> list[ModelEntry]:
        """The source's models for ``--list-models``.

        Args:
            pattern: A wildcard for sources too large to list whole (timm lists nothing
                without one); other sources ignore it.

        Returns:
            One entry per model, in the order to show.
        """
        del pattern
        return []

    def names(self) -> Iterable[str]:
        """Every name this source knows, to suggest close matches for a mistyped one."""
        return ()

    def aliases(self, name: str) -> list[str]:
        """This source's names for an unknown bare ``name``, best first.

        For a model of this source spelled without its prefix, e.g. ``convnext_nano`` ->
        ``timm/convnext_nano``.
        """
        del name
        return []


def as_interpolation(value: str) -> Interpolation:
    """Normalises a library's interpolation name to ``"bilinear" | "bicubic" | "nearest"``."""
    value = value.lower()
    if value in ("bilinear", "bicubic", "nearest"):
        return value  # type: ignore[return-value]
    if value == "nearest-exact":
        return "nearest"
    # timm uses "random" for training-time augmentation; evaluation resamples bilinearly.
    return "bilinear"


def as_triple(values: Iterable[float]) -> tuple[float, float, float]:
    """Three per-channel floats as a tuple."""
    first, second, third = (float(v) for v in values)
    return first, second, third


def numbered_classes(count: int) -> tuple[str, ...]:
    """``("class 0", ..., "class K-1")``: the names of classes nobody named."""
    return tuple(f"class {index}" for index in range(count))


def short_reason(err: BaseException) -> str:
    """The first sentence of an exception's message, prefixed by its type name."""
    if isinstance(err, urllib.error.URLError):
        text = str(err.reason)
    else:
        text = first_line(err).split(". ")[0].rstrip(".") if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
