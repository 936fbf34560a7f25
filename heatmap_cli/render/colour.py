"""Colour: matplotlib colormaps as lookup tables, opacity, and blending a heat map over a photo.

Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order; heat maps are float arrays of
shape ``(H, W)`` in ``[0, 1]``. Colormaps come from ``matplotlib.colormaps`` (no pyplot).

Opacity (:class:`OpacityRule`) is the one rule that both the overlays and their colour bars use, so
the bar shows exactly what is drawn. By default it grows with the square root of the heat
(``alpha * sqrt(heat)``): a score at a quarter of the range is already drawn at half of
``alpha``, so middle values stay visible, while a score of 0 still leaves the photo untouched.
On a diverging colormap the heat is measured from the colormap's centre (the score 0), so both
ends are drawn and the centre is transparent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from heatmap_cli.errors import RenderError
from heatmap_cli.render.colormaps import DEFAULT_CMAP, check_cmap, is_diverging, shipped_palette
from heatmap_cli.render.heat import BAND_PIXELS, MarginFade, row_bands

__all__ = [
    "ALPHA_MODES",
    "DEFAULT_CMAP",
    "OPAQUE",
    "AlphaMode",
    "OpacityRule",
    "check_cmap",
    "check_rgb",
    "colormap_lut",
    "colormap_palette",
    "composite",
    "heat_index",
    "is_diverging",
    "matplotlib_palette",
    "overlay",
]

AlphaMode = Literal["sqrt", "linear", "uniform"]
ALPHA_MODES: tuple[str, ...] = ("sqrt", "linear", "uniform")
"""How opacity follows the heat: ``alpha * sqrt(heat)`` (default), ``alpha * heat``, or
``alpha`` everywhere."""


@functools.lru_cache(maxsize=32)
def colormap_lut(name: str) -> np.ndarray:
    """The colormap's lookup table as float32 ``(N, 3)`` RGB in ``[0, 255]``.

    Raises:
        UnknownColormapError: Matplotlib does not know ``name`` (a ``RenderError`` and an
            ``InvalidOptionError``); the message lists close names and perceptual choices.
    """
    check_cmap(name)
    import matplotlib  # here: drawing a built-in colormap needs no matplotlib (shipped palette)

    cmap = matplotlib.colormaps[name]
    # Integer input indexes the table directly, so this is exactly what cmap(x) would give.
    return (cmap(np.arange(cmap.N))[:, :3] * 255).astype(np.float32)


@dataclass(frozen=True)
class OpacityRule:
    """How opaque the colour of each heat value is drawn: the rule of overlays and colour bars.

    Attributes:
        alpha: Opacity at the strongest heat, in ``[0, 1]``.
        mode: ``"sqrt"`` (``alpha * sqrt(d)``), ``"linear"`` (``alpha * d``) or ``"uniform"``
            (``alpha`` everywhere), where ``d`` is the heat's distance from ``centre``.
        centre: The heat drawn transparent: 0 for sequential colormaps, the position of the
            score 0 on a diverging one (0.5 for a range centred on 0). ``d`` is the distance
            from it, divided by the longer side, so both ends of the range reach 1.

    Raises:
        RenderError: An unknown mode, or ``alpha`` or ``centre`` outside ``[0, 1]``.
    """

    alpha: float = 0.5
    mode: AlphaMode = "sqrt"
    centre: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ALPHA_MODES:
            raise RenderError(
                f"alpha_mode must be one of {', '.join(ALPHA_MODES)}, got {self.mode!r}"
            )
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise RenderError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not 0.0 <= float(self.centre) <= 1.0:
            raise RenderError(f"centre must be in [0, 1], got {self.centre!r}")

    def of(self, heat: np.ndarray) -> np.ndarray:
        """float32 opacities in ``[0, alpha]`` of heat values in ``[0, 1]`` (any shape)."""
        heat = np.asarray(heat, dtype=np.float32)
        if self.mode == "uniform":
            return np.full_like(heat, self.alpha)
        span = max(self.centre, 1.0 - self.centre)
        distance = np.clip(np.abs(heat - np.float32(self.centre)) / np.float32(span), 0.0, 1.0)
        if self.mode == "sqrt":
            distance = np.sqrt(distance)
        return (np.float32(self.alpha) * distance).astype(np.float32)

    def levels(self, heat: np.ndarray, fade: np.ndarray | None = None) -> np.ndarray:
        """uint8 opacities, 0..255, of heat values in ``[0, 1]``, times ``fade`` if given."""
        drawn = self.of(heat)
        if fade is not None:
            drawn *= fade
        drawn *= np.float32(255)
        return np.rint(drawn, out=drawn).astype(np.uint8)


OPAQUE = OpacityRule(alpha=1.0, mode="uniform")
"""Every colour drawn fully opaque."""

_BINS = 256  # colours per colormap as drawn: one per 8-bit index


@functools.lru_cache(maxsize=32)
def colormap_palette(name: str) -> np.ndarray:
    """The colormap as 256 uint8 RGB colours, one per bin of heat (:func:`heat_index`).

    Bin ``i`` holds the colour matplotlib gives the heat at the bin's centre, rounded: for the
    usual 256-colour maps (inferno, viridis...) exactly the colormap's own table. A built-in
    colormap's palette ships with the package (``colormaps.shipped_palette``), so drawing needs
    no matplotlib; any other is made from matplotlib's table (:func:`matplotlib_palette`).

    Raises:
        UnknownColormapError: Matplotlib does not know ``name``.
    """
    shipped = shipped_palette(name)
    if shipped is not None:
        return np.frombuffer(shipped, dtype=np.uint8).reshape(_BINS, 3).copy()
    return matplotlib_palette(name)


def matplotlib_palette(name: str) -> np.ndarray:
    """:func:`colormap_palette` made from matplotlib's table of the colormap (imports it)."""
    lut = colormap_lut(name)
    n = len(lut)
    bins = np.minimum(((np.arange(_BINS) + 0.5) * n / _BINS).astype(np.intp), n - 1)
    return np.rint(lut[bins]).astype(np.uint8)


def heat_index(heat: np.ndarray) -> np.ndarray:
    """uint8 bins of heat values in ``[0, 1]``: ``floor(256 * heat)``, 1 in the top bin.

    The binning of matplotlib's ``Colormap.__call__`` on a 256-colour map.
    """
    scaled = np.asarray(heat, dtype=np.float32) * np.float32(_BINS)
    return np.minimum(scaled, _BINS - 1).astype(np.uint8)


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


def composite(
    background: np.ndarray,
    index: np.ndarray,
    opacity: np.ndarray,
    palette: np.ndarray,
    *,
    band_pixels: int = BAND_PIXELS,
) -> np.ndarray:
    """Draws colours over a picture: ``background + (palette[index] - background) * opacity``.

    Integer arithmetic in Pillow's C code, rounded exactly as ``(c * o + b * (255 - o)) / 255``:
    opacity 0 keeps the background, 255 gives the colour. A 12-megapixel picture takes about
    0.1 s, against 0.3 s in float64 with numpy. Drawn in horizontal bands, so that Pillow's
    4-byte-per-pixel pictures are a band each, not two more copies of the whole picture.

    Args:
        background: uint8 ``(H, W, 3)`` pixels.
        index: uint8 ``(H, W)`` colour bins (:func:`heat_index`).
        opacity: uint8 ``(H, W)`` opacities, 0 (transparent) to 255 (opaque).
        palette: uint8 ``(256, 3)`` colours (:func:`colormap_palette`).
        band_pixels: Pixels drawn per band; no effect on the result.

    Returns:
        A new uint8 ``(H, W, 3)`` array.
    """
    height, width = index.shape
    out = np.empty((height, width, 3), dtype=np.uint8)
    colours_of = palette.tobytes()
    for part in row_bands(height, width, band_pixels):
        size = (width, part.stop - part.start)
        bins = np.ascontiguousarray(index[part])
        colours = Image.frombuffer("P", size, bins, "raw", "P", 0, 1)
        colours.putpalette(colours_of)
        # A new image of its own: Pillow copies RGB pixels in (paste() would copy a shared one)
        drawn = Image.fromarray(np.ascontiguousarray(background[part]))
        drawn.paste(colours.convert("RGB"), (0, 0), Image.fromarray(opacity[part]))
        out[part] = np.asarray(drawn)
    return out


def overlay(
    image: np.ndarray,
    heat: np.ndarray,
    *,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    alpha_mode: AlphaMode = "sqrt",
    centre: float = 0.0,
    fade: MarginFade | None = None,
    band_pixels: int = BAND_PIXELS,
) -> np.ndarray:
    """Colours a heat map and blends it over a photo.

    Each pixel's colour is the colormap at its heat, drawn with the :class:`OpacityRule` opacity
    (by default ``alpha * sqrt(heat)``: low scores leave the photo nearly untouched, middle ones
    stay visible), times ``fade`` where the map is faded out beyond the window centres. With
    ``"uniform"`` every pixel gets opacity ``alpha`` (the classic ``show_cam_on_image`` look).
    ``alpha=0`` returns the photo exactly, and ``alpha=1`` at heat 1 returns the colormap's top
    colour.

    Args:
        image: uint8 ``(H, W, 3)`` RGB photo.
        heat: float ``(H, W)`` in ``[0, 1]`` (see :func:`normalize_scores`).
        cmap: Name of a matplotlib colormap; default ``"inferno"``.
        alpha: Maximum opacity of the colour, in ``[0, 1]``.
        alpha_mode: ``"sqrt"``, ``"linear"`` or ``"uniform"`` (see :class:`OpacityRule`).
        centre: The transparent heat (0; 0.5 on a diverging map centred on the score 0).
        fade: Opacity kept per pixel (``heat.margin_fade``); None keeps all of it.
        band_pixels: Pixels blended per band (bounds the temporaries); no effect on the result.

    Returns:
        uint8 ``(H, W, 3)`` RGB image.

    Raises:
        RenderError: On an unknown colormap (the message lists close names), an ``alpha``
            outside ``[0, 1]``, heat outside ``[0, 1]`` or of the wrong shape, a fade of
            another size.
    """
    image = check_rgb(image)
    heat = np.asarray(heat)
    if heat.shape != image.shape[:2]:
        raise RenderError(f"heat has shape {heat.shape}, the image is {image.shape[:2]}")
    if fade is not None and fade.shape != heat.shape:
        raise RenderError(f"fade has shape {fade.shape}, the image is {heat.shape}")
    rule = OpacityRule(float(alpha), alpha_mode, float(centre))
    palette = colormap_palette(cmap)
    index = np.empty(heat.shape, dtype=np.uint8)
    opacity = np.empty(heat.shape, dtype=np.uint8)
    for part in row_bands(*heat.shape, band_pixels):
        h = heat[part].astype(np.float32)
        if not np.all(np.isfinite(h)) or h.min() < -1e-6 or h.max() > 1 + 1e-6:
            raise RenderError("heat must be finite and within [0, 1]; normalize scores first")
        np.clip(h, 0.0, 1.0, out=h)
        index[part] = heat_index(h)
        opacity[part] = rule.levels(h, None if fade is None else fade.region(part))
    return composite(image, index, opacity, palette)
