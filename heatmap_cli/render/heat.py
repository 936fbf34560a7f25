"""Scores to a heat image: normalizing scores and spreading cell values over the photo.

Heat maps are ``float32`` arrays of shape ``(H, W)``; each cell's value sits at the centre of its
window in the photo (:func:`cell_values_to_image`) and :func:`normalize_scores` maps scores onto
``[0, 1]`` for a colormap. No window is centred beyond the outermost centres (on a 451x300 photo
at ``--size 384``, 87 pixels on each side), so nothing was measured there: :func:`margin_fade`
says how much of the map to show, fading it out towards the photo's border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from heatmap_cli.errors import RenderError

__all__ = [
    "BAND_PIXELS",
    "Interpolation",
    "MarginFade",
    "cell_values_to_image",
    "lattice_axes",
    "margin_fade",
    "normalize_scores",
    "peak_cell",
    "peak_location",
    "resolve_range",
    "row_bands",
]

Interpolation = Literal["pchip", "linear"]

BAND_PIXELS = 1 << 20
"""Large images are processed in horizontal bands of about this many pixels, so temporaries stay
a few megabytes however big the photo is."""


def lattice_axes(
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
    band_pixels: int = BAND_PIXELS,
) -> np.ndarray:
    """Spreads one value per grid cell over the image, each value sitting at its window centre.

    Values are pinned at the centres of their windows in original-image pixels and interpolated
    between neighbouring centres only; beyond the outermost centres the edge values are held
    constant out to the border (draw that margin faded, see :func:`margin_fade`). The map is
    therefore never stretched over the whole photo: with centres at x=112 and x=144 in a
    256-wide image, the transition happens between 112 and 144. The image is sampled at pixel
    centres (``k + 0.5``).

    ``"pchip"`` is a separable monotone cubic (Fritsch-Butland slopes, zero at the outermost
    centres): smooth, exact at the centres, and never outside the range of the data, because each
    piece is monotone between its two nodes. Being non-linear, the result would depend on which
    axis goes first, so both orders are averaged (transposing the grid transposes the map).
    ``"linear"`` is plain bilinear interpolation (exact, range-preserving, creased at centres).

    Memory stays at the output plus a few small arrays: the interpolation is separable and the
    output is filled in horizontal bands of about ``band_pixels`` pixels.

    Args:
        values: Cell values, shape ``(rows, cols)``, any real dtype, finite.
        centers: float array ``(rows, cols, 2)`` of window centres ``(x, y)`` in original-image
            pixels (pixel ``k`` spans ``[k, k + 1)``); a rectilinear lattice, strictly
            increasing along columns and rows, as from ``GridGeometry.centers()``. Centres may
            lie outside the image.
        image_size: ``(H, W)`` of the output in pixels.
        method: ``"pchip"`` (default) or ``"linear"``.
        band_pixels: Pixels filled per band; the result does not depend on it.

    Returns:
        float32 array ``(H, W)`` within ``[values.min(), values.max()]``.

    Raises:
        RenderError: On mismatched shapes, non-finite input, a non-lattice ``centers``, a
            non-positive ``image_size`` or an unknown ``method``.
    """
    grid = _checked_grid(values)
    if method not in ("pchip", "linear"):
        raise RenderError(f"method must be 'pchip' or 'linear', got {method!r}")
    height, width = (int(n) for n in image_size)
    if height <= 0 or width <= 0:
        raise RenderError(f"image_size must be positive, got {image_size}")
    xs, ys = lattice_axes(centers, grid.shape)
    out = np.empty((height, width), dtype=np.float32)
    bands = row_bands(height, width, band_pixels)
    if method == "pchip":
        _fill_smooth(out, grid, xs, ys, bands)
    else:
        _fill_linear(out, grid, xs, ys, bands)
    # Rounding can push a value a hair past the data; the schemes themselves cannot.
    np.clip(out, grid.min(), grid.max(), out=out)
    return out


@dataclass(frozen=True)
class MarginFade:
    """The share of a map's opacity kept at each pixel, as a product of two profiles.

    Attributes:
        rows: float32 ``(H,)`` in ``[0, 1]``, one value per pixel row.
        cols: float32 ``(W,)`` in ``[0, 1]``, one value per pixel column.
    """

    rows: np.ndarray
    cols: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the image it fades."""
        return len(self.rows), len(self.cols)

    def region(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """float32 ``(h, w)``: the kept share over a rectangle of the image."""
        return self.rows[rows, None] * self.cols[None, cols]


def _fade_profile(nodes: np.ndarray, length: int) -> np.ndarray:
    """1 from the first to the last node, falling linearly to 0 at the borders beyond them."""
    position = np.arange(length, dtype=np.float64) + 0.5
    profile = np.ones(length)
    first, last = float(nodes[0]), float(nodes[-1])
    if first > 0:
        profile = np.minimum(profile, position / first)
    if last < length:
        profile = np.minimum(profile, (length - position) / (length - last))
    return np.clip(profile, 0.0, 1.0).astype(np.float32)


def margin_fade(centers: np.ndarray, image_size: tuple[int, int]) -> MarginFade:
    """Fades a map out beyond the outermost window centres, where no window is centred.

    Between the outermost centres the map is drawn in full; beyond them its opacity falls
    linearly to 0 at the photo's border (a 1x1 grid: from its one centre to every border), so
    the values held there by :func:`cell_values_to_image` are never shown as if measured.

    Args:
        centers: ``(rows, cols, 2)`` window centres ``(x, y)`` in the image's pixels, a
            rectilinear lattice (as from ``GridGeometry.centers()``).
        image_size: ``(H, W)`` of the image.

    Returns:
        The kept share of opacity per pixel row and column.

    Raises:
        RenderError: For centres that are not a lattice, or a non-positive size.
    """
    centers = np.asarray(centers)
    if centers.ndim != 3:
        raise RenderError(f"centers must have shape (rows, cols, 2), got {centers.shape}")
    xs, ys = lattice_axes(centers, centers.shape[:2])
    height, width = (int(n) for n in image_size)
    if height <= 0 or width <= 0:
        raise RenderError(f"image_size must be positive, got {image_size}")
    return MarginFade(rows=_fade_profile(ys, height), cols=_fade_profile(xs, width))


def row_bands(height: int, width: int, band_pixels: int = BAND_PIXELS) -> list[slice]:
    """Horizontal bands of about ``band_pixels`` pixels (at least one row) covering an image.

    Args:
        height: Rows of the image.
        width: Columns of the image.
        band_pixels: Pixels per band.

    Returns:
        Row slices, top to bottom, that cover ``0..height`` once.
    """
    rows = max(1, band_pixels // width)
    return [slice(top, min(top + rows, height)) for top in range(0, height, rows)]


def _checked_grid(values: np.ndarray) -> np.ndarray:
    """``values`` as a finite, non-empty float64 ``(rows, cols)`` array, or RenderError."""
    grid = np.asarray(values, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise RenderError(f"values must be a non-empty (rows, cols) array, got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise RenderError("values contain NaN or infinite scores")
    return grid


def _fill_smooth(
    out: np.ndarray, grid: np.ndarray, xs: np.ndarray, ys: np.ndarray, bands: list[slice]
) -> None:
    """Fills ``out`` with the monotone cubic, the mean of both axis orders, band by band."""
    height, width = out.shape
    plan_x, plan_y = _AxisPlan(xs, width, smooth=True), _AxisPlan(ys, height, smooth=True)
    # x then y: rows first widened to (rows, W), then interpolated down the columns.
    by_rows = plan_x.apply(grid, _pchip_slopes(xs, grid, axis=1), axis=1)
    by_rows_slopes = _pchip_slopes(ys, by_rows, axis=0)
    # y then x: columns first lengthened to (H, cols), then interpolated along the rows.
    by_cols = plan_y.apply(grid, _pchip_slopes(ys, grid, axis=0), axis=0)
    by_cols_slopes = _pchip_slopes(xs, by_cols, axis=1)
    for part in bands:
        x_first = plan_y.apply(by_rows, by_rows_slopes, axis=0, part=part)
        y_first = plan_x.apply(by_cols[part], by_cols_slopes[part], axis=1)
        out[part] = 0.5 * (x_first + y_first)


def _fill_linear(
    out: np.ndarray, grid: np.ndarray, xs: np.ndarray, ys: np.ndarray, bands: list[slice]
) -> None:
    """Fills ``out`` bilinearly, band by band (one axis order: bilinear is linear)."""
    height, width = out.shape
    plan_x, plan_y = _AxisPlan(xs, width, smooth=False), _AxisPlan(ys, height, smooth=False)
    # Linear plans carry zero slope weights.
    by_rows = plan_x.apply(grid, np.zeros_like(grid), axis=1)
    flat = np.zeros_like(by_rows)
    for part in bands:
        out[part] = plan_y.apply(by_rows, flat, axis=0, part=part)


def resolve_range(
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
    low, high = resolve_range(scores, vmin, vmax)
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
    row, col = peak_cell(scores)
    x, y = centers[row, col]
    return float(scores[row, col]), float(x), float(y)


def peak_cell(values: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the highest cell of ``(rows, cols)`` scores (ties: row-major first)."""
    scores = np.asarray(values)
    row, col = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(row), int(col)
