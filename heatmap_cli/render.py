"""Turning a grid of class scores into pictures: heat images, overlays, labels, contact sheets.

Everything here is a pure function of numpy arrays (in the spirit of pytorch-grad-cam's
``show_cam_on_image``): images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order, heat
maps are ``float32`` arrays of shape ``(H, W)`` in ``[0, 1]``. Nothing is read from or written to
disk; another module encodes the returned arrays. Colormaps come from ``matplotlib.colormaps``
and text is drawn with Pillow in the DejaVu Sans font that matplotlib ships, so rendering needs
no display, no pyplot and no system fonts.

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

import difflib
import functools
import math
from collections.abc import Sequence
from typing import Literal

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from heatmap_cli.errors import HeatmapError

__all__ = [
    "DEFAULT_CMAP",
    "RenderError",
    "add_colorbar",
    "annotate",
    "cell_values_to_image",
    "check_cmap",
    "contact_sheet",
    "normalize_scores",
    "overlay",
    "peak_location",
    "render_class_overlay",
]

DEFAULT_CMAP = "inferno"
"""Perceptually uniform, lightness rises monotonically (reads correctly in greyscale and for
colour-blind viewers) and its bright yellow end reads as "hot" at a glance."""

Interpolation = Literal["pchip", "linear"]
AlphaMode = Literal["heat", "uniform"]
Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]

# Large images are processed in horizontal bands of about this many pixels, so temporaries stay
# a few megabytes however big the photo is.
_BAND_PIXELS = 1 << 20
_PERCEPTUAL_CMAPS = ("inferno", "magma", "viridis", "plasma", "cividis")
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


class RenderError(HeatmapError, ValueError):
    """Arguments that cannot be rendered: bad shapes, ranges, colormap names or parameters."""


# --------------------------------------------------------------------------------------------
# Scores -> heat image
# --------------------------------------------------------------------------------------------


def _lattice_axes(
    centers: np.ndarray, grid_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Checks that ``centers`` is a rectilinear lattice and returns its x and y axes (float64)."""
    centers = np.asarray(centers, dtype=np.float64)
    if centers.shape != (*grid_shape, 2):
        raise RenderError(
            f"centers must have shape {(*grid_shape, 2)} to match the grid, got {centers.shape}"
        )
    if not np.all(np.isfinite(centers)):
        raise RenderError("centers contain NaN or infinite coordinates")
    xs, ys = centers[0, :, 0], centers[:, 0, 1]
    if not (
        np.allclose(centers[..., 0], xs[None, :], rtol=1e-5, atol=1e-3)
        and np.allclose(centers[..., 1], ys[:, None], rtol=1e-5, atol=1e-3)
    ):
        raise RenderError("centers must form a rectilinear lattice (x by column, y by row)")
    if np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
        raise RenderError("center coordinates must increase strictly along columns and rows")
    return xs, ys


class _AxisPlan:
    """Where each output pixel along one axis falls between grid nodes, and its Hermite weights.

    A value at pixel ``p`` is ``v[lo]*w_lo + v[hi]*w_hi + d[lo]*s_lo + d[hi]*s_hi`` where ``v``
    are node values and ``d`` node slopes (per pixel).
    """

    def __init__(self, nodes: np.ndarray, length: int, smooth: bool) -> None:
        # Pixel centres, held at the outermost node beyond it (constant edge extension).
        pos = np.clip(np.arange(length, dtype=np.float64) + 0.5, nodes[0], nodes[-1])
        if len(nodes) == 1:
            self.lo = self.hi = np.zeros(length, dtype=np.intp)
            self.w_lo = np.ones(length)
            self.w_hi = self.s_lo = self.s_hi = np.zeros(length)
            return
        self.lo = np.clip(np.searchsorted(nodes, pos, side="right") - 1, 0, len(nodes) - 2)
        self.hi = self.lo + 1
        step = nodes[self.hi] - nodes[self.lo]
        t = (pos - nodes[self.lo]) / step
        if smooth:
            self.w_lo = (1 + 2 * t) * (1 - t) ** 2
            self.w_hi = t**2 * (3 - 2 * t)
            self.s_lo = t * (1 - t) ** 2 * step
            self.s_hi = t**2 * (t - 1) * step
        else:
            self.w_lo, self.w_hi = 1 - t, t
            self.s_lo = self.s_hi = np.zeros(length)

    def apply(
        self, values: np.ndarray, slopes: np.ndarray, axis: int, part: slice = slice(None)
    ) -> np.ndarray:
        """Interpolates 2-D ``values`` along ``axis`` at the plan's pixels (or a slice of them)."""
        lo, hi = self.lo[part], self.hi[part]
        shape = (-1, 1) if axis == 0 else (1, -1)
        w_lo, w_hi = self.w_lo[part].reshape(shape), self.w_hi[part].reshape(shape)
        s_lo, s_hi = self.s_lo[part].reshape(shape), self.s_hi[part].reshape(shape)
        return (
            np.take(values, lo, axis=axis) * w_lo
            + np.take(values, hi, axis=axis) * w_hi
            + np.take(slopes, lo, axis=axis) * s_lo
            + np.take(slopes, hi, axis=axis) * s_hi
        )


def _pchip_slopes(nodes: np.ndarray, values: np.ndarray, axis: int) -> np.ndarray:
    """Monotone (Fritsch-Butland) node slopes along ``axis``; zero at local extrema and ends.

    A zero slope at the outermost nodes joins the constant edge extension smoothly. With these
    slopes each cubic piece stays between its two node values (Fritsch-Carlson), so the curve
    never overshoots the data.
    """
    y = np.moveaxis(values, axis, 0)
    slopes = np.zeros_like(y)
    if len(nodes) >= 3:
        h = np.diff(nodes).reshape((-1,) + (1,) * (y.ndim - 1))
        secant = np.diff(y, axis=0) / h
        m0, m1, h0, h1 = secant[:-1], secant[1:], h[:-1], h[1:]
        w1, w2 = 2 * h1 + h0, h1 + 2 * h0
        same_sign = m0 * m1 > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            harmonic = (w1 + w2) / (w1 / m0 + w2 / m1)
        slopes[1:-1] = np.where(same_sign, harmonic, 0.0)
    return np.moveaxis(slopes, 0, axis)


def cell_values_to_image(
    values: np.ndarray,
    centers: np.ndarray,
    image_size: tuple[int, int],
    *,
    method: Interpolation = "pchip",
) -> np.ndarray:
    """Spreads one value per grid cell over the image, each value sitting at its window centre.

    Values are pinned at the centres of their windows in original-image pixels and interpolated
    between neighbouring centres only; beyond the outermost centres the edge values are held
    constant out to the border. The map is therefore never stretched over the whole photo: with
    centres at x=112 and x=144 in a 256-wide image, the transition happens between 112 and 144.
    The image is sampled at pixel centres (``k + 0.5``).

    ``"pchip"`` is a separable monotone cubic (Fritsch-Butland slopes, zero at the outermost
    centres): smooth, exact at the centres, and never outside the range of the data, because each
    piece is monotone between its two nodes. Being non-linear, the result would depend on which
    axis goes first, so both orders are averaged (transposing the grid transposes the map).
    ``"linear"`` is plain bilinear interpolation (exact, range-preserving, creased at centres).

    Memory stays at the output plus a few small arrays: the interpolation is separable and the
    output is filled in horizontal bands.

    Args:
        values: Cell values, shape ``(rows, cols)``, any real dtype, finite.
        centers: float array ``(rows, cols, 2)`` of window centres ``(x, y)`` in original-image
            pixels (pixel ``k`` spans ``[k, k + 1)``); a rectilinear lattice, strictly
            increasing along columns and rows, as from ``GridGeometry.centers()``. Centres may
            lie outside the image.
        image_size: ``(H, W)`` of the output in pixels.
        method: ``"pchip"`` (default) or ``"linear"``.

    Returns:
        float32 array ``(H, W)`` within ``[values.min(), values.max()]``.

    Raises:
        RenderError: On mismatched shapes, non-finite input, a non-lattice ``centers``, a
            non-positive ``image_size`` or an unknown ``method``.
    """
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise RenderError(f"values must be a non-empty (rows, cols) array, got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise RenderError("values contain NaN or infinite scores")
    if method not in ("pchip", "linear"):
        raise RenderError(f"method must be 'pchip' or 'linear', got {method!r}")
    height, width = (int(n) for n in image_size)
    if height <= 0 or width <= 0:
        raise RenderError(f"image_size must be positive, got {image_size}")
    xs, ys = _lattice_axes(centers, grid.shape)

    smooth = method == "pchip"
    plan_x = _AxisPlan(xs, width, smooth)
    plan_y = _AxisPlan(ys, height, smooth)
    out = np.empty((height, width), dtype=np.float32)
    band = max(1, _BAND_PIXELS // width)

    if smooth:
        # x then y: rows first widened to (rows, W), then interpolated down the columns.
        by_rows = plan_x.apply(grid, _pchip_slopes(xs, grid, axis=1), axis=1)
        by_rows_slopes = _pchip_slopes(ys, by_rows, axis=0)
        # y then x: columns first lengthened to (H, cols), then interpolated along the rows.
        by_cols = plan_y.apply(grid, _pchip_slopes(ys, grid, axis=0), axis=0)
        by_cols_slopes = _pchip_slopes(xs, by_cols, axis=1)
        for top in range(0, height, band):
            part = slice(top, min(top + band, height))
            x_first = plan_y.apply(by_rows, by_rows_slopes, axis=0, part=part)
            y_first = plan_x.apply(by_cols[part], by_cols_slopes[part], axis=1)
            out[part] = 0.5 * (x_first + y_first)
    else:
        # Bilinear is linear, so one order suffices; linear plans carry zero slope weights.
        by_rows = plan_x.apply(grid, np.zeros_like(grid), axis=1)
        flat = np.zeros_like(by_rows)
        for top in range(0, height, band):
            part = slice(top, min(top + band, height))
            out[part] = plan_y.apply(by_rows, flat, axis=0, part=part)

    # Rounding can push a value a hair past the data; the schemes themselves cannot.
    np.clip(out, grid.min(), grid.max(), out=out)
    return out


def _resolve_range(
    values: np.ndarray, vmin: float | None, vmax: float | None
) -> tuple[float, float]:
    """The ``(low, high)`` of a colour scale, filling ``None`` from the data."""
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise RenderError(f"vmin must be smaller than vmax, got vmin={vmin} and vmax={vmax}")
    low = float(np.min(values)) if vmin is None else float(vmin)
    high = float(np.max(values)) if vmax is None else float(vmax)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise RenderError(f"colour range must be finite, got [{low}, {high}]")
    if high < low:
        raise RenderError(f"empty colour range: vmin={low} is above vmax={high}")
    return low, high


def normalize_scores(
    values: np.ndarray, vmin: float | None = 0.0, vmax: float | None = 1.0
) -> np.ndarray:
    """Maps scores linearly onto ``[0, 1]``: ``vmin`` to 0, ``vmax`` to 1, clipping outside.

    The defaults suit probabilities: a fixed ``[0, 1]`` scale means the same colour is the same
    probability in every class and image. For logits, pass an explicit range (shared across the
    classes being compared) or ``None`` to use the data's own minimum/maximum; a constant array
    with a data-derived range maps to all zeros (as matplotlib's ``Normalize`` does).

    Args:
        values: Scores of any shape, finite.
        vmin: Score shown as 0, or ``None`` for ``values.min()``.
        vmax: Score shown as 1, or ``None`` for ``values.max()``.

    Returns:
        float32 array of the same shape, in ``[0, 1]``.

    Raises:
        RenderError: If ``values`` is empty or not finite, or the range is empty or inverted.
    """
    scores = np.asarray(values, dtype=np.float64)
    if scores.size == 0:
        raise RenderError("cannot normalize an empty array")
    if not np.all(np.isfinite(scores)):
        raise RenderError("values contain NaN or infinite scores")
    low, high = _resolve_range(scores, vmin, vmax)
    if high == low:
        return np.zeros(scores.shape, dtype=np.float32)
    return np.clip((scores - low) / (high - low), 0.0, 1.0).astype(np.float32)


def peak_location(values: np.ndarray, centers: np.ndarray) -> tuple[float, float, float]:
    """The highest cell and the centre of its window.

    Args:
        values: Cell scores, shape ``(rows, cols)``.
        centers: ``(rows, cols, 2)`` window centres ``(x, y)`` in original-image pixels.

    Returns:
        ``(peak_value, x, y)``; on ties the first cell in row-major order wins.

    Raises:
        RenderError: If the shapes do not match or ``values`` is empty.
    """
    scores = np.asarray(values)
    centers = np.asarray(centers)
    if scores.ndim != 2 or scores.size == 0 or centers.shape != (*scores.shape, 2):
        raise RenderError(
            f"expected values (rows, cols) and centers (rows, cols, 2), "
            f"got {scores.shape} and {centers.shape}"
        )
    row, col = np.unravel_index(int(np.argmax(scores)), scores.shape)
    x, y = centers[row, col]
    return float(scores[row, col]), float(x), float(y)


# --------------------------------------------------------------------------------------------
# Colour
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _colormap_lut(name: str) -> np.ndarray:
    """The colormap's lookup table as float32 ``(N, 3)`` RGB in ``[0, 255]``."""
    if not isinstance(name, str) or name not in matplotlib.colormaps:
        known = list(matplotlib.colormaps)
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
        close += [c for c in known if c.lower() == str(name).lower() and c not in close]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise RenderError(
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
        RenderError: If matplotlib does not know the name; the message lists close names and the
            perceptually uniform choices.
    """
    _colormap_lut(name)


def _heat_colors(heat: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Colours of heat values in ``[0, 1]``, binned as matplotlib's ``Colormap.__call__`` does."""
    n = len(lut)
    return lut[np.minimum((heat * n).astype(np.intp), n - 1)]


def _check_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
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

    Returns:
        uint8 ``(H, W, 3)`` RGB image.

    Raises:
        RenderError: On an unknown colormap (the message lists close names), an ``alpha``
            outside ``[0, 1]``, heat outside ``[0, 1]`` or of the wrong shape.
    """
    image = _check_rgb(image)
    heat = np.asarray(heat)
    if heat.shape != image.shape[:2]:
        raise RenderError(f"heat has shape {heat.shape}, the image is {image.shape[:2]}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise RenderError(f"alpha must be in [0, 1], got {alpha!r}")
    alpha = float(alpha)
    if alpha_mode not in ("heat", "uniform"):
        raise RenderError(f"alpha_mode must be 'heat' or 'uniform', got {alpha_mode!r}")
    lut = _colormap_lut(cmap)

    height, width = heat.shape
    out = np.empty_like(image)
    band = max(1, _BAND_PIXELS // width)
    for top in range(0, height, band):
        part = slice(top, min(top + band, height))
        h = heat[part].astype(np.float32)
        if not np.all(np.isfinite(h)) or h.min() < -1e-6 or h.max() > 1 + 1e-6:
            raise RenderError("heat must be finite and within [0, 1]; normalize scores first")
        np.clip(h, 0.0, 1.0, out=h)
        opacity = (alpha * h if alpha_mode == "heat" else np.full_like(h, alpha))[..., None]
        blended = image[part] * (1 - opacity) + _heat_colors(h, lut) * opacity
        out[part] = np.clip(np.rint(blended), 0, 255)
    return out


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _font_path() -> str:
    return font_manager.findfont(
        font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True
    )


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(_font_path(), max(1, int(size)))


def _auto_font_size(height: int, width: int) -> int:
    """A font size readable at thumbnail and at print size: ~3.5% of the shorter side."""
    return max(12, round(0.035 * min(height, width)))


def _text_bbox(text: str, font: ImageFont.FreeTypeFont) -> tuple[int, int, int, int]:
    """Ink box of ``text`` drawn at the origin (handles multi-line text)."""
    return ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)


def _fit_font(text: str, size: int, max_width: int) -> ImageFont.FreeTypeFont:
    """The font at ``size``, shrunk until ``text`` fits in ``max_width`` (down to 6 px)."""
    for _ in range(4):
        font = _font(size)
        left, _top, right, _bottom = _text_bbox(text, font)
        if right - left <= max_width or size <= 6:
            break
        size = max(6, math.floor(size * max_width / (right - left)))
    return font


def _truncate(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> str:
    """``text``, cut with an ellipsis so that it fits in ``max_width`` pixels."""
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "…") > max_width:
        text = text[:-1]
    return text + "…" if text else ""


def annotate(
    image: np.ndarray,
    text: str,
    *,
    corner: Corner = "top-left",
    font_size: int | None = None,
    box_opacity: float = 0.65,
) -> np.ndarray:
    """Writes ``text`` (e.g. ``"tabby cat  p=0.87"``) in white on a translucent dark box.

    The font (DejaVu Sans, shipped with matplotlib) scales with the image, about 3.5% of its
    shorter side and at least 12 px, and shrinks if the text would not fit the width. Only the
    pixels of the box change.

    Args:
        image: uint8 ``(H, W, 3)`` RGB image.
        text: The label; may contain newlines; empty text returns an unchanged copy.
        corner: Where the box goes.
        font_size: Font size in pixels, or ``None`` for the automatic size.
        box_opacity: Opacity of the box behind the text, in ``[0, 1]``.

    Returns:
        A new uint8 ``(H, W, 3)`` image.

    Raises:
        RenderError: On a bad image, corner, font size or opacity.
    """
    image = _check_rgb(image)
    if corner not in ("top-left", "top-right", "bottom-left", "bottom-right"):
        raise RenderError(f"unknown corner {corner!r}")
    if not 0.0 <= box_opacity <= 1.0:
        raise RenderError(f"box_opacity must be in [0, 1], got {box_opacity}")
    if font_size is not None and font_size <= 0:
        raise RenderError(f"font_size must be positive, got {font_size}")
    out = image.copy()
    if not text:
        return out

    height, width = image.shape[:2]
    size = font_size or _auto_font_size(height, width)
    margin, pad = round(size * 0.5), round(size * 0.35)
    font = _fit_font(text, size, max(1, width - 2 * (margin + pad)))
    left, top, right, bottom = _text_bbox(text, font)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0 = margin if corner.endswith("left") else width - margin - box_w
    y0 = margin if corner.startswith("top") else height - margin - box_h
    # The box may stick out of tiny images; clip it and draw relative to the clipped region.
    cx0, cy0 = max(0, x0), max(0, y0)
    cx1, cy1 = min(width, x0 + box_w), min(height, y0 + box_h)
    if cx1 <= cx0 or cy1 <= cy0:
        return out

    region = out[cy0:cy1, cx0:cx1].astype(np.float32) * (1 - box_opacity)
    tile = Image.fromarray(np.clip(np.rint(region), 0, 255).astype(np.uint8))
    ImageDraw.Draw(tile).text(
        (x0 - cx0 + pad - left, y0 - cy0 + pad - top), text, font=font, fill=_WHITE
    )
    out[cy0:cy1, cx0:cx1] = np.asarray(tile)
    return out


def _tick_texts(values: Sequence[float], step: float) -> list[str]:
    """Tick labels with the fewest decimals that write every tick exactly (0.25, not 0.2)."""
    tolerance = 1e-6 * step if step > 0 else 1e-9
    decimals = next(
        (d for d in range(12) if all(abs(round(v, d) - v) <= tolerance for v in values)), 12
    )
    texts = [f"{v:.{decimals}f}" for v in values]
    return [t.lstrip("-") if float(t) == 0 else t for t in texts]


def add_colorbar(
    image: np.ndarray,
    cmap: str = DEFAULT_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    label: str = "",
    *,
    ticks: int = 5,
) -> np.ndarray:
    """Appends a vertical colour bar with tick labels on the right of an image.

    The panel is white, as tall as the image; the bar runs from ``vmin`` at the bottom to
    ``vmax`` at the top with "nice" ticks, and ``label`` is written vertically beside them.
    Font sizes follow :func:`annotate`.

    Args:
        image: uint8 ``(H, W, 3)`` RGB image.
        cmap: Name of a matplotlib colormap (the one used for the overlay).
        vmin: Score at the bottom of the bar (what heat 0 means).
        vmax: Score at the top of the bar (what heat 1 means).
        label: Text along the bar, e.g. ``"probability"``; empty for none.
        ticks: Rough number of tick labels wanted (at least 2).

    Returns:
        uint8 ``(H, W + panel_width, 3)`` image.

    Raises:
        RenderError: On a bad image or colormap, ``vmin >= vmax`` or ``ticks < 2``.
    """
    image = _check_rgb(image)
    lut = _colormap_lut(cmap)
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmin < vmax):
        raise RenderError(f"colour bar needs finite vmin < vmax, got {vmin} and {vmax}")
    if ticks < 2:
        raise RenderError(f"ticks must be at least 2, got {ticks}")
    height, width = image.shape[:2]
    size = _auto_font_size(height, width)
    font = _font(size)
    gap, bar_w, tick_len = max(2, size // 2), max(4, round(size * 1.2)), max(2, size // 3)
    # Tick labels are centred on their ticks, so the bar leaves half a line free at each end.
    bar_top = min(size, height // 4)
    bar_h = max(1, height - 2 * bar_top)

    tick_values = MaxNLocator(nbins=ticks - 1).tick_values(vmin, vmax)
    step = float(np.diff(tick_values).min()) if len(tick_values) > 1 else vmax - vmin
    eps = 1e-9 * (vmax - vmin)
    ticks_in = [float(v) for v in tick_values if vmin - eps <= v <= vmax + eps]
    tick_labels = _tick_texts(ticks_in, step)
    labels_w = max((round(font.getlength(t)) for t in tick_labels), default=0)

    label_font = _fit_font(label, size, bar_h) if label else font
    label_box = _text_bbox(label, label_font) if label else (0, 0, 0, 0)
    label_h = label_box[3] - label_box[1]
    panel_w = gap + bar_w + tick_len + gap + labels_w + (gap + label_h if label else 0) + gap

    panel = Image.new("RGB", (panel_w, height), _WHITE)
    fraction = 1 - (np.arange(bar_h) + 0.5) / bar_h
    column = np.rint(_heat_colors(fraction, lut)).astype(np.uint8)
    bar = np.broadcast_to(column[:, None, :], (bar_h, bar_w, 3))
    panel.paste(Image.fromarray(np.ascontiguousarray(bar)), (gap, bar_top))

    draw = ImageDraw.Draw(panel)
    bar_right = gap + bar_w
    for value, text in zip(ticks_in, tick_labels, strict=True):
        y = bar_top + (vmax - value) / (vmax - vmin) * bar_h
        draw.line(
            [(bar_right, y), (bar_right + tick_len, y)], fill=_BLACK, width=max(1, size // 12)
        )
        draw.text((bar_right + tick_len + gap, y), text, font=font, fill=_BLACK, anchor="lm")
    if label:
        left, top, right, bottom = label_box
        strip = Image.new("RGB", (right - left, bottom - top), _WHITE)
        ImageDraw.Draw(strip).text((-left, -top), label, font=label_font, fill=_BLACK)
        strip = strip.transpose(Image.Transpose.ROTATE_90)
        x = bar_right + tick_len + gap + labels_w + gap
        panel.paste(strip, (x, max(0, (height - strip.height) // 2)))
    return np.concatenate([image, np.asarray(panel)], axis=1)


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------


def contact_sheet(
    tiles: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    max_tile_side: int = 512,
    columns: int | None = None,
) -> np.ndarray:
    """Lays pictures out in a grid with a caption under each, e.g. the photo and its classes.

    Every tile is scaled (never enlarged) to one common height, chosen so that no tile's longer
    side exceeds ``max_tile_side``; tiles keep their aspect ratio and are centred in equal-width
    cells, filled row by row in the order given. Captions that do not fit are cut with "…".

    Args:
        tiles: uint8 ``(H_i, W_i, 3)`` RGB images, at least one.
        labels: One caption per tile (may be empty strings).
        max_tile_side: Longest side of any scaled tile, in pixels.
        columns: Tiles per row; default all in one row up to 4 tiles, else ``ceil(sqrt(n))``.

    Returns:
        uint8 ``(H, W, 3)`` RGB sheet on a white background.

    Raises:
        RenderError: If there are no tiles, the counts differ, a tile is not uint8 RGB, or
            ``max_tile_side``/``columns`` is not positive.
    """
    if not tiles:
        raise RenderError("contact sheet needs at least one tile")
    if len(tiles) != len(labels):
        raise RenderError(f"got {len(tiles)} tiles but {len(labels)} labels")
    if max_tile_side <= 0:
        raise RenderError(f"max_tile_side must be positive, got {max_tile_side}")
    if columns is not None and columns <= 0:
        raise RenderError(f"columns must be positive, got {columns}")
    checked = [_check_rgb(tile, f"tile {i}") for i, tile in enumerate(tiles)]
    count = len(checked)
    columns = min(count, columns or (count if count <= 4 else math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)

    tile_h = min(min(t.shape[0], max_tile_side * t.shape[0] // max(t.shape[:2])) for t in checked)
    tile_h = max(1, tile_h)
    scaled = []
    for tile in checked:
        size = (max(1, round(tile.shape[1] * tile_h / tile.shape[0])), tile_h)
        picture = Image.fromarray(tile)
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        scaled.append(picture)
    cell_w = max(p.width for p in scaled)
    font = _font(max(12, round(tile_h / 20)))
    ascent, descent = font.getmetrics()
    gap = max(4, round(tile_h * 0.03))
    caption_h = ascent + descent + gap if any(labels) else 0

    sheet = Image.new(
        "RGB",
        (columns * cell_w + (columns + 1) * gap, rows * (tile_h + caption_h) + (rows + 1) * gap),
        _WHITE,
    )
    draw = ImageDraw.Draw(sheet)
    for index, (picture, label) in enumerate(zip(scaled, labels, strict=True)):
        row, col = divmod(index, columns)
        x = gap + col * (cell_w + gap)
        y = gap + row * (tile_h + caption_h + gap)
        sheet.paste(picture, (x + (cell_w - picture.width) // 2, y))
        if label:
            text = _truncate(label, font, cell_w)
            draw.text(
                (x + cell_w / 2, y + tile_h + gap // 2), text, font=font, fill=_BLACK, anchor="ma"
            )
    return np.asarray(sheet).copy()


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
    image = _check_rgb(image)
    scores = np.asarray(values, dtype=np.float64)
    heat = cell_values_to_image(
        normalize_scores(scores, vmin, vmax), centers, image.shape[:2], method=method
    )
    out = overlay(image, heat, cmap=cmap, alpha=alpha, alpha_mode=alpha_mode)
    if label:
        out = annotate(out, label)
    if colorbar:
        low, high = _resolve_range(scores, vmin, vmax)
        if high == low:
            high = low + 1.0
        out = add_colorbar(out, cmap, low, high, colorbar_label)
    return out
