r"""Words and layout on pictures: text labels, colour bars, contact sheets.

Text is drawn with Pillow in the DejaVu Sans font that matplotlib ships, so rendering needs no
display, no pyplot and no system fonts. Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB
order; every function returns a new array.

Text comes from class names, which anyone may write: a caption or a colour bar's label is drawn
on one line (every kind of line break, ``\r`` and U+0085 included, which the layout engine cannot
place, is drawn as a space), and a corner label breaks lines only at ``\n``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import numpy as np
from matplotlib import font_manager
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

from heatmap_cli.errors import RenderError
from heatmap_cli.render.colour import (
    DEFAULT_CMAP,
    OPAQUE,
    OpacityRule,
    check_rgb,
    colormap_palette,
    composite,
    heat_index,
)

__all__ = [
    "CORNERS",
    "NEUTRAL_GREY",
    "SHEET_TILE_SIDE",
    "Corner",
    "add_colorbar",
    "annotate",
    "contact_sheet",
    "label_box",
    "quietest_corner",
    "sheet_tile",
    "tick_labels",
]

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
CORNERS: tuple[Corner, ...] = get_args(Corner)

SHEET_TILE_SIDE = 512
"""Longest side of a picture's tile on a contact sheet, in pixels."""
NEUTRAL_GREY = 128
"""The background a colour bar's colours are composited over, at the overlay's opacity."""

_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)


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


_LINE_BREAKS = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _one_line(text: str) -> str:
    """``text`` with every line break drawn as a space."""
    return _LINE_BREAKS.sub(" ", text)


def _lines(text: str) -> str:
    r"""``text`` with every kind of line break written as ``\n``."""
    return _LINE_BREAKS.sub("\n", text)


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


def label_box(
    image_size: tuple[int, int],
    text: str,
    *,
    corner: Corner = "top-left",
    font_size: int | None = None,
) -> tuple[int, int, int, int]:
    """Where :func:`annotate` draws its box: ``(x0, y0, x1, y1)``, clipped to the image.

    Args:
        image_size: ``(H, W)`` of the image.
        text: The label.
        corner: Which corner.
        font_size: Font size in pixels, or ``None`` for the automatic size.

    Returns:
        The box in pixels (``x1``/``y1`` exclusive); empty when the image is too small.

    Raises:
        RenderError: On an unknown corner or a non-positive font size.
    """
    _, _, box, _ = _label_layout(image_size, text, corner, font_size)
    return box


def _label_layout(
    image_size: tuple[int, int], text: str, corner: str, font_size: int | None
) -> tuple[ImageFont.FreeTypeFont, tuple[int, int], tuple[int, int, int, int], int]:
    """The font, the text origin, the clipped box and the padding of a label."""
    if corner not in CORNERS:
        raise RenderError(f"unknown corner {corner!r}")
    if font_size is not None and font_size <= 0:
        raise RenderError(f"font_size must be positive, got {font_size}")
    text = _lines(text)
    height, width = image_size
    size = font_size or _auto_font_size(height, width)
    margin, pad = round(size * 0.5), round(size * 0.35)
    font = _fit_font(text, size, max(1, width - 2 * (margin + pad)))
    left, top, right, bottom = _text_bbox(text, font)
    box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0 = margin if corner.endswith("left") else width - margin - box_w
    y0 = margin if corner.startswith("top") else height - margin - box_h
    # The box may stick out of tiny images: it is clipped to them.
    clipped = (max(0, x0), max(0, y0), min(width, x0 + box_w), min(height, y0 + box_h))
    return font, (x0 + pad - left, y0 + pad - top), clipped, pad


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
    pixels of the box (:func:`label_box`) change.

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
    image = check_rgb(image)
    if not 0.0 <= box_opacity <= 1.0:
        raise RenderError(f"box_opacity must be in [0, 1], got {box_opacity}")
    font, (tx, ty), (cx0, cy0, cx1, cy1), _ = _label_layout(
        image.shape[:2], text, corner, font_size
    )
    out = image.copy()
    if not text or cx1 <= cx0 or cy1 <= cy0:
        return out
    region = out[cy0:cy1, cx0:cx1].astype(np.float32) * (1 - box_opacity)
    tile = Image.fromarray(np.clip(np.rint(region), 0, 255).astype(np.uint8))
    ImageDraw.Draw(tile).text((tx - cx0, ty - cy0), _lines(text), font=font, fill=_WHITE)
    out[cy0:cy1, cx0:cx1] = np.asarray(tile)
    return out


def quietest_corner(
    image_size: tuple[int, int], text: str, weight: Callable[[slice, slice], float]
) -> Corner:
    """The corner whose label box hides the least of a map.

    Args:
        image_size: ``(H, W)`` of the image.
        text: The label.
        weight: ``weight(rows, cols)``: how much of the map a box over those pixels would hide
            (e.g. the drawn opacity summed over it).

    Returns:
        The corner with the least weight under its box; ties go to the first of
        :data:`CORNERS` (top-left, top-right, bottom-left, bottom-right).
    """
    hidden = []
    for corner in CORNERS:
        x0, y0, x1, y1 = label_box(image_size, text, corner=corner)
        hidden.append(weight(slice(y0, y1), slice(x0, x1)) if x1 > x0 and y1 > y0 else 0.0)
    return CORNERS[int(np.argmin(hidden))]


def tick_labels(values: Sequence[float], step: float) -> list[str]:
    """Tick labels with the fewest decimals that write every tick exactly (0.25, not 0.2).

    Args:
        values: The tick values.
        step: The spacing of the ticks (sets the tolerance of "exactly").

    Returns:
        One label per value; ``-0`` is written ``0``.
    """
    tolerance = 1e-6 * step if step > 0 else 1e-9
    decimals = next(
        (d for d in range(12) if all(abs(round(v, d) - v) <= tolerance for v in values)), 12
    )
    texts = [f"{v:.{decimals}f}" for v in values]
    return [t.lstrip("-") if float(t) == 0 else t for t in texts]


def _ticks(vmin: float, vmax: float, ticks: int) -> tuple[list[float], list[str]]:
    """Nice tick values within ``[vmin, vmax]`` (about ``ticks`` of them) and their labels."""
    tick_values = MaxNLocator(nbins=ticks - 1).tick_values(vmin, vmax)
    step = float(np.diff(tick_values).min()) if len(tick_values) > 1 else vmax - vmin
    eps = 1e-9 * (vmax - vmin)
    inside = [float(v) for v in tick_values if vmin - eps <= v <= vmax + eps]
    return inside, tick_labels(inside, step)


def _vertical_label(label: str, size: int, max_length: int) -> Image.Image:
    """``label`` in black on white, rotated to read bottom to top, at most ``max_length`` tall."""
    label = _one_line(label)
    font = _fit_font(label, size, max_length)
    left, top, right, bottom = _text_bbox(label, font)
    strip = Image.new("RGB", (right - left, bottom - top), _WHITE)
    ImageDraw.Draw(strip).text((-left, -top), label, font=font, fill=_BLACK)
    return strip.transpose(Image.Transpose.ROTATE_90)


def _colour_bar(palette: np.ndarray, size: tuple[int, int], rule: OpacityRule) -> Image.Image:
    """The colormap as a ``(width, height)`` vertical bar, top colour at the top, over grey."""
    width, height = size
    fraction = 1 - (np.arange(height) + 0.5) / height
    grey = np.full((height, 1, 3), NEUTRAL_GREY, dtype=np.uint8)
    levels = rule.levels(fraction)[:, None]
    column = composite(grey, heat_index(fraction)[:, None], levels, palette)
    bar = np.broadcast_to(column, (height, width, 3))
    return Image.fromarray(np.ascontiguousarray(bar))


def add_colorbar(
    image: np.ndarray,
    cmap: str = DEFAULT_CMAP,
    vmin: float = 0.0,
    vmax: float = 1.0,
    label: str = "",
    *,
    ticks: int = 5,
    opacity: OpacityRule = OPAQUE,
) -> np.ndarray:
    """Appends a vertical colour bar with tick labels on the right of an image.

    The panel is white, as tall as the image; the bar runs from ``vmin`` at the bottom to
    ``vmax`` at the top with "nice" ticks, and ``label`` is written vertically beside them.
    Font sizes follow :func:`annotate`. The bar shows each colour as the overlay draws it: at
    the overlay's ``opacity``, composited over neutral grey (:data:`NEUTRAL_GREY`).

    Args:
        image: uint8 ``(H, W, 3)`` RGB image.
        cmap: Name of a matplotlib colormap (the one used for the overlay).
        vmin: Score at the bottom of the bar (what heat 0 means).
        vmax: Score at the top of the bar (what heat 1 means).
        label: Text along the bar, e.g. ``"probability"``; empty for none.
        ticks: Rough number of tick labels wanted (at least 2).
        opacity: The overlay's opacity rule; by default the colormap is drawn opaque.

    Returns:
        uint8 ``(H, W + panel_width, 3)`` image.

    Raises:
        RenderError: On a bad image or colormap, ``vmin >= vmax`` or ``ticks < 2``.
    """
    image = check_rgb(image)
    palette = colormap_palette(cmap)
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
    values, texts = _ticks(vmin, vmax, ticks)
    labels_w = max((round(font.getlength(t)) for t in texts), default=0)
    strip = _vertical_label(label, size, bar_h) if label else None
    text_right = gap + bar_w + tick_len + gap + labels_w
    panel_w = text_right + (gap + strip.width if strip is not None else 0) + gap

    panel = Image.new("RGB", (panel_w, height), _WHITE)
    panel.paste(_colour_bar(palette, (bar_w, bar_h), opacity), (gap, bar_top))
    draw = ImageDraw.Draw(panel)
    for value, text in zip(values, texts, strict=True):
        y = bar_top + (vmax - value) / (vmax - vmin) * bar_h
        _tick(draw, (gap + bar_w, y), tick_len, text, font, gap)
    if strip is not None:
        panel.paste(strip, (text_right + gap, max(0, (height - strip.height) // 2)))
    return np.concatenate([image, np.asarray(panel)], axis=1)


def _tick(
    draw: ImageDraw.ImageDraw,
    at: tuple[float, float],
    length: int,
    text: str,
    font: ImageFont.FreeTypeFont,
    gap: int,
) -> None:
    """A tick mark from ``at`` to the right, and its label after a gap."""
    x, y = at
    width = max(1, round(font.size) // 12)
    draw.line([(x, y), (x + length, y)], fill=_BLACK, width=width)
    draw.text((x + length + gap, y), _one_line(text), font=font, fill=_BLACK, anchor="lm")


def _same_height(tiles: Sequence[np.ndarray], max_tile_side: int) -> list[Image.Image]:
    """Pictures scaled (never enlarged) to one height at which no side exceeds the maximum."""
    tile_h = min(min(t.shape[0], max_tile_side * t.shape[0] // max(t.shape[:2])) for t in tiles)
    tile_h = max(1, tile_h)
    scaled = []
    for tile in tiles:
        size = (max(1, round(tile.shape[1] * tile_h / tile.shape[0])), tile_h)
        picture = Image.fromarray(tile)
        if picture.size != size:
            picture = picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        scaled.append(picture)
    return scaled


def sheet_tile(picture: np.ndarray, max_tile_side: int = SHEET_TILE_SIDE) -> np.ndarray:
    """A picture as :func:`contact_sheet` scales it, made early so the picture can be freed.

    Pictures of one size give the sheet the same tiles whether it is handed them or these; a
    wider one (an overlay with a colour bar) makes the sheet scale the others once more.

    Args:
        picture: uint8 ``(H, W, 3)`` RGB image.
        max_tile_side: Longest side of the tile, in pixels.

    Returns:
        uint8 ``(h, w, 3)``, never larger than ``picture``.
    """
    return np.asarray(_same_height([check_rgb(picture)], max_tile_side)[0])


def contact_sheet(
    tiles: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    max_tile_side: int = SHEET_TILE_SIDE,
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
    scaled = _same_height([check_rgb(t, f"tile {i}") for i, t in enumerate(tiles)], max_tile_side)
    count = len(scaled)
    columns = min(count, columns or (count if count <= 4 else math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    tile_h, cell_w = scaled[0].height, max(p.width for p in scaled)
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
            text = _truncate(_one_line(label), font, cell_w)
            draw.text(
                (x + cell_w / 2, y + tile_h + gap // 2), text, font=font, fill=_BLACK, anchor="ma"
            )
    return np.asarray(sheet).copy()
