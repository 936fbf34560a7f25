"""Every exception the library raises on purpose, and the one helper that describes errors.

Every failure a user can cause (a bad image, a model that cannot be converted, a class that
does not exist, weights that are missing, an option that cannot work) has its own type, so the
command-line layer can turn it into one clear line and choose the exit status from the base
class alone, without parsing messages:

* ``UsageError`` and its subclasses: what the user asked for can never work (exit 2);
* every other ``HeatmapError``: an input or an output failed (exit 1).

Messages that tell the user which setting to change name it through :func:`setting`: the
library's parameter name (``max_input_pixels``) for a Python caller, the option
(``--max-input-pixels``) while the command runs (:func:`command_line_names`). The library never
spells a command-line flag itself.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

__all__ = [
    "ClusterError",
    "ConversionError",
    "GeometryError",
    "HeatmapError",
    "ImageReadError",
    "InputTooLargeError",
    "InvalidOptionError",
    "LabelsFileError",
    "MemoryExhaustedError",
    "ModelFileError",
    "NonFiniteScoresError",
    "OutputWriteError",
    "RenderError",
    "SlideReadError",
    "TimmCouplingError",
    "TrainingModeError",
    "UnknownClassError",
    "UnknownColormapError",
    "UnknownModelError",
    "UsageError",
    "WeightsMismatchError",
    "WeightsUnavailableError",
    "command_line_names",
    "first_line",
    "setting",
]


class HeatmapError(Exception):
    """Base class of every error the library raises on purpose."""


class UsageError(HeatmapError, ValueError):
    """Base class of errors in what the user asked for: options, models, classes, sizes."""


class InvalidOptionError(UsageError):
    """An option value or a combination of options that cannot work (device, method, pooling)."""


class GeometryError(UsageError):
    """Sizes, strides or windows that do not fit together (e.g. a stride that does not divide)."""


class UnknownModelError(UsageError):
    """A model name that no model source knows."""


class WeightsMismatchError(UsageError):
    """A weights file that is unreadable or does not match the model's architecture."""


class ModelFileError(UsageError):
    """A model given as a file or a callable that cannot be used.

    A missing, corrupt or unrecognized archive, a full-model pickle refused without
    ``allow_pickle``, a ``module:callable`` that does not exist, raises or returns no module.
    """


class LabelsFileError(UsageError):
    """A labels file that cannot be read, or whose names do not match the model's classes."""


class UnknownClassError(UsageError):
    """A class index out of range, or a class name that matches none or several classes."""


class TrainingModeError(UsageError):
    """A model in training mode: its grid would be random and scoring it would change it."""


class ConversionError(HeatmapError, ValueError):
    """The classifier's head cannot be rewritten as convolutions (e.g. attention over tokens)."""


class TimmCouplingError(ConversionError):
    """A timm model, and a timm release without a name heatmap-cli reads it by.

    A layer class or a registry function the conversion knows by name, or a ``pretrained_cfg``
    key; the message names what is missing.
    """


class WeightsUnavailableError(UsageError):
    """Pretrained weights are neither cached nor downloadable (offline machine).

    A usage error: the model asked for cannot be had here, so the run cannot start (exit 2,
    before any image is read), as for a model name that does not exist.
    """


class RenderError(HeatmapError, ValueError):
    """Scores, centres or colour ranges that cannot be drawn (mismatched shapes, NaN)."""


class UnknownColormapError(InvalidOptionError, RenderError):
    """A colormap name matplotlib does not know: an option value that cannot be drawn."""


class ImageReadError(HeatmapError):
    """An input file that cannot be decoded as an image.

    Attributes:
        path: The offending file.
        reason: A short human-readable reason, without the path.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NonFiniteScoresError(HeatmapError):
    """The model returned NaN or infinite scores for an image: nothing can be drawn of it."""


class SlideReadError(ImageReadError):
    """A whole-slide or gigapixel file that cannot be opened or read by region.

    Truncated files, corrupt or missing tiles and levels, vendor formats no installed reader
    knows, and slides without the microns per pixel a physical scale needs. ``reason`` says
    what is wrong and what to do, in one line.
    """


class OutputWriteError(HeatmapError):
    """An output file or folder that cannot be written."""


class InputTooLargeError(HeatmapError):
    """An image whose network input is above ``--max-input-pixels`` or ``--max-aspect``.

    Raised when its passes are planned, before anything of that size is allocated; the message
    names the limit and the option that raises it. One image fails, the batch goes on.
    """


class MemoryExhaustedError(HeatmapError):
    """One image ran out of memory; the message says at which step and which option to lower."""


class ClusterError(HeatmapError):
    """The Ray cluster of ``--ray`` failed the run (unreachable, or its workers kept dying)."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, or its type name when it has none.

    Args:
        error: Any exception.

    Returns:
        One line, suitable for a one-line report.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


class _Spelling:
    """How :func:`setting` names a setting now: None for Python names, else flag aliases."""

    lock = threading.Lock()
    flags: Mapping[str, str] | None = None


def setting(name: str) -> str:
    """How a message names the setting ``name`` (a library parameter, e.g. ``"max_input_pixels"``).

    Returns:
        ``name`` itself for Python callers; inside :func:`command_line_names`, the command's
        option: ``"--max-input-pixels"``, or the alias it was given.
    """
    flags = _Spelling.flags
    if flags is None:
        return name
    return flags.get(name, "--" + name.replace("_", "-"))


@contextlib.contextmanager
def command_line_names(aliases: Mapping[str, str] | None = None) -> Iterator[None]:
    """Within the block, :func:`setting` names settings as the command's options.

    Process-wide (the loader and writer threads format messages too); the command enters it for
    its whole run, a Ray worker for its life.

    Args:
        aliases: Options whose flag is not ``--`` plus the parameter's name with dashes,
            e.g. ``{"max_display_side": "--max-overlay-side"}``.
    """
    with _Spelling.lock:
        previous = _Spelling.flags
        _Spelling.flags = dict(aliases or {})
    try:
        yield
    finally:
        with _Spelling.lock:
            _Spelling.flags = previous
