"""The notebook API checks every map as the command does: figures, exact peaks, labels, notes.

The reference is the command's json and pictures for the same options (``tests.helpers.api``)
and, for the exact values themselves, ``method="crops"``: the unmodified model on every window.
``EdgeSensitiveNet`` is built so that dense and crops disagree (zero padding decides), so its
labels carry exact values that differ from the map's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import heatmap_cli.api.heatmap_model as heatmap_model
from heatmap_cli.api import HeatmapModel, ScoreMap
from heatmap_cli.api.exactness import ExactCells
from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.pipeline.fidelity import DEFAULT_FIDELITY, LABEL_TOLERANCE
from tests.helpers.api import assert_same_as_command, command_outputs, edgy_model
from tests.helpers.cli import SAMPLES

EDGY = ("--model", "edgy", "--size", 64)


@pytest.fixture
def edgy(serve_model) -> None:
    """Serves :class:`EdgeSensitiveNet` (dense disagrees with crops) as the model ``edgy``."""
    serve_model("edgy", edgy_model)


@pytest.fixture
def white(tmp_path: Path) -> Path:
    """A bright, even photo: dense says "bright" everywhere, crops "dark"."""
    path = tmp_path / "white.png"
    Image.new("RGB", (96, 64), "white").save(path)
    return path


def edgy_mapper(**settings) -> HeatmapModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the model's notes are not what is tested here
        return HeatmapModel("edgy", size=64, device="cpu", **settings)


def score(mapper: HeatmapModel, photo: Path) -> tuple[ScoreMap, list[str]]:
    """The photo's map, and the warnings said while scoring it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score_map = mapper(photo)
    return score_map, [str(w.message) for w in caught]


@pytest.mark.parametrize(
    ("options", "settings"),
    [((), {}), (("--scales", "1,1.5", "--flip"), {"scales": (1, 1.5), "flip": True})],
    ids=["plain", "scales-flip"],
)
def test_a_map_that_departs_is_checked_as_the_command_checks_it(
    edgy, white, tmp_path, options, settings
):
    arrays, record, out = command_outputs(
        white, tmp_path / "out", *EDGY, "--method", "dense", *options
    )
    score_map, said = score(edgy_mapper(method="dense", **settings), white)

    assert_same_as_command(score_map, arrays, record, out)  # json figures, exact peaks, labels
    fidelity = score_map.fidelity
    assert fidelity is not None and fidelity.to_json() == record["fidelity"]
    assert fidelity.top1_agreement < 0.9 and fidelity.max_abs_diff > 0.9
    bright = score_map.index("bright")
    assert score_map.peak(bright)[0] > 0.99 and score_map.exact_peak(bright) < 0.01
    (note,) = [n for n in score_map.notes if "departs" in n]
    assert "method crops gives exact maps" in note and f"{score_map.name}: {note}" in said
    same = round(fidelity.top1_agreement * len(fidelity.cells))
    assert f"top class the same on {same} of {len(fidelity.cells)}, largest" in repr(score_map)
    crops = score(edgy_mapper(method="crops", **settings), white)[0]  # the explicit reference
    rows, cols = np.array(fidelity.cells).T
    assert np.allclose(fidelity.exact_logits, crops.logits[:, rows, cols].T, rtol=0, atol=1e-4)
    assert np.array_equal(fidelity.map_logits, score_map.logits[:, rows, cols].T)


def test_fidelity_zero_checks_nothing_and_draws_the_commands_pictures(edgy, white, tmp_path):
    arrays, record, out = command_outputs(
        white, tmp_path / "out", *EDGY, "--method", "dense", "--fidelity", 0
    )
    unchecked, said = score(edgy_mapper(method="dense", fidelity=0), white)

    assert_same_as_command(unchecked, arrays, record, out)
    assert unchecked.fidelity is None and record["fidelity"] is None
    assert unchecked.exact_peak("bright") is None and unchecked.result.inputs == ()
    assert not any("departs" in line for line in [*unchecked.notes, *said])
    assert "exact windows" not in repr(unchecked)
    with pytest.raises(InvalidOptionError, match="kept no pixels"):
        unchecked.check(count=4)
    checked = score(edgy_mapper(method="dense"), white)[0]
    assert checked.fidelity is not None and checked.result.inputs  # pixels kept for later
    # the exact value in the label is the only difference
    assert np.array_equal(checked.probs, unchecked.probs)
    drawn = [np.asarray(s.overlay("bright")) for s in (checked, unchecked)]
    assert not np.array_equal(*drawn)


def test_crops_agrees_with_itself_everywhere(edgy, white, tmp_path):
    arrays, record, out = command_outputs(white, tmp_path / "out", *EDGY, "--method", "crops")
    score_map, said = score(edgy_mapper(method="crops"), white)

    assert_same_as_command(score_map, arrays, record, out)
    fidelity = score_map.fidelity
    assert fidelity is not None and DEFAULT_FIDELITY < len(fidelity.cells) <= 2 + DEFAULT_FIDELITY
    assert (fidelity.top1_agreement, fidelity.max_abs_diff, fidelity.mean_abs_diff) == (1, 0, 0)
    for cls in score_map.class_names:
        assert score_map.exact_peak(cls) == score_map.peak(cls)[0]
    assert not any("departs" in line for line in [*score_map.notes, *said])


def peak_cell(score_map: ScoreMap, index: int) -> tuple[int, int]:
    row, col = np.unravel_index(int(score_map.probs[index].argmax()), score_map.probs.shape[1:])
    return int(row), int(col)


def test_a_class_outside_the_check_is_evaluated_as_the_command_checks_it(pretrained, tmp_path):
    photo = SAMPLES / "coffee.jpg"
    mapper = HeatmapModel(pretrained, size=384, method="dense", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its fidelity note
        score_map = mapper(photo)
    checked = set(score_map.fidelity.cells)
    # the best class beyond the top 3 whose peak the check did not reach
    index = next(i for i, _, _ in score_map.top(20)[3:] if peak_cell(score_map, i) not in checked)
    assert score_map.exact_peak(index, evaluate=False) is None
    arrays, record, out = command_outputs(
        photo, tmp_path / "out", "--size", 384, "--method", "dense", "--class", index
    )
    assert_same_as_command(score_map, arrays, record, out)  # its label: exact, on demand
    (entry,) = record["classes"]
    assert abs(entry["exact_peak"] - entry["peak"]) > LABEL_TOLERANCE  # its label says "exact"
    assert score_map.exact_peak(index, evaluate=False) == pytest.approx(entry["exact_peak"])
    assert set(score_map.fidelity.cells) == checked  # the map's own check is unchanged


def test_more_cells_can_be_checked_and_equal_crops(edgy, white):
    score_map = score(edgy_mapper(method="dense"), white)[0]
    crops = score(edgy_mapper(method="crops"), white)[0]
    rows, cols = score_map.probs.shape[1:]
    its_own = score_map.fidelity

    everywhere = score_map.check(count=rows * cols)
    some = score_map.check(cells=[(0, 0), (rows - 1, cols - 1)], count=2)

    assert sorted(everywhere.cells) == [(r, c) for r in range(rows) for c in range(cols)]
    at = np.array(everywhere.cells).T
    assert np.allclose(everywhere.exact_logits, crops.logits[:, at[0], at[1]].T, atol=1e-4)
    assert some.cells[:2] == ((0, 0), (rows - 1, cols - 1)) and len(some.cells) == 4
    assert score_map.fidelity is its_own and len(its_own.cells) < rows * cols  # unchanged
    with pytest.raises(InvalidOptionError, match=f"outside the {rows}x{cols} grid"):
        score_map.check(cells=[(rows, 0)])


def test_a_check_that_fails_costs_only_itself(edgy, white, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("out of windows")

    monkeypatch.setattr(heatmap_model, "check_image", failing)
    score_map, said = score(edgy_mapper(method="dense"), white)

    assert score_map.fidelity is None and score_map.exact_peak("bright") is None
    assert any("fidelity check failed" in line and "out of windows" in line for line in said)
    assert score_map.overlay("bright").size == (96, 64)  # the map is kept, drawn without it


def test_an_exact_value_that_fails_leaves_its_label_without_it(edgy, white, monkeypatch):
    score_map = score(edgy_mapper(method="dense", fidelity=0), white)[0]
    checked = score(edgy_mapper(method="dense"), white)[0]

    def failing(*args, **kwargs):
        raise RuntimeError("no memory left")

    monkeypatch.setattr(ExactCells, "score", failing)
    with pytest.warns(UserWarning, match="exact value at bright's peak failed: no memory left"):
        picture = checked.overlay("bright")
    assert np.array_equal(np.asarray(picture), np.asarray(score_map.overlay("bright")))


@pytest.mark.parametrize("fidelity", [-1, 2.5, True])
def test_fidelity_is_a_number_of_cells(edgy, fidelity):
    with pytest.raises(InvalidOptionError, match="fidelity must be 0 or more cells"):
        edgy_mapper(fidelity=fidelity)
