"""Maps people can trust: colour scales, opacity, colour bars, diverging maps, margins, labels.

Rendering tests on small arrays; what the command draws for a whole image is checked in
``test_outputs.py`` and ``test_output_choices.py``.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest

from heatmap_cli.errors import InvalidOptionError, RenderError
from heatmap_cli.render import (
    OpacityRule,
    colour_scales,
    margin_fade,
    overlay,
    render_class_overlay,
)
from heatmap_cli.render.text import NEUTRAL_GREY, label_box, quietest_corner

GREY = np.full((120, 160, 3), NEUTRAL_GREY, dtype=np.uint8)


def lattice(xs, ys) -> np.ndarray:
    grid_x, grid_y = np.meshgrid(np.asarray(xs, float), np.asarray(ys, float))
    return np.stack([grid_x, grid_y], axis=-1).astype(np.float32)


def deviation(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute difference over the channels."""
    return np.abs(image.astype(int) - reference.astype(int)).mean(axis=-1)


# --- colour scales ---------------------------------------------------------------------------


def two_classes() -> list[np.ndarray]:
    strong = np.array([[0.05, 0.35], [0.10, 0.20]])
    weak = np.array([[0.12, 0.02], [0.01, 0.03]])
    return [strong, weak]


def test_shared_scale_gives_every_class_the_range_of_the_strongest():
    strong, weak = colour_scales(two_classes(), scale="shared")
    assert (strong.low, strong.high) == (weak.low, weak.high) == (0.0, 0.35)
    assert strong.describe() == "shared 0\N{EN DASH}0.35"


def test_per_class_and_absolute_scales():
    strong, weak = colour_scales(two_classes(), scale="per-class")
    assert (strong.high, weak.high) == (0.35, 0.12)
    assert [(s.low, s.high) for s in colour_scales(two_classes(), scale="absolute")] == [
        (0.0, 1.0)
    ] * 2


def test_probability_ranges_have_a_floor_and_fixed_ends_win():
    faint = [np.array([[0.01, 0.04]])]
    assert colour_scales(faint, scale="shared")[0].high == 0.1
    fixed = colour_scales(two_classes(), scale="shared", vmin=0.05, vmax=0.5)
    assert [(s.low, s.high) for s in fixed] == [(0.05, 0.5)] * 2


def test_logit_scales_come_from_the_data_and_diverging_ones_centre_on_zero():
    logits = [np.array([[-2.0, 6.0]]), np.array([[-5.0, 1.0]])]
    shared = colour_scales(logits, scale="shared", probabilities=False)
    assert [(s.low, s.high) for s in shared] == [(-5.0, 6.0)] * 2
    centred = colour_scales(logits, scale="per-class", probabilities=False, diverging=True)
    assert [(s.low, s.high) for s in centred] == [(-6.0, 6.0), (-5.0, 5.0)]
    constant = colour_scales([np.full((2, 2), 3.0)], scale="per-class", probabilities=False)
    assert (constant[0].low, constant[0].high) == (3.0, 4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale": "absolute", "probabilities": False}, "logits have no absolute range"),
        ({"scale": "fancy"}, "scale must be one of"),
        ({"vmin": 0.5, "vmax": 0.2}, "vmin must be below vmax"),
        ({"vmax": float("nan")}, "finite"),
    ],
)
def test_scales_that_cannot_be_drawn_are_refused(kwargs, message):
    with pytest.raises(InvalidOptionError, match=message):
        colour_scales(two_classes(), **kwargs)


# --- opacity and colour bars -----------------------------------------------------------------


def test_middle_values_stay_visible():
    rule = OpacityRule(alpha=0.5)
    assert rule.of(np.array(0.0)) == 0.0  # the photo is untouched where the score is 0
    assert rule.of(np.array(0.25)) == pytest.approx(0.25)  # half of alpha at a quarter
    assert rule.of(np.array(1.0)) == pytest.approx(0.5)
    # A score at 37% of the range is drawn at 60% of the peak's opacity (linear: 37%).
    assert rule.of(np.array(0.37)) >= 0.6 * 0.5
    assert OpacityRule(alpha=0.5, mode="linear").of(np.array(0.37)) == pytest.approx(0.185)


def test_opacity_rule_checks_its_arguments():
    for kwargs in ({"alpha": 1.5}, {"mode": "heat"}, {"centre": 2.0}):
        with pytest.raises(RenderError):
            OpacityRule(**kwargs)


def test_colour_bar_shows_the_colours_as_the_overlay_draws_them():
    """Over a neutral grey photo, each cell's pixel equals the bar's row for its score."""
    values = np.linspace(0.0, 1.0, 11).reshape(1, 11)
    centers = lattice(np.arange(11) * 14 + 7.5, [60.5])
    out = render_class_overlay(
        GREY, values, centers, colorbar=True, fade_margins=False, cmap="viridis"
    )
    bar_x = GREY.shape[1] + np.nonzero(np.any(out[60, GREY.shape[1] :] != 255, axis=-1))[0][0]
    bar = out[:, bar_x + 1]
    painted = np.nonzero(np.any(bar != 255, axis=-1))[0]
    top, bottom = painted[0], painted[-1]
    height = bottom - top + 1
    for value, x in zip(values[0, 1:], centers[0, 1:, 0], strict=True):
        row = top + round((1 - value) * height - 0.5)  # the row whose centre is at this score
        drawn = out[60, int(x)].astype(int)
        assert np.abs(drawn - bar[row].astype(int)).max() <= 3, value
    # At the score 0 the overlay is the photo, and the bar's bottom nearly the background.
    np.testing.assert_array_equal(out[60, 7], GREY[0, 0])
    assert np.abs(bar[bottom].astype(int) - NEUTRAL_GREY).max() <= 8


def test_diverging_map_is_centred_on_zero_and_draws_both_ends():
    logits = np.array([[-4.0, 0.0, 4.0]])
    centers = lattice([30.5, 80.5, 130.5], [60.5])
    out = render_class_overlay(
        GREY, logits, centers, vmin=-4.0, vmax=4.0, cmap="RdBu_r", fade_margins=False
    )
    low, zero, high = (out[60, x].astype(int) for x in (30, 80, 130))
    np.testing.assert_array_equal(zero, GREY[0, 0])  # the score 0 is transparent
    assert low[2] > low[0] + 20  # negative logits drawn blue, not hidden
    assert high[0] > high[2] + 20  # positive ones red


# --- margins ---------------------------------------------------------------------------------


def test_fade_is_full_between_the_outermost_centres_and_zero_at_the_border():
    fade = margin_fade(lattice([40.0, 120.0], [30.0, 90.0]), (120, 160))
    np.testing.assert_array_equal(fade.cols[40:120], 1.0)
    np.testing.assert_array_equal(fade.rows[30:90], 1.0)
    assert fade.cols[0] == pytest.approx(0.5 / 40) and fade.cols[-1] == pytest.approx(0.5 / 40)
    assert np.all(np.diff(fade.cols[:40]) > 0) and np.all(np.diff(fade.cols[120:]) < 0)
    assert fade.region(slice(0, 1), slice(0, 1))[0, 0] == pytest.approx((0.5 / 40) * (0.5 / 30))
    single = margin_fade(lattice([80.0], [60.0]), (120, 160))
    assert single.cols.argmax() in (79, 80) and single.cols[0] < 0.01


def test_margin_pixels_are_not_copies_of_the_border_cells():
    values = np.array([[1.0, 0.6], [0.8, 1.0]])
    centers = lattice([50.5, 110.5], [40.5, 80.5])
    out = render_class_overlay(GREY, values, centers, vmin=0.0, vmax=1.0, cmap="viridis")
    moved = deviation(out, GREY)
    # Row 40 holds the top border cells' values from x=50 to 110; left of x=50 it fades out.
    row = moved[40]
    assert row[50] > 0 and np.all(np.diff(row[:51]) >= 0)
    assert row[0] < 0.05 * row[50]
    assert not np.array_equal(out[40, :50], np.repeat(out[40, 50:51], 50, axis=0))
    # Above the outermost centres as well, down to the photo at the border.
    column = moved[:, 50]
    assert column[0] < 0.05 * column[40] and np.all(np.diff(column[:41]) >= 0)


# --- labels ----------------------------------------------------------------------------------


def test_label_goes_where_it_hides_the_least_of_the_map():
    values = np.array([[1.0, 0.0], [0.0, 0.0]])  # hot top-left
    centers = lattice([40.5, 120.5], [30.5, 90.5])
    text = "tabby  p=0.12"
    out = render_class_overlay(GREY, values, centers, label=text, cmap="viridis")
    plain = render_class_overlay(GREY, values, centers, cmap="viridis")
    changed = np.argwhere(np.any(out != plain, axis=-1))
    # Of the three cold corners, the first whose box stays off the hot region: bottom-left
    # (a box along the top edge would reach into the top-left quarter).
    x0, y0, x1, y1 = label_box(GREY.shape[:2], text, corner="bottom-left")
    assert (changed.min(axis=0) >= (y0, x0)).all() and (changed.max(axis=0) < (y1, x1)).all()
    assert y0 > GREY.shape[0] // 2
    cornered = render_class_overlay(
        GREY, values, centers, label=text, label_corner="top-left", cmap="viridis"
    )
    assert np.any(cornered[:10, :40] != plain[:10, :40])


def test_quietest_corner_prefers_the_first_corner_on_ties():
    assert quietest_corner((100, 200), "x", lambda rows, cols: 0.0) == "top-left"
    hidden = {"top-left": 5.0, "top-right": 5.0, "bottom-left": 1.0, "bottom-right": 3.0}

    def weight(rows: slice, cols: slice) -> float:
        vertical = "top" if rows.start < 50 else "bottom"
        horizontal = "left" if cols.start < 100 else "right"
        return hidden[f"{vertical}-{horizontal}"]

    assert quietest_corner((100, 200), "label", weight) == "bottom-left"


def test_inferno_keeps_its_name_and_colours():
    # The overlay's colours are matplotlib's own, bin for bin.
    heat = np.ones(GREY.shape[:2])
    out = overlay(GREY, heat, alpha=1.0)
    top = np.rint(np.asarray(matplotlib.colormaps["inferno"](1.0)[:3]) * 255)
    np.testing.assert_array_equal(out[0, 0], top)
