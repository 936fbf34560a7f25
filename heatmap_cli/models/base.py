"""What every model source shares: the loaded model, a listing entry, and the source interface.

A *model source* is one family of names (``efficientnet_lite0``, torchvision's ``resnet50``,
``timm/NAME``...): it says which names it takes (:meth:`ModelSource.claims`), builds them with
their class names and preprocessing (:meth:`ModelSource.load`) and lists what it offers
(:meth:`ModelSource.entries`). Sources are registered in :mod:`heatmap_cli.models.registry`.
"""

from __future__ import annotations

import urllib.error
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from torch import nn

from heatmap_cli.errors import first_line

__all__ = [
    "DEFAULT_MODEL",
    "Interpolation",
    "LoadedModel",
    "ModelEntry",
    "ModelSource",
    "as_interpolation",
    "as_triple",
    "short_reason",
]

DEFAULT_MODEL = "efficientnet_lite0"
"""The model used when none is named; its weights ship with a Python package (no download)."""

Interpolation = Literal["bilinear", "bicubic", "nearest"]


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
    """

    name: str
    model: nn.Module
    categories: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    interpolation: Interpolation
    source: str

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
    def load(self, name: str, *, weights: Path | None, download: bool) -> LoadedModel:
        """Builds a claimed model.

        Args:
            name: A name :meth:`claims` accepted.
            weights: A local state dict or checkpoint to load instead of the pretrained weights.
            download: Whether missing pretrained weights may be downloaded.

        Returns:
            The classifier with its class names and preprocessing.

        Raises:
            UnknownModelError: The name is the source's, but no such model or tag exists.
            WeightsUnavailableError: The pretrained weights are neither cached nor downloadable.
            WeightsMismatchError: ``weights`` (or a cached file) is unreadable or does not fit.
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


def short_reason(err: BaseException) -> str:
    """The first sentence of an exception's message, prefixed by its type name."""
    if isinstance(err, urllib.error.URLError):
        text = str(err.reason)
    else:
        text = first_line(err).split(". ")[0].rstrip(".") if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
