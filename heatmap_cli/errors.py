"""Exceptions raised by the library.

Every failure a user can cause (a bad image, a model that cannot be converted, a class that
does not exist, weights that are missing) has its own type, so the command-line layer can turn
it into one clear line and the right exit status without parsing messages.
"""

from __future__ import annotations

from pathlib import Path


class HeatmapError(Exception):
    """Base class of every error the library raises on purpose."""


class ConversionError(HeatmapError, ValueError):
    """The classifier's head cannot be rewritten as convolutions (e.g. attention over tokens)."""


class GeometryError(HeatmapError, ValueError):
    """Sizes, strides or windows that do not fit together (e.g. a stride that does not divide)."""


class UnknownModelError(HeatmapError, ValueError):
    """A model name that neither torchvision nor timm knows."""


class WeightsUnavailableError(HeatmapError):
    """Pretrained weights are neither cached nor downloadable (offline machine)."""


class WeightsMismatchError(HeatmapError, ValueError):
    """A weights file that is unreadable or does not match the model's architecture."""


class UnknownClassError(HeatmapError, ValueError):
    """A class index out of range, or a class name that matches none or several classes."""


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


class OutputWriteError(HeatmapError):
    """An output file or folder that cannot be written."""
