"""What --method auto picks, and refine: the rule picks what it says it picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heatmap_cli.grid.refine import DEFAULT_REFINE_SHARE
from heatmap_cli.pipeline.methods import (
    AUTO_SHARE,
    MethodChoice,
    Refiner,
    auto_budget,
    combined_choice,
    image_method,
    seconds_left,
)

STRIDE = 8
SHAPE = (12, 15)  # 180 cells


class FakeExact:
    """Exact windows read from a table, each costing ``per_window`` seconds of the clock."""

    def __init__(self, table: np.ndarray, per_window: float, measured: bool) -> None:
        self.table, self.per_window = table, per_window
        self.windows = 1 if measured else 0
        self.seconds = per_window if measured else 0.0

    @property
    def seconds_per_window(self) -> float | None:
        return self.seconds / self.windows if self.windows else None

    def logits(self, pixels: np.ndarray, corners: np.ndarray) -> np.ndarray:
        self.windows += len(corners)
        self.seconds += len(corners) * self.per_window
        return self.table[:, corners[:, 1] // STRIDE, corners[:, 2] // STRIDE].T


def grids() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    exact = rng.normal(0, 1, (3, *SHAPE)).astype(np.float32)
    dense = exact + rng.normal(0, 1, exact.shape).astype(np.float32)
    return dense, exact


def refine_once(
    requested: str, per_window: float, run_seconds: float, measured: bool = True
) -> tuple[np.ndarray, np.ndarray, MethodChoice, FakeExact]:
    dense, exact = grids()
    windows = FakeExact(exact, per_window, measured)
    refiner = Refiner(requested, "dense", lambda: windows, lambda: run_seconds + windows.seconds)
    scored = refiner(torch.from_numpy(dense[None]), None, np.zeros((1, 1, 1, 3), np.uint8), STRIDE)
    (choice,) = scored.choices
    return scored.grid[0].numpy(), scored.exact[0], choice, windows


def test_auto_budget_is_what_is_left_in_windows() -> None:
    assert auto_budget(180, 0.01, 1.0) == 100
    assert auto_budget(50, 0.01, 1.0) == 50  # never more than the cells
    assert auto_budget(180, 0.5, 0.1) == 0
    assert auto_budget(180, 0.01, -2.0) == 0  # overspent
    assert seconds_left(10.0, 0.0) == AUTO_SHARE * 10.0
    assert seconds_left(12.5, 2.5) == pytest.approx(0.0)  # 2.5 s is a quarter of the other 10


def test_auto_makes_every_cell_exact_when_that_fits_in_its_share() -> None:
    logits, exact, choice, _ = refine_once("auto", per_window=0.001, run_seconds=10)

    assert choice.method == "crops" and exact.all()
    np.testing.assert_array_equal(logits, grids()[1])
    assert "180 exact windows would take 0.18 s" in choice.reason and "all fit" in choice.reason


def test_auto_keeps_the_dense_map_when_too_few_windows_fit() -> None:
    logits, exact, choice, windows = refine_once("auto", per_window=1.0, run_seconds=10)

    assert choice.method == "dense" and not exact.any()
    np.testing.assert_array_equal(logits, grids()[0])
    assert windows.windows == 1  # none evaluated
    fit = int(seconds_left(10 + 1.0, 1.0) / 1.0)  # the window timed before counts as spent
    assert f"only {fit} fit" in choice.reason and "method crops or refine" in choice.reason


def test_auto_refines_with_what_fits_in_between() -> None:
    logits, exact, choice, _ = refine_once("auto", per_window=0.05, run_seconds=10)

    assert choice.method == "refine"
    budget = int(seconds_left(10 + 0.05, 0.05) / 0.05)
    assert 180 // 9 <= exact.sum() <= budget
    np.testing.assert_array_equal(logits[:, exact], grids()[1][:, exact])
    assert f"up to {budget} where in doubt fit" in choice.reason


def test_auto_keeps_exact_windows_within_its_share_over_a_long_run() -> None:
    """A folder: 4 s of start-up, then 1 s of other work per photo; all cells take 1.8 s."""
    dense, table = grids()
    windows = FakeExact(table, per_window=0.01, measured=True)
    other = [4.0]
    refiner = Refiner("auto", "dense", lambda: windows, lambda: other[0] + windows.seconds)
    methods = []
    for _ in range(30):
        other[0] += 1.0
        scored = refiner(torch.from_numpy(dense[None]), None, np.zeros((1, 1, 1, 3), np.uint8), 8)
        methods.append(scored.choices[0].method)
        assert windows.seconds <= AUTO_SHARE * other[0] + 1e-9
    assert methods[0] == "refine" and set(methods[1:]) == {"refine"}
    assert windows.seconds > 0.8 * AUTO_SHARE * other[0]  # and it spends most of its share


def test_auto_times_its_first_windows_on_a_lattice_it_keeps() -> None:
    _, exact, choice, windows = refine_once("auto", 1.0, run_seconds=10, measured=False)

    assert windows.windows == exact.sum() == 20  # the 4 x 5 lattice of a 12 x 15 grid
    assert choice.method == "refine"


def test_refine_spends_at_most_its_share_of_cells() -> None:
    logits, exact, choice, _ = refine_once("refine", per_window=100.0, run_seconds=1)

    assert choice.method == "refine" and 0 < exact.sum() <= round(DEFAULT_REFINE_SHARE * 180)
    np.testing.assert_array_equal(logits[:, exact], grids()[1][:, exact])
    assert choice.reason.startswith("asked for")


@pytest.mark.parametrize(
    ("methods", "expected"),
    [(["crops", "crops"], "crops"), (["crops", "dense"], "refine"), (["dense"], "dense")],
)
def test_an_images_method_comes_from_its_passes(methods, expected) -> None:
    choices = [MethodChoice(m, f"why {m}") for m in methods]
    combined = combined_choice(choices, "auto")
    assert combined.method == expected
    assert combined.reason == "; ".join(dict.fromkeys(c.reason for c in choices))


def test_a_method_asked_for_says_so() -> None:
    class Plain:
        method = None
        method_reason = None

    assert image_method([Plain()], "dense", "dense") == MethodChoice("dense", "asked for")
    fallback = image_method([Plain()], "auto", "crops")
    assert fallback.method == "crops" and "cannot be converted" in fallback.reason


def test_auto_times_its_first_windows_after_one_that_takes_the_setup() -> None:
    dense, table = grids()
    windows = FakeExact(table, per_window=0.01, measured=False)
    calls: list[int] = []
    logits = windows.logits
    windows.logits = lambda pixels, corners: calls.append(len(corners)) or logits(pixels, corners)
    refiner = Refiner("auto", "dense", lambda: windows, lambda: 10 + windows.seconds)
    refiner(torch.from_numpy(dense[None]), None, np.zeros((1, 1, 1, 3), np.uint8), STRIDE)

    assert calls[:2] == [1, 19]  # the 4 x 5 lattice: its first window alone, then the rest
