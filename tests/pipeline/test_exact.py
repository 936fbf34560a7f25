"""Exact windows as the engine runs them: batches tried on a first long run, answers unchanged."""

from __future__ import annotations

import time

import numpy as np
import torch

from heatmap_cli.grid import score_grid
from heatmap_cli.grid.crops import cell_corners
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.pipeline.exact import BATCH_TRIALS, exact_windows, windows_per_pass
from tests.helpers.nets import WINDOW, PooledHeadNet, seeded
from tests.helpers.toys import as_loaded


class Counting(torch.nn.Module):
    """Records the batch size of every forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.batches = model, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.model(x)


def test_a_long_first_run_tries_batch_sizes_and_keeps_the_fastest() -> None:
    model = Counting(seeded(PooledHeadNet))
    loaded = as_loaded(model, window=WINDOW)
    windows = exact_windows(model, loaded, torch.device("cpu"), torch.float32, 2**30)
    windows.batch_size = 4  # trials 2, 4, 8 and 16
    pixels = np.random.default_rng(0).integers(0, 256, (1, 44 + 8 * 11, 44 + 8 * 9, 3), np.uint8)

    grid = windows.grid(pixels, 8)  # 12 x 10 = 120 windows: enough to try them

    assert windows.tuned and windows.tried == (2, 4, 8, 16)
    assert model.batches[:8] == [2, 2, 4, 4, 8, 8, 16, 16]
    assert windows.batch_size in (2, 4, 8, 16)
    chosen = windows.batch_size
    assert model.batches[8:] == [chosen] * (60 // chosen) + ([60 % chosen] if 60 % chosen else [])
    expected = score_grid(
        model.model, normalize(pixels, loaded.mean, loaded.std), 8, "crops", WINDOW
    )
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=1e-5)
    assert windows.windows == 120 and windows.seconds_per_window is not None

    model.batches.clear()
    windows.logits(pixels[0], cell_corners([(0, 0), (1, 1)], 8))
    assert model.batches == [2]  # tuned once: later runs use the chosen batch


def test_a_short_run_is_not_used_to_tune() -> None:
    model = Counting(seeded(PooledHeadNet))
    windows = exact_windows(
        model, as_loaded(model, window=WINDOW), torch.device("cpu"), torch.float32, 2**30
    )
    start = windows.batch_size
    pixels = np.zeros((60, 70, 3), np.uint8)

    windows.logits(pixels, cell_corners([(0, 0), (1, 2), (2, 3)], 8))

    assert not windows.tuned and windows.batch_size == start and model.batches == [3]


def test_windows_per_pass_follow_the_window_area_and_the_memory_budget() -> None:
    cpu = torch.device("cpu")
    assert windows_per_pass((224, 224), cpu) == 16
    assert windows_per_pass((96, 96), cpu) == round(16 * 224 * 224 / 96**2)
    assert windows_per_pass((224, 224), cpu, bytes_per_window=2**30, memory_budget=2**30) == 1
    assert windows_per_pass((224, 224), cpu, at_most=64) == 64
    assert max(BATCH_TRIALS) == 4


class SlowFirstCall(torch.nn.Module):
    """A classifier whose first forward pass waits ``setup`` seconds, as a first call's setup."""

    def __init__(self, model: torch.nn.Module, setup: float) -> None:
        super().__init__()
        self.model, self.setup = model, setup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.setup:
            time.sleep(self.setup)
            self.setup = 0.0
        return self.model(x)


def test_the_steady_cost_of_a_window_leaves_the_first_runs_setup_out() -> None:
    model = SlowFirstCall(seeded(PooledHeadNet), setup=0.5)
    windows = exact_windows(
        model, as_loaded(model, window=WINDOW), torch.device("cpu"), torch.float32, 2**30
    )
    pixels = np.zeros((60, 70, 3), np.uint8)

    windows.logits(pixels, cell_corners([(0, 0)], 8))
    assert windows.seconds_per_window is not None and windows.seconds_per_window >= 0.5
    windows.logits(pixels, cell_corners([(0, 1), (1, 2), (2, 3), (1, 1)], 8))

    assert windows.windows == 5 and windows.seconds >= 0.5  # the setup is spent all the same
    assert windows.seconds_per_window < 0.1  # but it is no window's cost
