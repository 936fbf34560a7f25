"""An architecture built for a checkpoint: as many classes as the file's classifier has.

A classifier fine-tuned elsewhere has its own number of classes ``K``. The architecture is first
built with its default head (on the meta device when it is a library's, so nothing is
allocated), the checkpoint's key prefix is matched to it (:func:`~heatmap_cli.models.weights.
match_keys`), and the tensors whose shapes differ from the default's in exactly one dimension
name ``K``: the classifier's weight ``(K, C)`` and bias ``(K,)`` (and any auxiliary head's).
The architecture is then built with ``num_classes=K`` and every tensor is loaded strictly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from heatmap_cli.errors import WeightsMismatchError
from heatmap_cli.models.weights import Checkpoint, load_strict, match_keys, shape_mismatches

__all__ = ["Builder", "FittedModel", "build_for_checkpoint", "classes_in_checkpoint"]

Builder = Callable[[int | None], nn.Module]
"""``build(num_classes)`` -> the architecture; ``None`` builds its default head."""


@dataclass(frozen=True)
class FittedModel:
    """An architecture with a checkpoint's weights.

    Attributes:
        model: The architecture, built for the file's number of classes, weights loaded.
        num_classes: The file's ``K`` when it differs from the architecture's default, else
            None (the default head fits).
        notes: Where the weights were found in the file (wrapper, stripped key prefix).
        checkpoint: The file it was loaded from (None: the library's own weights).
    """

    model: nn.Module
    num_classes: int | None
    notes: tuple[str, ...]
    checkpoint: Checkpoint | None = None

    def window(
        self, own: tuple[int, int], requested: tuple[int, int] | None, arch: str | None
    ) -> tuple[tuple[int, int], tuple[str, ...]]:
        """The window the model runs at, and the notes to give with it.

        A classifier fine-tuned elsewhere was trained at its own size (64, 96, 128...), which
        nothing but the user or the file can say: the size the user gave, else the one the file
        records (:func:`~heatmap_cli.models.weights.recorded_input_size`), else the
        architecture's own with a note, as a model file without a recorded size gets.

        Args:
            own: The architecture's training size ``(H, W)`` (its library's metadata), or the
                size assumed for code that records none.
            requested: The size the user gave (``input_size``), which wins.
            arch: The architecture's name, for the note; None where ``own`` is only assumed.

        Returns:
            ``(H, W)`` and :attr:`notes`, with a line saying where the size came from when it
            came from the file or was assumed.
        """
        checkpoint = self.checkpoint
        if requested is not None or checkpoint is None:
            return requested or own, self.notes
        if checkpoint.input_size is not None:
            height, width = checkpoint.input_size
            where = checkpoint.input_size_from
            note = f"{checkpoint.path}: input size {width}x{height}, from its {where}"
            return checkpoint.input_size, (*self.notes, note)
        whose = f", {arch}'s own" if arch else ""
        note = (
            f"{checkpoint.path} records no input size; assuming {own[1]}x{own[0]}{whose} "
            "(set --input-size to the size it was trained at)"
        )
        return own, (*self.notes, note)


def classes_in_checkpoint(
    tensors: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    path: object,
    arch: str,
) -> int | None:
    """The number of classes a checkpoint's classifier has, read against a default build.

    Args:
        tensors: The checkpoint's tensors, keyed as the architecture expects.
        reference: The state dict of the architecture built with its default head (shapes only).
        path: The file, for messages.
        arch: The architecture's name, for messages.

    Returns:
        ``K`` where the shapes differ from the default's in one dimension, all by the same
        ``K``; None when every shape already fits.

    Raises:
        WeightsMismatchError: Shapes differ in other ways, or name several different ``K``:
            no number of classes makes the file fit.
    """
    mismatches = shape_mismatches(tensors, reference)
    if not mismatches:
        return None
    counts = {
        _single_difference(tensors[key].shape, value.shape)
        for key, value in reference.items()
        if key in tensors and tensors[key].shape != value.shape
    }
    if len(counts) != 1 or None in counts:
        raise WeightsMismatchError(
            f"{path}: its classifier fits {arch} for no number of classes (file vs model "
            f"with the default head: {'; '.join(mismatches[:3])})."
        )
    return counts.pop()


def _single_difference(file_shape: torch.Size, model_shape: torch.Size) -> int | None:
    """The file's size in the one dimension where two shapes of equal rank differ, else None."""
    if len(file_shape) != len(model_shape):
        return None
    differing = [a for a, b in zip(file_shape, model_shape, strict=True) if a != b]
    return differing[0] if len(differing) == 1 else None


def build_for_checkpoint(
    build: Builder, checkpoint: Checkpoint, arch: str, *, probe_on_meta: bool = True
) -> FittedModel:
    """Builds an architecture with as many classes as a checkpoint and loads it strictly.

    Args:
        build: Builds the architecture for a number of classes (None: its default head).
        checkpoint: From :func:`~heatmap_cli.models.weights.read_checkpoint`.
        arch: The architecture's name, for messages.
        probe_on_meta: Build the default head on the meta device (library code: nothing is
            allocated). False for code that must run as written (the user's own): then the
            default build is kept when its head fits.

    Returns:
        The model with the file's weights, its ``K`` if not the default, and notes.

    Raises:
        WeightsMismatchError: The file fits the architecture for no number of classes, or
            other keys or shapes differ (the message names them).
    """
    with torch.device("meta") if probe_on_meta else contextlib.nullcontext():
        reference = build(None)
    expected = reference.state_dict()
    matched = match_keys(checkpoint, expected.keys())
    num_classes = classes_in_checkpoint(matched.tensors, expected, checkpoint.path, arch)
    model = reference if num_classes is None and not probe_on_meta else build(num_classes)
    load_strict(model, matched.tensors, checkpoint.path, arch)
    note = matched.note(checkpoint)
    return FittedModel(model, num_classes, (note,) if note else (), checkpoint)
