"""One class's map over the photo: the composition the command writes per class.

A typical per-class call, with ``probs`` of shape ``(K, rows, cols)`` and ``centers`` from
:meth:`heatmap_cli.grid.geometry.GridGeometry.centers`::

    peak, x, y = peak_location(probs[k], centers)
    picture = render_class_overlay(photo, probs[k], centers, label=f"{name}  p={peak:.2f}")

Scales: probabilities have a natural, fixed range, so the default ``vmin=0, vmax=1`` keeps colours
comparable across classes and images (a class that peaks at 0.3 looks dim, which is the truth).
Logits have no natural range; pass ``vmin``/``vmax`` explicitly (e.g. the minimum and maximum over
all rendered classes, so classes stay comparable) or ``None`` for the grid's own minimum/maximum;
:mod:`heatmap_cli.render.scale` chooses them for the command. On a diverging colormap the score 0
is drawn transparent and opacity grows towards both ends.

Beyond the outermost window centres the map fades out (``heat.margin_fade``): nothing was
measured there. The label goes, by default, in the corner where it hides the least of the map.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from heatmap_cli.render.colour import (
    DEFAULT_CMAP,
    AlphaMode,
    OpacityRule,
    check_rgb,
    colormap_palette,
    composite,
    is_diverging,
)
from heatmap_cli.render.colour_layer import colour_layer
from heatmap_cli.render.heat import Interpolation, normalize_scores, resolve_range
from heatmap_cli.render.text import Corner, add_colorbar, annotate, quietest_corner

__all__ = ["LabelPlace", "render_class_overlay"]

LabelPlace = Corner | Literal["auto"]


def render_class_overlay(
    image: np.ndarray,
    values: np.ndarray,
    centers: np.ndarray,
    *,
    label: str | None = None,
    label_corner: LabelPlace = "auto",
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    alpha_mode: AlphaMode = "sqrt",
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    colorbar: bool = False,
    colorbar_label: str = "score",
    method: Interpolation = "pchip",
    fade_margins: bool = True,
) -> np.ndarray:
    """One class's heat map over the photo: normalize, spread, colour, blend, label.

    Args:
        image: uint8 ``(H, W, 3)`` RGB photo at the resolution the centres refer to.
        values: The class's scores per cell, ``(rows, cols)`` (probabilities or logits).
        centers: ``(rows, cols, 2)`` window centres ``(x, y)`` in the photo's pixels.
        label: Text for a corner box (e.g. ``"tabby cat  p=0.87"``), or ``None``.
        label_corner: Its corner, or ``"auto"``: where it hides the least of the drawn map.
        cmap: Matplotlib colormap name.
        alpha: Maximum colour opacity in ``[0, 1]``.
        alpha_mode: ``"sqrt"``, ``"linear"`` or ``"uniform"`` (``colour.OpacityRule``).
        vmin: Score shown as the colormap's bottom, ``None`` for the grid minimum.
        vmax: Score shown as the colormap's top, ``None`` for the grid maximum.
        colorbar: Append a colour bar (at the map's opacity, over grey) over ``[vmin, vmax]``.
        colorbar_label: Text along the colour bar.
        method: Interpolation between centres, ``"pchip"`` or ``"linear"``.
        fade_margins: Fade the map out beyond the outermost window centres.

    Returns:
        uint8 ``(H, W, 3)`` image, or ``(H, W + bar, 3)`` with ``colorbar=True``.

    Raises:
        RenderError: On any invalid argument (see the functions it composes).
    """
    image = check_rgb(image)
    scores = np.asarray(values, dtype=np.float64)
    low, high = resolve_range(scores, vmin, vmax)
    rule = OpacityRule(alpha, alpha_mode, _zero_heat(low, high) if is_diverging(cmap) else 0.0)
    heat = normalize_scores(scores, vmin, vmax)
    size = image.shape[:2]
    layer = colour_layer(heat, centers, size, rule, method=method, fade_margins=fade_margins)
    out = composite(image, layer.index, layer.opacity, colormap_palette(cmap))
    if label:
        if label_corner == "auto":
            label_corner = quietest_corner(image.shape[:2], label, layer.hidden)
        out = annotate(out, label, corner=label_corner)
    if colorbar:
        top = high if high > low else low + 1.0  # a constant map: from its value to one more
        out = add_colorbar(out, cmap, low, top, colorbar_label, opacity=rule)
    return out


def _zero_heat(low: float, high: float) -> float:
    """Where the score 0 falls in heat, clipped to ``[0, 1]``: a diverging map's centre."""
    if high <= low:
        return 0.0
    return min(1.0, max(0.0, -low / (high - low)))
