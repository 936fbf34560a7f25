"""refine: the dense grid made exact where in doubt; equal to crops on every cell marked exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from heatmap_cli.grid import score_grid
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.grid.refine import RefinePlan, corrected, refine_cells
from tests.helpers.nets import EdgeSensitiveNet


class PaddedNet(torch.nn.Module):
    """Zero padding everywhere: its dense grid departs from crops."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=4, padding=1),
        )
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean([2, 3]))


def fake_grids(shape=(12, 15), classes=4, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A 'crops' grid of two regions, and a dense grid wrong over a blob of one of them."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    exact = rng.normal(0, 0.3, (classes, rows, cols)).astype(np.float32)
    exact[0, :, : cols // 2] += 4  # class 0 on the left, class 1 on the right
    exact[1, :, cols // 2 :] += 4
    dense = exact + rng.normal(0, 0.2, exact.shape).astype(np.float32)
    dense[2, 3:8, 9:13] += 9  # confidently wrong over a region of the right half
    return dense, exact


def evaluator(exact: np.ndarray, calls: list[np.ndarray]):
    def evaluate(cells: np.ndarray) -> np.ndarray:
        calls.append(cells.copy())
        return exact[:, cells[:, 0], cells[:, 1]].T

    return evaluate


def test_refined_cells_are_exact_within_the_budget_and_each_evaluated_once() -> None:
    dense, exact = fake_grids()
    calls: list[np.ndarray] = []

    logits, mask = refine_cells(dense, evaluator(exact, calls), RefinePlan(60, radius=0))

    assert mask.sum() <= 60
    np.testing.assert_array_equal(logits[:, mask], exact[:, mask])
    np.testing.assert_array_equal(logits[:, ~mask], dense[:, ~mask])  # radius 0: no correction
    evaluated = np.concatenate(calls)
    assert len(evaluated) == mask.sum() == len({tuple(c) for c in evaluated.tolist()})


def test_a_confidently_wrong_region_is_found_from_the_lattice_and_made_exact() -> None:
    dense, exact = fake_grids()
    wrong = dense.argmax(0) != exact.argmax(0)
    assert wrong.sum() >= 20  # the blob

    logits, mask = refine_cells(dense, evaluator(exact, []), RefinePlan(90, radius=0))

    assert (logits.argmax(0) == exact.argmax(0)).all()
    assert mask[wrong].all()
    assert mask.sum() < 0.6 * mask.size  # not everything: right where dense agrees is left


def test_going_on_from_an_earlier_refinement_evaluates_no_cell_twice() -> None:
    dense, exact = fake_grids()
    calls: list[np.ndarray] = []
    first = refine_cells(dense, evaluator(exact, calls), RefinePlan(20, rounds=0, radius=0))
    before = {tuple(c) for c in np.concatenate(calls).tolist()}
    calls.clear()

    logits, mask = refine_cells(dense, evaluator(exact, calls), RefinePlan(70), start=first)

    after = {tuple(c) for c in np.concatenate(calls).tolist()}
    assert not before & after and mask[first[1]].all() and mask.sum() <= 70
    np.testing.assert_array_equal(logits[:, mask], exact[:, mask])


def test_correction_moves_dense_cells_by_their_exact_neighbours_residuals() -> None:
    dense = np.zeros((2, 9, 9), np.float32)
    exact = np.zeros((9, 9), bool)
    exact[4, 4] = True
    logits = dense.copy()
    logits[:, 4, 4] = [1.5, -0.5]  # residual (1.5, -0.5) there

    moved = corrected(dense, logits, exact, radius=2.0)

    np.testing.assert_allclose(moved[:, 3, 4], [1.5, -0.5], atol=1e-5)  # the only evidence
    assert (moved[:, 4, 4] == logits[:, 4, 4]).all()
    np.testing.assert_array_equal(corrected(dense, logits, exact, 0), logits)


@pytest.mark.parametrize("stride", [None, 4])
def test_score_grid_refine_equals_crops_on_the_cells_it_made_exact(stride) -> None:
    model = PaddedNet().eval()
    pixels = np.random.default_rng(2).integers(0, 256, (2, 72, 88, 3), dtype=np.uint8)
    x = normalize(pixels, (0.5,) * 3, (0.25,) * 3)
    crops = score_grid(model, x, stride or 8, "crops", (32, 32))
    dense = score_grid(model, x, stride, "dense" if stride is None else "dilate", (32, 32))

    refined = score_grid(model, x, stride, "refine", (32, 32))

    assert refined.shape == crops.shape
    same = torch.isclose(refined, crops, atol=1e-4, rtol=1e-4).all(dim=1)  # (N, rows, cols)
    assert same.any(dim=(1, 2)).all()  # some cells were made exact in each image
    assert 0 < same.float().mean() < 1
    assert not torch.allclose(dense, crops, atol=1e-3)


def test_refine_finds_what_a_net_built_to_disagree_gets_wrong() -> None:
    model = EdgeSensitiveNet().eval()
    x = normalize(np.full((1, 64, 96, 3), 255, np.uint8), (0.5,) * 3, (0.25,) * 3)
    crops = score_grid(model, x, 8, "crops", (32, 32))
    dense = score_grid(model, x, None, "dense", (32, 32))
    assert (dense.argmax(1) != crops.argmax(1)).float().mean() > 0.5

    refined = score_grid(model, x, None, "refine", (32, 32))

    agree = (refined.argmax(1) == crops.argmax(1)).float().mean()
    assert agree > (dense.argmax(1) == crops.argmax(1)).float().mean()
