"""The user's word over a model's metadata: class names, training window, mean and std.

A classifier fine-tuned elsewhere was trained at its own window (64, 96, 128 pixels...), maybe
with its own normalization, on its own classes. :func:`apply_overrides` puts what the user says
over what the model's library says; :func:`parse_input_size` and :func:`parse_channels` read
the command's spellings (``224`` or ``256,192``; ``0.5,0.5,0.5``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.models.base import LoadedModel, ModelFile
from heatmap_cli.models.files import file_sha256
from heatmap_cli.models.label_files import check_label_count, read_labels

__all__ = [
    "apply_overrides",
    "check_channels",
    "check_input_size",
    "parse_channels",
    "parse_input_size",
]


def parse_input_size(text: str, option: str = "--input-size") -> tuple[int, int]:
    """Reads a window: ``"224"`` (square) or ``"H,W"``.

    Raises:
        InvalidOptionError: Not one or two positive whole numbers; the message names ``option``.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise InvalidOptionError(
            f"{option} must be PIXELS or H,W (positive whole numbers), got {text!r}"
        )
    return int(parts[0]), int(parts[-1])


def parse_channels(text: str, option: str, *, positive: bool = False) -> tuple[float, float, float]:
    """Reads three per-channel numbers ``"R,G,B"`` (values of pixels scaled to ``[0, 1]``).

    Raises:
        InvalidOptionError: Not three finite numbers (positive ones with ``positive``); the
            message names ``option``.
    """
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    return check_channels(values, option, positive=positive, given=text)


def check_channels(
    values: Sequence[float], option: str, *, positive: bool = False, given: object = None
) -> tuple[float, float, float]:
    """Checks three per-channel numbers (a mean, or a std with ``positive``).

    Raises:
        InvalidOptionError: Not three finite numbers, or not all positive with ``positive``.
    """
    kind = "positive numbers" if positive else "numbers"
    valid = len(values) == 3 and all(math.isfinite(v) and (v > 0 or not positive) for v in values)
    if not valid:
        shown = given if given is not None else tuple(values)
        raise InvalidOptionError(f"{option} must be three {kind} R,G,B, got {shown!r}")
    first, second, third = (float(v) for v in values)
    return first, second, third


def check_input_size(size: Sequence[int], option: str = "input_size") -> tuple[int, int]:
    """Checks a window ``(H, W)`` of positive whole numbers.

    Raises:
        InvalidOptionError: Anything else.
    """
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise InvalidOptionError(f"{option} must be two positive whole numbers (H, W), got {size}")
    return size[0], size[1]


def apply_overrides(
    loaded: LoadedModel,
    *,
    labels: Path | None = None,
    input_size: tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LoadedModel:
    """A loaded model with the user's class names, window, mean and std.

    Args:
        loaded: The model as its source loaded it.
        labels: A labels file (:mod:`~heatmap_cli.models.label_files`); its names must be as many as
            the model's classes. It is recorded with its digest in ``files``.
        input_size: ``(H, W)`` the classifier was trained at: its window.
        mean: Per-channel mean of RGB values in ``[0, 1]``.
        std: Per-channel standard deviation (positive).

    Returns:
        The model with these fields replaced (the others as they were).

    Raises:
        LabelsFileError: The labels file cannot be read or has the wrong number of names.
        InvalidOptionError: A window, mean or std that is not valid.
    """
    changes: dict[str, object] = {}
    if labels is not None:
        names = read_labels(labels)
        check_label_count(names, loaded.num_classes, labels)
        changes["categories"] = names
        changes["files"] = (*loaded.files, ModelFile("labels", labels, file_sha256(labels)))
    if input_size is not None:
        changes["input_size"] = check_input_size(input_size)
    if mean is not None:
        changes["mean"] = check_channels(mean, "mean")
    if std is not None:
        changes["std"] = check_channels(std, "std", positive=True)
    return replace(loaded, **changes)  # type: ignore[arg-type]
