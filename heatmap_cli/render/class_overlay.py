"""One class's map over the photo: the composition the command writes per class.

A typical per-class call, with ``probs`` of shape ``(K, rows, cols)`` and ``centers`` from
:meth:`heatmap_cli.geometry.GridGeometry.centers`::

    peak, x, y = peak_location(probs[k], centers)
    picture = render_class_overlay(photo, probs[k], centers, label=f"{name}  p={peak:.2f}")

Scales: probabilities have a natural, fixed range, so the default ``vmin=0, vmax=1`` keeps colours
comparable across classes and images (a class that peaks at 0.3 looks dim, which is the truth).
Logits have no natural range; pass ``vmin``/``vmax`` explicitly (e.g. the minimum and maximum over
all rendered classes, so classes stay comparable) or ``None`` for the grid's own minimum/maximum,
and say which on the colour bar.
"""

from __future__ import annotations

import numpy as np

from heatmap_cli.render.colour import DEFAULT_CMAP, AlphaMode, check_rgb, overlay
from heatmap_cli.render.heat import (
    Interpolation,
    cell_values_to_image,
    normalize_scores,
    resolve_range,
)
from heatmap_cli.render.labels import add_colorbar, annotate

__all__ = ["render_class_overlay"]


def render_class_overlay(
    image: np.ndarray,
    values: np.ndarray,
    centers: np.ndarray,
    *,
    label: str | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    alpha_mode: AlphaMode = "heat",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    colorbar: bool = False,
    colorbar_label: str = "score",
    method: Interpolation = "pchip",
) -> np.ndarray:
    """One class's heat map over the photo: normalize, spread, colour, blend, label.

    Args:
        image: uint8 ``(H, W, 3)`` RGB photo at the resolution the centres refer to.
        values: The class's scores per cell, ``(rows, cols)`` (probabilities or logits).
        centers: ``(rows, cols, 2)`` window centres ``(x, y)`` in the photo's pixels.
        label: Text for the top-left box (e.g. ``"tabby cat  p=0.87"``), or ``None``.
        cmap: Matplotlib colormap name.
        alpha: Maximum colour opacity in ``[0, 1]``.
        alpha_mode: ``"heat"`` (opacity grows with the score) or ``"uniform"``.
        vmin: Score shown as the colormap's bottom, ``None`` for the grid minimum.
        vmax: Score shown as the colormap's top, ``None`` for the grid maximum.
        colorbar: Append a colour bar on the right (the result is then wider than the photo).
            It spans the resolved ``[vmin, vmax]``; a constant grid with a data-derived range
            (drawn as all heat 0) gets a bar from that value to one more.
        colorbar_label: Text along the colour bar.
        method: Interpolation between centres, ``"pchip"`` or ``"linear"``.

    Returns:
        uint8 ``(H, W, 3)`` image, or ``(H, W + bar, 3)`` with ``colorbar=True``.

    Raises:
        RenderError: On any invalid argument (see the functions it composes).
    """
    image = check_rgb(image)
    scores = np.asarray(values, dtype=np.float64)
    heat = cell_values_to_image(
        normalize_scores(scores, vmin, vmax), centers, image.shape[:2], method=method
    )
    out = overlay(image, heat, cmap=cmap, alpha=alpha, alpha_mode=alpha_mode)
    if label:
        out = annotate(out, label)
    if colorbar:
        low, high = resolve_range(scores, vmin, vmax)
        if high == low:
            high = low + 1.0
        out = add_colorbar(out, cmap, low, high, colorbar_label)
    return out
