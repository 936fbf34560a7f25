"""Planning tiles: where each tile lies in the image, and which of its cells it keeps.

The score grid is the same when computed tile by tile, provided that

* every tile starts at a multiple of the network's stride, so that the tile's cells are cells of
  the full grid (cell ``j`` of a tile starting at pixel ``T`` is cell ``T / stride + j``); for a
  finer-stride network (shift-and-stitch or "a trous", which record ``native_stride``) at a
  multiple of the native stride, the period of their computation;
* every tile is ``window + stride * k`` pixels long, like the full (snapped) input (congruent to
  it modulo the native stride for finer-stride networks), so that size-dependent padding
  (TensorFlow "same" padding, timm's ``Conv2dSame`` in the default model, whose leading pad
  depends on the length modulo the stride) pads every layer exactly as in the untiled pass;
* from each tile only the cells are kept whose whole receptive field lies inside the tile, or
  runs over a side of the tile that is also a side of the image, where the untiled pass sees the
  same zero padding;
* neighbouring tiles overlap by enough that every cell is kept from exactly one tile.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from heatmap_cli.errors import GeometryError
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.tiling.field import (
    ReceptiveField,
    lattice_period,
    net_geometry,
    receptive_field,
    size_or_default,
)

__all__ = ["Tile", "TilePlan", "minimum_tile", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """One tile: the pixels fed to the network, and which of its cells go where.

    Attributes:
        top: First row of the tile in the (snapped) input image.
        left: First column of the tile.
        height: Rows of the tile, of the form ``window + stride * k``.
        width: Columns of the tile.
        rows: Rows of the tile's own grid that are kept.
        cols: Columns of the tile's own grid that are kept.
        out_rows: Rows of the full grid they fill.
        out_cols: Columns of the full grid they fill.
    """

    top: int
    left: int
    height: int
    width: int
    rows: slice
    cols: slice
    out_rows: slice
    out_cols: slice


@dataclass(frozen=True)
class TilePlan:
    """How a snapped input image is cut into tiles.

    Attributes:
        input_size: ``(H, W)`` of the input the tiles cover, ``window + stride * k`` each.
        grid_size: ``(rows, cols)`` of the full score grid.
        tiles: The tiles, row-major; their kept cells fill the grid exactly once.
        field: The receptive field the overlap was derived from (None for a single tile).
    """

    input_size: tuple[int, int]
    grid_size: tuple[int, int]
    tiles: tuple[Tile, ...]
    field: ReceptiveField | None

    @property
    def tile_size(self) -> tuple[int, int]:
        """``(h, w)`` of the largest tile, in pixels."""
        return max(t.height for t in self.tiles), max(t.width for t in self.tiles)

    @property
    def overhead(self) -> float:
        """Pixels fed to the network over pixels in the image (1.0: no overlap)."""
        area = sum(t.height * t.width for t in self.tiles)
        return area / (self.input_size[0] * self.input_size[1])


@dataclass(frozen=True)
class _Segment:
    """One tile along one axis: pixels ``[start, start + length)``, cells kept."""

    start: int
    length: int
    keep_from: int
    keep: int
    out_start: int


@dataclass(frozen=True)
class _AxisRule:
    """What one axis of every tile must respect, in cells of the grid.

    Attributes:
        cells: Cells of the full grid along the axis.
        window: Window side in pixels.
        stride: Cell spacing in pixels.
        period: Tile origins are multiples of ``period`` cells and tile spans are congruent to
            ``cells`` modulo it (1 for a network whose computation repeats every cell).
        before: Cells a tile that does not start at the image's edge loses at its start.
        after: Cells a tile that does not end at the image's edge loses at its end.
    """

    cells: int
    window: int
    stride: int
    period: int
    before: int
    after: int

    @property
    def minimum_span(self) -> int:
        """Fewest cells per tile that keep one cell whatever rounding to the period costs."""
        return self.before + self.after + 2 * self.period - 1

    def segments(self, span: int) -> list[_Segment] | None:
        """Greedy tiles of at most ``span`` cells, left to right; None if one keeps nothing.

        Every tile but the last spans exactly ``span`` cells (congruent to ``cells`` modulo the
        period); the last one runs to the end of the image.
        """
        segments = []
        kept = 0
        while kept < self.cells:
            origin = 0 if kept == 0 else max(0, (kept - self.before) // self.period * self.period)
            if origin + span >= self.cells:
                length = self.window + self.stride * (self.cells - 1 - origin)
                segments.append(
                    _Segment(self.stride * origin, length, kept - origin, self.cells - kept, kept)
                )
                return segments
            last = origin + span - 1 - self.after
            if last < kept:
                return None
            length = self.window + self.stride * (span - 1)
            segments.append(
                _Segment(self.stride * origin, length, kept - origin, last - kept + 1, kept)
            )
            kept = last + 1
        return segments


def _plan_axis(rule: _AxisRule, max_length: int) -> list[_Segment]:
    """Cuts one axis into as few tiles as ``max_length`` allows, each as small as that count lets.

    The greedy cut with the largest allowed span gives the fewest tiles; the smallest span that
    still gives that many is then used, which evens the tiles out and lowers the peak memory.
    """
    if rule.window + rule.stride * (rule.cells - 1) <= max_length:
        return [_Segment(0, rule.window + rule.stride * (rule.cells - 1), 0, rule.cells, 0)]
    largest = (max_length - rule.window) // rule.stride + 1
    largest -= (largest - rule.cells) % rule.period  # spans congruent to the image's
    fewest = rule.segments(largest)
    assert fewest is not None, "tile below the minimum; checked by the caller"
    low, high = 0, (largest - rule.minimum_span) // rule.period  # spans largest - period * k
    while low < high:  # find the largest k (smallest span) that keeps the count
        middle = (low + high + 1) // 2
        candidate = rule.segments(largest - rule.period * middle)
        if candidate is not None and len(candidate) == len(fewest):
            low = middle
        else:
            high = middle - 1
    best = rule.segments(largest - rule.period * low)
    assert best is not None
    return best


def _axis_rules(
    net: nn.Module, input_size: tuple[int, int], field: ReceptiveField
) -> tuple[_AxisRule, _AxisRule]:
    stride, window = net_geometry(net)
    cells = grid_shape(input_size, window, stride)
    period = lattice_period(net, stride)
    dropped = field.cells_dropped(window)
    # A shift-and-stitch pass starts up to (period - 1) cells inside a tile and is cut as far
    # before its end: its own edges move into the tile, so the margins grow by that much.
    extra = period - 1
    return (
        _AxisRule(
            cells[0], window[0], stride, period, dropped[0][0] + extra, dropped[0][1] + extra
        ),
        _AxisRule(
            cells[1], window[1], stride, period, dropped[1][0] + extra, dropped[1][1] + extra
        ),
    )


def minimum_tile(net: nn.Module, input_size: tuple[int, int] | None = None) -> int:
    """The smallest ``tile`` (pixels per side) that :func:`plan_tiles` accepts for a network.

    An interior tile must keep at least one cell after dropping those whose receptive field
    leaves it: ``window + stride * (dropped before + dropped after)`` per axis (plus rounding to
    the native lattice for finer-stride networks).

    Args:
        net: The converted network (``.stride``, ``.window``).
        input_size: ``(H, W)`` of the input, ``window + stride * k`` (see ``receptive_field``).

    Returns:
        The minimum tile side in pixels.
    """
    input_size = size_or_default(net, input_size)
    field = receptive_field(net, input_size)
    return _minimum_tile(_axis_rules(net, input_size, field))


def _minimum_tile(rules: tuple[_AxisRule, _AxisRule]) -> int:
    return max(rule.window + rule.stride * (rule.minimum_span - 1) for rule in rules)


def plan_tiles(
    net: nn.Module,
    input_size: tuple[int, int],
    tile: int,
    *,
    field: ReceptiveField | None = None,
) -> TilePlan:
    """Cuts an input of ``input_size`` into tiles of at most ``tile`` pixels per side.

    Args:
        net: The converted network (``.stride``, ``.window``; ``.native_stride`` for finer-stride
            networks, whose tiles start on the native lattice).
        input_size: ``(H, W)`` of the input, each side ``window + stride * k``.
        tile: Largest tile side in pixels.
        field: The network's receptive field, if already known (else measured when needed).

    Returns:
        The plan; a single tile when the image fits in one.

    Raises:
        GeometryError: If ``input_size`` is not of the form ``window + stride * k``, if ``tile``
            is smaller than :func:`minimum_tile` (the message says the minimum), or if the
            network's cells depend on the whole image.
    """
    stride, window = net_geometry(net)
    height, width = int(input_size[0]), int(input_size[1])
    rows, cols = grid_shape((height, width), window, stride)
    if (height - window[0]) % stride or (width - window[1]) % stride:
        raise GeometryError(
            f"input {width}x{height} is not of the form window + {stride} * k; crop it to "
            f"{window[1] + stride * (cols - 1)}x{window[0] + stride * (rows - 1)} first"
        )
    if tile >= height and tile >= width:
        whole = Tile(0, 0, height, width, *(slice(0, n) for n in (rows, cols, rows, cols)))
        return TilePlan((height, width), (rows, cols), (whole,), field)
    if field is None:
        field = receptive_field(net, (height, width))
    rules = _axis_rules(net, (height, width), field)
    smallest = _minimum_tile(rules)
    if tile < smallest:
        (above, below), (before, after) = field.margins(window)
        raise GeometryError(
            f"tile {tile} is too small: the minimum tile for this network is {smallest} pixels "
            f"(window {window[1]}x{window[0]}, each cell's receptive field {field.width}x"
            f"{field.height} reaches {max(above, before)} pixels before and {max(below, after)} "
            "after its window, and every tile must keep at least one cell)"
        )
    tiles = tuple(
        _tile(r, c) for r in _plan_axis(rules[0], tile) for c in _plan_axis(rules[1], tile)
    )
    return TilePlan((height, width), (rows, cols), tiles, field)


def _tile(rows: _Segment, cols: _Segment) -> Tile:
    """The tile made of a segment along the rows and one along the columns."""
    return Tile(
        rows.start,
        cols.start,
        rows.length,
        cols.length,
        slice(rows.keep_from, rows.keep_from + rows.keep),
        slice(cols.keep_from, cols.keep_from + cols.keep),
        slice(rows.out_start, rows.out_start + rows.keep),
        slice(cols.out_start, cols.out_start + cols.keep),
    )
