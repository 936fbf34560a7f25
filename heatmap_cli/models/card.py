"""A model's card: what loading and converting it gives, except its weights.

Everything the command checks options against (the class names, the window, the native stride,
what the model returns) and records in an image's settings (preprocessing, the files it came
from, where the weights came from) is a handful of plain values. A :class:`ModelCard` holds
them, in JSON, so that a run which computes nothing (a usage error, a resume where every image
is done) can answer from the card without importing torch or loading the model. The command
keeps one per model it has loaded (``heatmap_cli.cli.preflight``); the default model's ships
with the package (:func:`~heatmap_cli.models.catalog.default_card`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heatmap_cli.models.base import Interpolation, LoadedModel, ModelFile, ModelOutput

__all__ = ["ModelCard"]


@dataclass(frozen=True)
class ModelCard:
    """A model without its weights, as the command uses it.

    Attributes:
        name: The model name as the user gave it.
        family: The model source that loads it (``"default"``, ``"torchvision"``...).
        categories: The ``K`` class names.
        mean: Per-channel mean of RGB values in ``[0, 1]``.
        std: Per-channel standard deviation.
        input_size: ``(H, W)`` of the window.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        source: Where the weights come from, for the user and the json.
        output: What the model returns (``"logits"``, ``"softmax"``...).
        files: The files it is made from, with their digests.
        native_stride: The converted network's own stride; None when it cannot be converted
            (the command then falls back to crops).
        dtype: The dtype of its weights (``"float32"``...).
        notes: What the command says about it once loaded and converted.
    """

    name: str
    family: str
    categories: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    interpolation: Interpolation
    source: str
    output: ModelOutput
    files: tuple[ModelFile, ...]
    native_stride: int | None
    dtype: str = "float32"
    notes: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes ``K``."""
        return len(self.categories)

    @classmethod
    def of(
        cls,
        loaded: LoadedModel,
        native_stride: int | None,
        dtype: str,
        notes: tuple[str, ...] = (),
    ) -> ModelCard:
        """The card of a loaded model, given what converting it gave."""
        return cls(
            name=loaded.name,
            family=loaded.family,
            categories=loaded.categories,
            mean=loaded.mean,
            std=loaded.std,
            input_size=loaded.input_size,
            interpolation=loaded.interpolation,
            source=loaded.source,
            output=loaded.output,
            files=loaded.files,
            native_stride=native_stride,
            dtype=dtype,
            notes=notes,
        )

    def renamed(self, name: str) -> ModelCard:
        """The same card under the name the user gave this time."""
        return replace(self, name=name)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (:meth:`from_json` reads it back)."""
        return {
            "name": self.name,
            "family": self.family,
            "categories": list(self.categories),
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "source": self.source,
            "output": self.output,
            "files": [[f.role, str(f.path), f.sha256] for f in self.files],
            "native_stride": self.native_stride,
            "dtype": self.dtype,
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        """The card :meth:`to_json` wrote.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such a dict.
        """
        mean, std = data["mean"], data["std"]
        height, width = data["input_size"]
        stride = data["native_stride"]
        return cls(
            name=str(data["name"]),
            family=str(data["family"]),
            categories=tuple(str(name) for name in data["categories"]),
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            input_size=(int(height), int(width)),
            interpolation=data["interpolation"],
            source=str(data["source"]),
            output=data["output"],
            files=tuple(ModelFile(str(r), Path(p), str(d)) for r, p, d in data["files"]),
            native_stride=None if stride is None else int(stride),
            dtype=str(data["dtype"]),
            notes=tuple(str(note) for note in data["notes"]),
        )
