"""Tests of heatmap_cli.render: placement of cell values, colour, text and layout."""

from __future__ import annotations

import itertools
import re

import matplotlib
import numpy as np
import pytest

from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.grid.geometry import GridGeometry
from heatmap_cli.render import (
    RenderError,
    add_colorbar,
    annotate,
    cell_values_to_image,
    check_cmap,
    contact_sheet,
    normalize_scores,
    overlay,
    peak_location,
    render_class_overlay,
)
from heatmap_cli.render.text import tick_labels

METHODS = ["pchip", "linear"]


def lattice(xs, ys) -> np.ndarray:
    """(rows, cols, 2) centres from x per column and y per row."""
    grid_x, grid_y = np.meshgrid(np.asarray(xs, float), np.asarray(ys, float))
    return np.stack([grid_x, grid_y], axis=-1).astype(np.float32)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- cell_values_to_image --------------------------------------------------------------------


GEOMETRIES = [
    # (input_size, original_size): square, landscape, portrait, 1xN, Nx1, 1x1, upscaled.
    ((224 + 32 * 3, 224 + 32 * 3), (300, 300)),
    ((224 + 32 * 4, 224 + 32 * 7), (480, 723)),
    ((224 + 32 * 9, 224 + 32 * 2), (1000, 410)),
    ((224, 224 + 32 * 5), (150, 281)),
    ((224 + 32 * 5, 224), (333, 129)),
    ((224, 224), (97, 131)),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("input_size", "original_size"), GEOMETRIES)
def test_hot_cell_peaks_at_its_window_centre(method, input_size, original_size):
    geometry = GridGeometry(input_size, original_size, window=(224, 224), stride=32)
    centers = geometry.centers()
    rows, cols = geometry.shape
    # Beyond the outermost centres the map is flat, so look for the peak within the pixels whose
    # centres lie within 1 px of the lattice; ties there resolve to the first such pixel.
    xs, ys = centers[0, :, 0], centers[:, 0, 1]
    x_lo, x_hi = int(np.floor(xs[0] - 0.5)), int(np.ceil(xs[-1] - 0.5)) + 1
    y_lo, y_hi = int(np.floor(ys[0] - 0.5)), int(np.ceil(ys[-1] - 0.5)) + 1
    for row, col in {(0, 0), (rows - 1, cols - 1), (0, cols - 1), (rows // 2, cols // 3)}:
        values = np.zeros((rows, cols))
        values[row, col] = 1.0
        heat = cell_values_to_image(values, centers, original_size, method=method)
        assert heat.shape == original_size
        assert heat.dtype == np.float32
        if rows * cols == 1:
            assert np.all(heat == 1.0)
            continue
        inner = heat[y_lo:y_hi, x_lo:x_hi]
        peak_y, peak_x = np.unravel_index(np.argmax(inner), inner.shape)
        assert heat.max() == inner.max()
        x, y = centers[row, col]
        assert abs(x_lo + peak_x + 0.5 - x) <= 1.0
        assert abs(y_lo + peak_y + 0.5 - y) <= 1.0


@pytest.mark.parametrize("method", METHODS)
def test_map_is_not_stretched_over_the_photo(method):
    # Windows centred at x=112 and x=144 in a 256-wide image: the change happens between them.
    centers = lattice([112, 144], [100, 140])
    values = np.array([[0.0, 1.0], [0.0, 1.0]])
    heat = cell_values_to_image(values, centers, (240, 256), method=method)
    pixel_x = np.arange(256) + 0.5
    row = heat[120]
    assert np.all(row[pixel_x <= 112] == 0.0)
    assert np.all(row[pixel_x >= 144] == 1.0)
    between = row[(pixel_x > 112) & (pixel_x < 144)]
    assert np.all(np.diff(between) > 0)
    assert 0.4 < row[127] < 0.6 < row[128 + 8]


@pytest.mark.parametrize("method", METHODS)
def test_values_are_exact_at_centres_and_monotone_between_them(method):
    rng = np.random.default_rng(1)
    xs = np.arange(9) * 23 + 30.5  # on pixel centres, so centre pixels sample the nodes exactly
    values = rng.normal(size=(1, 9))
    heat = cell_values_to_image(values, lattice(xs, [20.5]), (41, 260), method=method)
    row = heat[20]
    np.testing.assert_allclose(row[(xs - 0.5).astype(int)], values[0], rtol=1e-5, atol=1e-6)
    for left, right in itertools.pairwise(xs):
        segment = row[int(left - 0.5) : int(right - 0.5) + 1]
        steps = np.diff(segment)
        assert np.all(steps >= -1e-6) or np.all(steps <= 1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_edge_values_are_held_beyond_the_outermost_centres(method):
    rng = np.random.default_rng(2)
    values = rng.uniform(size=(3, 4))
    xs, ys = [50.5, 80.5, 110.5, 140.5], [60.5, 90.5, 120.5]  # on pixels 50, 140, 60, 120
    heat = cell_values_to_image(values, lattice(xs, ys), (200, 210), method=method)
    pixel_x, pixel_y = np.arange(210) + 0.5, np.arange(200) + 0.5
    left, right = pixel_x < xs[0], pixel_x > xs[-1]
    top, bottom = pixel_y < ys[0], pixel_y > ys[-1]
    # Each border strip repeats the line of the map at the outermost centre.
    np.testing.assert_array_equal(heat[:, left], np.repeat(heat[:, [50]], left.sum(), axis=1))
    np.testing.assert_array_equal(heat[:, right], np.repeat(heat[:, [140]], right.sum(), axis=1))
    np.testing.assert_array_equal(heat[top], np.repeat(heat[[60]], top.sum(), axis=0))
    np.testing.assert_array_equal(heat[bottom], np.repeat(heat[[120]], bottom.sum(), axis=0))
    # The corners are the corner cells' values.
    assert heat[0, 0] == pytest.approx(values[0, 0], abs=1e-6)
    assert heat[-1, -1] == pytest.approx(values[-1, -1], abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (4, 1), (3, 3)])
def test_constant_grid_gives_constant_image(method, shape):
    centers = lattice(np.arange(shape[1]) * 40 + 30, np.arange(shape[0]) * 35 + 25)
    heat = cell_values_to_image(np.full(shape, 0.37), centers, (157, 211), method=method)
    assert np.all(heat == np.float32(0.37))


@pytest.mark.parametrize("method", METHODS)
def test_output_never_leaves_the_input_range(method):
    rng = np.random.default_rng(3)
    for trial in range(20):
        rows, cols = rng.integers(1, 8, size=2)
        values = rng.normal(scale=5, size=(rows, cols)) ** 3  # heavy tails provoke overshoot
        if trial % 2:
            values = (values > 0).astype(float)  # steps provoke ringing in ordinary cubics
        xs = np.cumsum(rng.uniform(5, 40, cols))
        ys = np.cumsum(rng.uniform(5, 40, rows))
        heat = cell_values_to_image(values, lattice(xs, ys), (120, 170), method=method)
        assert heat.min() >= np.float32(values.min())
        assert heat.max() <= np.float32(values.max())


def test_transposing_the_grid_transposes_the_map():
    rng = np.random.default_rng(4)
    values = rng.uniform(size=(4, 6))
    xs, ys = np.arange(6) * 30 + 20, np.arange(4) * 25 + 40
    heat = cell_values_to_image(values, lattice(xs, ys), (150, 200))
    flipped = cell_values_to_image(values.T, lattice(ys, xs), (200, 150))
    np.testing.assert_allclose(flipped, heat.T, atol=1e-6)


def test_smooth_and_linear_agree_on_the_data_and_differ_in_between():
    values = np.array([[0.0, 0.2, 1.0, 0.3]])
    centers = lattice([20.5, 60.5, 100.5, 140.5], [10.5])
    smooth = cell_values_to_image(values, centers, (21, 161), method="pchip")[10]
    linear = cell_values_to_image(values, centers, (21, 161), method="linear")[10]
    np.testing.assert_allclose(smooth[[20, 60, 100, 140]], linear[[20, 60, 100, 140]], atol=1e-6)
    assert not np.allclose(smooth, linear, atol=1e-3)


def test_banded_filling_matches_one_band():
    rng = np.random.default_rng(5)
    values = rng.uniform(size=(5, 7))
    centers = lattice(np.arange(7) * 37 + 60, np.arange(5) * 41 + 50)
    whole = cell_values_to_image(values, centers, (333, 377))
    for method in METHODS:
        banded, single = (
            cell_values_to_image(values, centers, (333, 377), method=method, band_pixels=pixels)
            for pixels in (1000, 1 << 30)
        )
        np.testing.assert_array_equal(banded, single)
    np.testing.assert_array_equal(whole, cell_values_to_image(values, centers, (333, 377)))
    heat = np.clip(whole, 0, 1)
    image = photo(333, 377)
    np.testing.assert_array_equal(
        overlay(image, heat, band_pixels=1000), overlay(image, heat, band_pixels=1 << 30)
    )


@pytest.mark.parametrize(
    ("values", "centers", "message"),
    [
        (np.zeros((2, 3)), lattice([1, 2], [1, 2]), "must have shape"),
        (np.zeros((2, 2)), lattice([5, 1], [1, 2]), "increase strictly"),
        (
            np.zeros((2, 2)),
            lattice([1, 2], [1, 2]) + np.array([[[0, 0], [0, 0]], [[3, 0], [0, 0]]]),
            "lattice",
        ),
        (np.array([[np.nan, 1.0]]), lattice([1, 2], [1]), "NaN"),
        (np.zeros(3), lattice([1, 2, 3], [1]), "(rows, cols)"),
    ],
)
def test_bad_grids_are_rejected(values, centers, message):
    with pytest.raises(RenderError, match=re.escape(message)):
        cell_values_to_image(values, centers, (10, 10))


def test_render_error_is_a_value_error():
    with pytest.raises(ValueError, match="image_size"):
        cell_values_to_image(np.zeros((1, 1)), lattice([1], [1]), (0, 5))


# --- normalize_scores, peak_location ---------------------------------------------------------


def test_normalize_defaults_to_the_probability_scale():
    probs = np.array([[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(normalize_scores(probs), probs)
    np.testing.assert_allclose(normalize_scores(probs * 0.5), probs * 0.5)  # not stretched


def test_normalize_explicit_and_data_ranges():
    logits = np.array([-2.0, 0.0, 3.0, 8.0])
    np.testing.assert_allclose(normalize_scores(logits, vmin=None, vmax=None), [0, 0.2, 0.5, 1])
    np.testing.assert_allclose(normalize_scores(logits, vmin=0.0, vmax=4.0), [0, 0, 0.75, 1])
    assert normalize_scores(logits).dtype == np.float32


def test_normalize_constant_data_range_maps_to_zero():
    assert np.all(normalize_scores(np.full((2, 3), 4.2), vmin=None, vmax=None) == 0)


@pytest.mark.parametrize(("vmin", "vmax"), [(1.0, 1.0), (2.0, 1.0), (None, -5.0)])
def test_normalize_rejects_empty_ranges(vmin, vmax):
    with pytest.raises(RenderError, match="vmin"):
        normalize_scores(np.array([0.0, 1.0]), vmin=vmin, vmax=vmax)


def test_peak_location_returns_the_first_maximum_and_its_centre():
    centers = lattice([10, 20, 30], [5, 15])
    values = np.array([[0.1, 0.7, 0.2], [0.7, 0.3, 0.0]])
    assert peak_location(values, centers) == (pytest.approx(0.7), 20.0, 5.0)


# --- overlay ---------------------------------------------------------------------------------


def cmap_rgb(name: str, value: float) -> np.ndarray:
    return np.rint(np.asarray(matplotlib.colormaps[name](value)[:3]) * 255)


@pytest.mark.parametrize("mode", ["sqrt", "linear", "uniform"])
def test_overlay_with_zero_alpha_is_the_photo(mode):
    image = photo(37, 53)
    heat = np.random.default_rng(6).uniform(size=(37, 53))
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0, alpha_mode=mode), image)


def test_overlay_at_full_alpha_and_heat_is_the_colormap_colour():
    image = photo(20, 30)
    for name in ("inferno", "viridis"):
        out = overlay(image, np.ones((20, 30)), cmap=name, alpha=1.0)
        assert np.all(out == cmap_rgb(name, 1.0))


def test_uniform_alpha_one_shows_the_colormap_everywhere():
    heat = np.linspace(0, 1, 50).reshape(5, 10)
    out = overlay(photo(5, 10), heat, cmap="magma", alpha=1.0, alpha_mode="uniform")
    expected = np.rint(matplotlib.colormaps["magma"](heat)[..., :3] * 255)
    np.testing.assert_array_equal(out, expected)


def test_heat_alpha_leaves_cold_regions_untouched_and_blends_hot_ones():
    image = np.full((4, 6, 3), 200, dtype=np.uint8)
    heat = np.zeros((4, 6))
    heat[:, 3:] = 1.0
    out = overlay(image, heat, alpha=0.5)
    np.testing.assert_array_equal(out[:, :3], image[:, :3])
    expected = np.rint(0.5 * 200 + 0.5 * cmap_rgb("inferno", 1.0))
    assert np.all(np.abs(out[:, 3:].astype(int) - expected) <= 1)


def test_unknown_colormap_lists_suggestions():
    with pytest.raises(ValueError, match=r"unknown colormap 'infern'.*inferno"):
        overlay(photo(4, 4), np.zeros((4, 4)), cmap="infern")
    with pytest.raises(RenderError, match=r"did you mean viridis"):
        check_cmap("Viridis")
    # A colormap is an option value: the command exits 2 for it, as for any usage error.
    with pytest.raises(InvalidOptionError, match=r"unknown colormap 'Viridis'"):
        check_cmap("Viridis")
    check_cmap("cividis")


@pytest.mark.parametrize(
    ("kwargs", "heat", "message"),
    [
        ({"alpha": 1.5}, np.zeros((4, 4)), "alpha"),
        ({"alpha": -0.1}, np.zeros((4, 4)), "alpha"),
        ({}, np.full((4, 4), 1.2), "within"),
        ({}, np.zeros((4, 5)), "shape"),
        ({"alpha_mode": "fancy"}, np.zeros((4, 4)), "alpha_mode"),
    ],
)
def test_overlay_rejects_bad_arguments(kwargs, heat, message):
    with pytest.raises(RenderError, match=message):
        overlay(photo(4, 4), heat, **kwargs)


def test_overlay_rejects_non_rgb_images():
    with pytest.raises(RenderError, match="uint8"):
        overlay(np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4)))


# --- annotate, colour bar ----------------------------------------------------------------------


def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(np.any(before != after, axis=-1))
    return cols.min(), rows.min(), cols.max() + 1, rows.max() + 1


def test_annotate_changes_only_a_box_in_the_chosen_corner():
    image = np.full((300, 400, 3), 180, dtype=np.uint8)
    out = annotate(image, "tabby cat  p=0.87")
    assert out.shape == image.shape and out.dtype == np.uint8
    x0, y0, x1, y1 = changed_box(image, out)
    assert x0 < 20 and y0 < 20
    assert y1 < 60 and 50 < x1 < 300
    # Inside the box the background darkens, and white text is drawn.
    assert np.all(out[y0:y1, x0:x1] <= 255)
    assert out[y0:y1, x0:x1].min() < 100 and out[y0:y1, x0:x1].max() > 230

    out = annotate(image, "tabby cat  p=0.87", corner="bottom-right")
    x0, y0, x1, y1 = changed_box(image, out)
    assert x0 > 100 and y0 > 240 and x1 > 380 and y1 > 280


def test_annotate_font_grows_with_the_image():
    small = np.zeros((300, 300, 3), dtype=np.uint8)
    large = np.zeros((2400, 2400, 3), dtype=np.uint8)
    small_box = changed_box(small, annotate(small, "cat  p=0.50"))
    large_box = changed_box(large, annotate(large, "cat  p=0.50"))
    small_h, large_h = small_box[3] - small_box[1], large_box[3] - large_box[1]
    assert large_h > 5 * small_h


def test_annotate_shrinks_long_text_to_fit_and_handles_empty_text():
    image = np.zeros((200, 120, 3), dtype=np.uint8)
    out = annotate(image, "a very long class name that cannot possibly fit  p=0.99")
    x0, _, x1, _ = changed_box(image, out)
    assert x0 >= 0 and x1 <= 120
    np.testing.assert_array_equal(annotate(image, ""), image)


def test_colorbar_is_appended_on_the_right_with_the_colormap():
    image = photo(240, 320)
    out = add_colorbar(image, "viridis", 0.0, 1.0, "probability")
    assert out.shape[0] == 240 and out.shape[1] > 320
    np.testing.assert_array_equal(out[:, :320], image)
    panel = out[:, 320:]
    bar_col = np.nonzero(np.any(panel[120] != 255, axis=-1))[0][0]
    bar = panel[:, bar_col]
    coloured = np.nonzero(np.any(bar != 255, axis=-1))[0]
    top, bottom = bar[coloured[0]], bar[coloured[-1]]
    assert np.abs(top.astype(int) - cmap_rgb("viridis", 1.0)).max() <= 2
    assert np.abs(bottom.astype(int) - cmap_rgb("viridis", 0.0)).max() <= 2


def test_colorbar_rejects_bad_ranges_and_colormaps():
    with pytest.raises(RenderError, match="vmin < vmax"):
        add_colorbar(photo(50, 50), "inferno", 1.0, 1.0, "")
    with pytest.raises(RenderError, match="unknown colormap"):
        add_colorbar(photo(50, 50), "nope", 0.0, 1.0, "")


def test_tick_labels_are_exact():
    assert tick_labels([0.0, 0.25, 0.5], 0.25) == ["0.00", "0.25", "0.50"]
    assert tick_labels([-4.0, 0.0, 4.0], 4.0) == ["-4", "0", "4"]


# --- contact sheet, render_class_overlay -------------------------------------------------------


def solid(height: int, width: int, color: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(color, dtype=np.uint8), (height, width, 3)).copy()


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def test_contact_sheet_keeps_order_and_size():
    tiles = [solid(100, 150, c) for c in COLORS[:3]]
    sheet = contact_sheet(tiles, ["a", "b", "c"])
    assert sheet.dtype == np.uint8
    assert sheet.shape[1] > 3 * 150 and sheet.shape[0] > 100  # no upscaling, one row
    # Walking across the middle of the tiles meets the colours in order.
    row = sheet[50 + (sheet.shape[0] - 100) // 4]
    seen = [tuple(p) for p in row if tuple(p) in COLORS]
    order = [c for i, c in enumerate(seen) if i == 0 or c != seen[i - 1]]
    assert order == COLORS[:3]


def test_contact_sheet_grid_and_downscaling():
    tiles = [solid(1000, 2000, c) for c in COLORS]
    sheet = contact_sheet(tiles, ["photo", "b", "c", "d", "e"], max_tile_side=200, columns=2)
    tile_rows = np.nonzero(np.any(np.all(sheet == COLORS[0], axis=-1), axis=1))[0]
    tile_cols = np.nonzero(np.any(np.all(sheet == COLORS[0], axis=-1), axis=0))[0]
    assert len(tile_cols) <= 200 and len(tile_rows) == pytest.approx(100, abs=1)
    # Three rows of two: the fifth tile sits below the first, the second to its right.
    first, second, fifth = (np.argwhere(np.all(sheet == COLORS[i], axis=-1)) for i in (0, 1, 4))
    assert second[:, 1].min() > first[:, 1].max()
    assert fifth[:, 0].min() > first[:, 0].max()
    assert sheet.shape[1] < 2 * 200 + 60


def test_contact_sheet_rejects_bad_input():
    with pytest.raises(RenderError, match="at least one"):
        contact_sheet([], [])
    with pytest.raises(RenderError, match="labels"):
        contact_sheet([solid(4, 4, COLORS[0])], ["a", "b"])


def test_render_class_overlay_colours_the_hot_cell_and_leaves_the_rest():
    geometry = GridGeometry((224 + 32 * 3, 224 + 32 * 5), (200, 300), (224, 224), 32)
    centers = geometry.centers()
    values = np.zeros(geometry.shape)
    values[2, 4] = 0.9
    image = np.full((200, 300, 3), 128, dtype=np.uint8)
    out = render_class_overlay(image, values, centers, label="cat  p=0.90", alpha=0.8)
    assert out.shape == image.shape
    x, y = centers[2, 4].astype(int)
    assert np.any(out[y, x] != 128)
    np.testing.assert_array_equal(out[-5:, :40], image[-5:, :40])  # far from the hot cell
    wide = render_class_overlay(image, values, centers, colorbar=True, colorbar_label="p")
    assert wide.shape[0] == 200 and wide.shape[1] > 300


@pytest.mark.parametrize("line_break", ["\n", "\r", "\r\n", "\x85", "\x0b", "\u2028", "\u2029"])
def test_text_with_any_line_break_is_drawn(line_break: str) -> None:
    """Class names come from anywhere: a caption, a corner label or a colour bar's label with a
    line break in it is drawn (the layout engine refuses some of them: raqm_layout failed)."""
    picture = np.zeros((120, 200, 3), np.uint8)
    name = f"tabby{line_break}cat"

    captioned = contact_sheet([picture, picture], ["photo", f"{name} 0.87"])
    labelled = annotate(picture, f"{name}  p=0.87")
    barred = add_colorbar(picture, label=name)

    assert captioned.ndim == labelled.ndim == barred.ndim == 3
    assert labelled.shape == picture.shape and not np.array_equal(labelled, picture)
    one_line = contact_sheet([picture, picture], ["photo", "tabby cat 0.87"])
    assert np.array_equal(captioned, one_line)  # the caption is drawn on one line
