"""Colour scales: which scores the bottom and the top of the colormap stand for.

Three scales, for the classes drawn for one image (:data:`SCALES`):

* ``absolute``: fixed ends, the same for every class and image: probabilities from 0 to 1.
  Logits have no natural range, so they need ``vmin`` and ``vmax``. Honest across a batch, but
  a class that peaks at 0.35 is drawn in the colormap's lower third, dark and faint with
  ``inferno``.
* ``shared`` (the default): one range for all the classes drawn for an image, from 0 to the
  highest peak among them (logits: their lowest to their highest value). Within one image's
  sheet a 0.12 looks weaker than a 0.35, and the strongest class uses the whole colormap.
* ``per-class``: each class over its own range, 0 to its own peak: shows where each class is
  strongest, but a class at 0.12 looks as hot as one at 0.35.

A probability range never ends below :data:`PROBABILITY_FLOOR` (a class the model barely sees
is not drawn as hot). On a diverging colormap the range is centred on the score 0 (``-m..m``),
so logits below and above 0 take the two hues and 0 is transparent; probabilities, never below
0, use its upper half. ``vmin`` and ``vmax`` replace either end of any scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heatmap_cli.errors import InvalidOptionError, setting

if TYPE_CHECKING:  # the scale is checked with the options, before numpy is imported
    import numpy as np

__all__ = [
    "DEFAULT_SCALE",
    "PROBABILITY_FLOOR",
    "SCALES",
    "ColourScale",
    "check_scale",
    "colour_scales",
]

SCALES: tuple[str, ...] = ("shared", "absolute", "per-class")
DEFAULT_SCALE = "shared"
PROBABILITY_FLOOR = 0.1
"""The top of a data-derived probability range is at least this."""


@dataclass(frozen=True)
class ColourScale:
    """The scores at the ends of the colormap for one class map.

    Attributes:
        low: The score drawn as the colormap's bottom.
        high: The score drawn as its top, above ``low``.
        name: The scale it comes from: ``"shared"``, ``"absolute"`` or ``"per-class"``.
    """

    low: float
    high: float
    name: str

    def describe(self) -> str:
        """E.g. ``"shared 0-0.35"``: the scale and its range, for a label."""
        return f"{self.name} {self.low:.3g}\N{EN DASH}{self.high:.3g}"


def check_scale(
    scale: str, probabilities: bool, vmin: float | None = None, vmax: float | None = None
) -> None:
    """Raises on a scale that cannot be drawn, before any image is scored.

    Args:
        scale: One of :data:`SCALES`.
        probabilities: Whether the scores are probabilities (else logits).
        vmin: A fixed bottom, or None.
        vmax: A fixed top, or None.

    Raises:
        InvalidOptionError: An unknown scale, non-finite or inverted ends, or ``absolute`` for
            logits without both ends.
    """
    if scale not in SCALES:
        raise InvalidOptionError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    for name, value in (("vmin", vmin), ("vmax", vmax)):
        if value is not None and not math.isfinite(value):
            raise InvalidOptionError(f"{name} must be a finite number, got {value}")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise InvalidOptionError(f"vmin must be below vmax, got {vmin} and {vmax}")
    if scale == "absolute" and not probabilities and (vmin is None or vmax is None):
        raise InvalidOptionError(
            f"logits have no absolute range: give {setting('vmin')} and {setting('vmax')} with "
            f"{setting('scale')} absolute, or use {setting('scale')} shared or per-class"
        )


def colour_scales(
    maps: Sequence[np.ndarray],
    *,
    scale: str = DEFAULT_SCALE,
    probabilities: bool = True,
    diverging: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
) -> list[ColourScale]:
    """The colour scale of each class map drawn for one image.

    Args:
        maps: Each drawn class's scores, float ``(rows, cols)``, finite.
        scale: ``"shared"``, ``"absolute"`` or ``"per-class"`` (see the module docstring).
        probabilities: Whether the scores are probabilities in ``[0, 1]`` (else logits).
        diverging: Centre the ranges on the score 0 (for a diverging colormap).
        vmin: Replaces the bottom of every range, or None.
        vmax: Replaces the top of every range, or None.

    Returns:
        One scale per map, in order.

    Raises:
        InvalidOptionError: As :func:`check_scale`.
    """
    check_scale(scale, probabilities, vmin, vmax)
    if scale == "absolute":
        ranges = [(0.0, 1.0)] * len(maps)  # for logits both ends are given (check_scale)
    elif scale == "shared":
        together = _data_range(maps, probabilities, diverging)
        ranges = [together] * len(maps)
    else:
        ranges = [_data_range([values], probabilities, diverging) for values in maps]
    scales = []
    for low, high in ranges:
        low = low if vmin is None else float(vmin)
        high = high if vmax is None else float(vmax)
        if high <= low:  # a constant map, or a fixed end beyond the data's other end
            low, high = (low, low + 1.0) if vmax is None else (high - 1.0, high)
        scales.append(ColourScale(low, high, scale))
    return scales


def _data_range(
    maps: Sequence[np.ndarray], probabilities: bool, diverging: bool
) -> tuple[float, float]:
    """The range the maps' own values call for."""
    if not maps:
        return (0.0, 1.0)
    low = min(float(values.min()) for values in maps)
    high = max(float(values.max()) for values in maps)
    if probabilities:
        low, high = 0.0, max(high, PROBABILITY_FLOOR)
    if diverging:
        reach = max(abs(low), abs(high))
        low, high = -reach, reach
    return low, high
