"""The texture-mosaic benchmark's own parts: mosaics, the grid-to-pixel rule, the metrics.

No training here (that takes minutes): the models are small seeded networks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from benchmarks.studies.mosaics.evaluate import grid_fidelity, score_heatmap_outputs
from benchmarks.studies.mosaics.metrics import Agreement, Confusion, cell_truth, pixel_labels
from benchmarks.studies.mosaics.mosaics import make_mosaic, write_mosaic_set
from benchmarks.studies.mosaics.tables import MethodRow, refine_goals
from benchmarks.studies.mosaics.textures import TEXTURES
from benchmarks.studies.mosaics.training import Recipe, TrainedModel
from heatmap_cli.grid.geometry import GridGeometry
from tests.helpers.nets import padding_free_body


def test_a_mosaic_is_fixed_by_its_seed_and_holds_every_class():
    first, again, other = (make_mosaic((256, 320), seed, region_side=96) for seed in (3, 3, 4))
    assert first.image.shape == (256, 320, 3) and first.labels.shape == (256, 320)
    assert np.array_equal(first.image, again.image)
    assert np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)
    assert set(np.unique(first.labels)) == set(range(len(TEXTURES)))


def test_regions_are_painted_with_their_own_texture():
    mosaic = make_mosaic((256, 256), 0, region_side=96)
    # Inside one region the pixels vary (a texture), and no pixel is left unpainted (black).
    for label in range(len(TEXTURES)):
        region = mosaic.image[mosaic.labels == label]
        assert region.std() > 5
    assert (mosaic.image.sum(-1) > 0).mean() > 0.99


def test_pixel_labels_follow_each_cell_at_its_window_centre():
    # Two columns of cells: class 0 wins on the left column, class 1 on the right one.
    probs = np.zeros((2, 3, 2), dtype=np.float32)
    probs[0, :, 0], probs[1, :, 0] = 0.8, 0.2
    probs[0, :, 1], probs[1, :, 1] = 0.2, 0.8
    geometry = GridGeometry((128, 96), (128, 96), (64, 64), 32)
    labels = pixel_labels(probs, geometry.centers(), (128, 96))
    # Centres at x = 32 and 64: the curves cross halfway, at x = 48.
    assert (labels[:, :48] == 0).all()
    assert (labels[:, 48:] == 1).all()
    truth = np.zeros((128, 96), dtype=np.uint8)
    truth[:, 60:] = 1
    assert cell_truth(truth, geometry.centers()).tolist() == [[0, 1]] * 3


def test_confusion_gives_accuracy_and_mean_iou():
    confusion = Confusion(3)
    truth = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    confusion.add(truth, predicted)
    assert confusion.accuracy == pytest.approx(4 / 6)
    # IoU: class 0 1/(2+2-1), class 1 2/(2+3-2), class 2 1/(2+1-1).
    assert confusion.iou.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert confusion.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_agreement_counts_top1_and_largest_probability_difference():
    dense = np.array([[[0.7, 0.4]], [[0.3, 0.6]]])  # (K=2, 1, 2)
    crops = np.array([[[0.9, 0.6]], [[0.1, 0.4]]])
    agreement = Agreement()
    agreement.add(dense, crops)
    assert agreement.cells == 2 and agreement.top1 == 0.5
    assert agreement.mean_diff == pytest.approx(0.2)
    assert agreement.diff_max == pytest.approx(0.2)


class _PaddingFreeTextureNet(nn.Module):
    """Four classes, window 44, stride 8, no zero padding: dense must equal crops."""

    def __init__(self) -> None:
        super().__init__()
        self.features = padding_free_body()
        self.fc = nn.Linear(16, len(TEXTURES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean([2, 3]))


def _trained(model: nn.Module, window: int, tmp_path) -> TrainedModel:
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    return TrainedModel(Recipe("toy", window, 0), weights, model.eval(), 0.0, 0.0)


def test_grid_fidelity_is_exact_on_a_padding_free_net(tmp_path):
    torch.manual_seed(0)
    model = _trained(_PaddingFreeTextureNet(), 44, tmp_path)
    mosaics = write_mosaic_set(tmp_path / "set", count=1, size=44 + 8 * 8, region_side=40)
    fidelity = grid_fidelity(model, mosaics)
    assert fidelity.all.cells == 81
    assert fidelity.all.top1 == 1.0
    assert fidelity.all.diff_max < 1e-5
    assert fidelity.inside.cells + fidelity.boundary.cells == 81
    assert fidelity.dense_cells.accuracy == fidelity.crops_cells.accuracy


def test_heatmap_outputs_are_scored_with_the_rule(tmp_path):
    mosaics = write_mosaic_set(tmp_path / "set", count=1, size=160, region_side=64)
    stem = mosaics.stems()[0]
    labels = np.asarray(Image.open(mosaics.labels / f"{stem}.png"))
    geometry = GridGeometry((160, 160), (160, 160), (64, 64), 32)
    # A grid that is right at every window centre.
    truth = cell_truth(labels, geometry.centers())
    probs = np.eye(len(TEXTURES), dtype=np.float32)[truth].transpose(2, 0, 1)
    exact = np.zeros(truth.shape, dtype=bool)
    exact[0, 0] = True
    out = tmp_path / "out"
    out.mkdir()
    np.savez(out / f"{stem}.npz", probs=probs, centers=geometry.centers(), exact=exact)
    scores = score_heatmap_outputs(mosaics, out)
    assert scores.cells is not None and scores.cells.accuracy == 1.0
    assert scores.exact_cells == 1 and scores.total_cells == truth.size
    expected = Confusion(len(TEXTURES))
    expected.add(labels, pixel_labels(probs, geometry.centers(), labels.shape))
    assert scores.pixels.accuracy == expected.accuracy


def _row(method: str, accuracy: float, wall: float) -> MethodRow:
    return MethodRow("m@96", method, accuracy, accuracy, None, None, wall, 0.0, None, 1, 1)


def test_refine_goals_are_checked_against_crops_dense_and_grad_cam():
    rows = [
        _row("dense", 0.80, 1.0),
        _row("refine", 0.855, 2.0),
        _row("crops", 0.86, 5.0),
        _row("Grad-CAM", 0.83, 9.0),
    ]
    (line,) = refine_goals(rows)
    assert "pixel accuracy +0.5 pt below crops (met)" in line
    assert "time above dense 0.25 of crops' (met)" in line
    assert "ahead of Grad-CAM on accuracy, mIoU and time: yes" in line
    slow = [*rows[:1], _row("refine", 0.80, 4.0), *rows[2:]]
    (line,) = refine_goals(slow)
    assert "(missed)" in line and "0.75 of crops'" in line
    assert refine_goals(rows[:1] + rows[2:]) == []
