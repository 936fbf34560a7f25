"""Colour: matplotlib colormaps as lookup tables, and blending a heat map over a photo.

Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order; heat maps are float arrays of
shape ``(H, W)`` in ``[0, 1]``. Colormaps come from ``matplotlib.colormaps`` (no pyplot).
"""

from __future__ import annotations

import difflib
import functools
from typing import Literal

import matplotlib
import numpy as np

from heatmap_cli.errors import RenderError, UnknownColormapError
from heatmap_cli.render.heat import BAND_PIXELS, row_bands

__all__ = [
    "DEFAULT_CMAP",
    "AlphaMode",
    "check_cmap",
    "check_rgb",
    "colormap_lut",
    "heat_colors",
    "overlay",
]

DEFAULT_CMAP = "inferno"
"""Perceptually uniform, lightness rises monotonically (reads correctly in greyscale and for
colour-blind viewers) and its bright yellow end reads as "hot" at a glance."""

AlphaMode = Literal["heat", "uniform"]

_PERCEPTUAL_CMAPS = ("inferno", "magma", "viridis", "plasma", "cividis")


@functools.lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """The colormap's lookup table as float32 ``(N, 3)`` RGB in ``[0, 255]``.

    Raises:
        UnknownColormapError: Matplotlib does not know ``name`` (a ``RenderError`` and an
            ``InvalidOptionError``); the message lists close names and perceptual choices.
    """
    if not isinstance(name, str) or name not in matplotlib.colormaps:
        known = list(matplotlib.colormaps)
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
        close += [c for c in known if c.lower() == str(name).lower() and c not in close]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownColormapError(
            f"unknown colormap {name!r}; {hint}"
            f"perceptually uniform choices: {', '.join(_PERCEPTUAL_CMAPS)}"
        )
    cmap = matplotlib.colormaps[name]
    # Integer input indexes the table directly, so this is exactly what cmap(x) would give.
    return (cmap(np.arange(cmap.N))[:, :3] * 255).astype(np.float32)


def check_cmap(name: str) -> None:
    """Checks a colormap name up front (e.g. before a long batch), as :func:`overlay` would.

    Args:
        name: Name of a matplotlib colormap.

    Raises:
        UnknownColormapError: If matplotlib does not know the name; the message lists close
            names and the perceptually uniform choices.
    """
    colormap_lut(name)


def heat_colors(heat: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Colours of heat values in ``[0, 1]``, binned as matplotlib's ``Colormap.__call__`` does."""
    n = len(lut)
    return lut[np.minimum((heat * n).astype(np.intp), n - 1)]


def check_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """``image`` as a non-empty uint8 ``(H, W, 3)`` array, or RenderError naming it ``name``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise RenderError(
            f"{name} must be a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise RenderError(f"{name} is empty: {image.shape}")
    return image


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    alpha_mode: AlphaMode = "heat",
    band_pixels: int = BAND_PIXELS,
) -> np.ndarray:
    """Colours a heat map and blends it over a photo.

    With ``alpha_mode="heat"`` (default) the opacity of each pixel is ``alpha * heat``, so
    low-score regions show the photo unchanged and only where the class scores high does the
    colour cover it; the colour encodes the score and the opacity reinforces it. With
    ``"uniform"`` every pixel gets opacity ``alpha`` (the classic ``show_cam_on_image`` look).
    Either way ``alpha=0`` returns the photo exactly, and ``alpha=1`` at heat 1 returns the
    colormap's top colour.

    Args:
        image: uint8 ``(H, W, 3)`` RGB photo.
        heat: float ``(H, W)`` in ``[0, 1]`` (see :func:`normalize_scores`).
        cmap: Name of a matplotlib colormap; default ``"inferno"``.
        alpha: Maximum opacity of the colour, in ``[0, 1]``.
        alpha_mode: ``"heat"`` or ``"uniform"``.
        band_pixels: Pixels blended per band (bounds the temporaries); no effect on the result.

    Returns:
        uint8 ``(H, W, 3)`` RGB image.

    Raises:
        RenderError: On an unknown colormap (the message lists close names), an ``alpha``
            outside ``[0, 1]``, heat outside ``[0, 1]`` or of the wrong shape.
    """
    image = check_rgb(image)
    heat = np.asarray(heat)
    if heat.shape != image.shape[:2]:
        raise RenderError(f"heat has shape {heat.shape}, the image is {image.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise RenderError(f"alpha must be in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if alpha_mode not in ("heat", "uniform"):
        raise RenderError(f"alpha_mode must be 'heat' or 'uniform', got {alpha_mode!r}")
    lut = colormap_lut(cmap)

    out = np.empty_like(image)
    for part in row_bands(*heat.shape, band_pixels):
        h = heat[part].astype(np.float32)
        if not np.all(np.isfinite(h)) or h.min() < -1e-6 or h.max() > 1 + 1e-6:
            raise RenderError("heat must be finite and within [0, 1]; normalize scores first")
        np.clip(h, 0.0, 1.0, out=h)
        opacity = (alpha * h if alpha_mode == "heat" else np.full_like(h, alpha))[..., None]
        blended = image[part] * (1 - opacity) + heat_colors(h, lut) * opacity
        out[part] = np.clip(np.rint(blended), 0, 255)
    return out
