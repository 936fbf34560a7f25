"""The command as the notebook API's reference: its npz, json and pictures, and comparing with them.

The command is run in-process into a folder (:func:`command_outputs`);
:func:`assert_same_as_command` checks that a :class:`~heatmap_cli.api.ScoreMap` gives every
number of its npz, its json's ranking and fidelity check, and every overlay's pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap_cli.api import ScoreMap
from heatmap_cli.models import LoadedModel
from tests.helpers.cli import run
from tests.helpers.nets import EdgeSensitiveNet
from tests.helpers.toys import as_loaded

GRID_KEYS = ("logits", "probs", "centers", "window", "stride", "input_size")


def command_outputs(photo: Path, out: Path, *options: object) -> tuple[dict, dict, Path]:
    """Runs the command on one photo (default ``--fidelity``); its npz arrays, json, folder."""
    result = run(photo, "--out", out, *options)
    assert result.exit_code == 0, result.output + result.stderr
    stem = photo.stem
    with np.load(out / f"{stem}.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    return arrays, json.loads((out / f"{stem}.json").read_text()), out


def draws_the_default_classes(score_map: ScoreMap, record: dict) -> bool:
    """Whether the command drew what it draws by default: the top 3 (max pooling) of probs.

    Then its fidelity check is the one every map gets (``ScoreMap.fidelity``).
    """
    drawn = [c["index"] for c in record["classes"]]
    default = [index for index, _, _ in score_map.top(3, "max")]
    return drawn == default and record["scores"] == (
        "probs" if score_map.probabilities else "logits"
    )


def assert_same_as_command(
    score_map: ScoreMap, arrays: dict, record: dict, out: Path, **look
) -> None:
    """Every number of the npz, the json's ranking and fidelity, and every overlay's pixels.

    The json's ``fidelity`` is compared where the command drew the default classes (else it
    checked other peaks); each drawn class's ``exact_peak`` always (evaluated on demand where the
    map's check did not reach its peak).
    """
    mine = {
        "logits": score_map.logits,
        "probs": score_map.probs,
        "centers": score_map.centers,
        "window": score_map.window,
        "stride": score_map.stride,
        "input_size": np.array(score_map.input_size),
    }
    for key in GRID_KEYS:
        assert np.array_equal(mine[key], arrays[key]), key
    assert list(arrays["classes"]) == list(score_map.class_names)
    pooling = record["top_k_pooling"]
    expected = [(r["index"], r["name"], r["score"]) for r in record["top_k"]]
    assert score_map.top(len(expected), pooling) == expected
    if draws_the_default_classes(score_map, record):
        checked = None if score_map.fidelity is None else score_map.fidelity.to_json()
        assert checked == record["fidelity"]
    drawn = [c["index"] for c in record["classes"]]
    for entry in record["classes"]:
        with Image.open(out / entry["overlay"]) as written:
            pixels = np.asarray(written.convert("RGB"))
        picture = score_map.overlay(entry["index"], classes=drawn, **look)
        assert np.array_equal(np.asarray(picture), pixels), entry["overlay"]
        value, x, y = score_map.peak(entry["index"], record["scores"])
        assert (value, x, y) == pytest.approx((entry["peak"], entry["x"], entry["y"]))
        exact, expected_exact = (
            score_map.exact_peak(entry["index"], record["scores"]),
            entry["exact_peak"],
        )
        if expected_exact is None:
            assert exact is None
        else:  # a window evaluated alone rounds like one in the check's batch, or nearly
            assert exact == pytest.approx(expected_exact, abs=1e-5)


def edgy_model() -> LoadedModel:
    """:class:`EdgeSensitiveNet` as a model: its dense grid says "bright" where crops say "dark"."""
    return as_loaded(EdgeSensitiveNet(), window=(32, 32), categories=["bright", "dark"])
