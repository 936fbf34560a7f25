"""The command's fidelity check: the json's figures, the labels, one note per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap_cli.pipeline.fidelity import DEFAULT_FIDELITY
from tests.helpers.cli import run, save_photo, stderr_lines
from tests.helpers.nets import EdgeSensitiveNet
from tests.helpers.toys import as_loaded


@pytest.fixture
def edgy(serve_model) -> None:
    """Serves :class:`EdgeSensitiveNet` (dense disagrees with crops) as the model ``edgy``."""
    serve_model(
        "edgy",
        lambda: as_loaded(EdgeSensitiveNet(), window=(32, 32), categories=["bright", "dark"]),
    )


def notes(result) -> list[str]:
    return [line for line in stderr_lines(result) if line.startswith("Note:")]


def test_a_net_built_to_disagree_gets_one_note_per_image(edgy, tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        Image.new("RGB", (96, 64), "white").save(tmp_path / name)
    out = tmp_path / "out"

    options = ("--model", "edgy", "--out", out, "-s", "64", "-k", "2", "--method", "dense")
    result = run(tmp_path / "a.png", tmp_path / "b.png", *options)

    assert result.exit_code == 0, result.output
    said = notes(result)
    assert len(said) == 2 and all("--method crops gives exact maps" in line for line in said)
    assert {line.split(": ")[1] for line in said} == {str(tmp_path / n) for n in ("a.png", "b.png")}
    record = json.loads((out / "a.json").read_text())
    fidelity = record["fidelity"]
    assert fidelity["top1_agreement"] < 0.9 and fidelity["max_abs_diff"] > 0.9
    assert len(fidelity["cells"]) == len({tuple(c) for c in fidelity["cells"]})
    assert len(fidelity["cells"]) <= 2 + DEFAULT_FIDELITY
    bright = next(c for c in record["classes"] if c["name"] == "bright")
    assert bright["peak"] > 0.99 and bright["exact_peak"] < 0.01  # crops: "dark"
    assert [bright["row"], bright["col"]] in fidelity["cells"]


def test_a_padding_free_net_gets_no_note(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "p.png", size=(90, 60))
    result = run(
        photo, "--model", "tiny", "--out", tmp_path / "out", "-s", "64", "--method", "dense"
    )

    assert result.exit_code == 0, result.output
    assert notes(result) == []
    record = json.loads((tmp_path / "out" / "p.json").read_text())
    assert record["fidelity"]["top1_agreement"] == 1.0
    assert record["fidelity"]["max_abs_diff"] < 1e-4
    assert all(c["exact_peak"] == pytest.approx(c["peak"], abs=1e-4) for c in record["classes"])


def test_fidelity_zero_checks_nothing(edgy, tmp_path: Path) -> None:
    Image.new("RGB", (96, 64), "white").save(tmp_path / "w.png")
    out = tmp_path / "out"

    result = run(tmp_path / "w.png", "--model", "edgy", "--out", out, "-s", "64", "--fidelity", "0")

    assert result.exit_code == 0, result.output
    assert notes(result) == []
    record = json.loads((out / "w.json").read_text())
    assert record["fidelity"] is None and record["settings"]["fidelity"] == 0
    assert all(c["exact_peak"] is None for c in record["classes"])


def test_crops_marks_every_cell_exact(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "p.png", size=(90, 60))
    out = tmp_path / "out"

    result = run(photo, "--model", "tiny", "--out", out, "-s", "64", "--method", "crops")

    assert result.exit_code == 0, result.output
    record = json.loads((out / "p.json").read_text())
    with np.load(out / "p.npz") as arrays:
        assert arrays["exact"].all()
        assert record["exact_cells"] == arrays["exact"].size
    assert record["fidelity"]["max_abs_diff"] == 0.0


def test_negative_fidelity_is_a_usage_error(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "p.png")
    result = run(photo, "--model", "tiny", "--out", tmp_path / "out", "--fidelity", "-1")
    assert result.exit_code == 2 and "--fidelity" in result.output


def test_the_option_default_is_the_library_default() -> None:
    from heatmap_cli.cli.options import DEFAULT_FIDELITY as OPTION_DEFAULT

    assert OPTION_DEFAULT == DEFAULT_FIDELITY


def test_auto_and_refine_make_what_dense_gets_wrong_exact(edgy, tmp_path: Path) -> None:
    Image.new("RGB", (160, 96), "white").save(tmp_path / "w.png")
    runs = {}
    for method in ("dense", "refine", "crops", "auto"):
        out = tmp_path / method
        options = ("--model", "edgy", "--out", out, "-s", "96", "--method", method)
        result = run(tmp_path / "w.png", *options, "--fidelity", "0")
        assert result.exit_code == 0, result.output
        with np.load(out / "w.npz") as arrays:
            runs[method] = (json.loads((out / "w.json").read_text()), dict(arrays))
    crops = runs["crops"][1]["logits"]
    record, arrays = runs["refine"]
    exact = arrays["exact"]
    assert record["method"] == "refine" and record["method_reason"].startswith("asked for")
    assert record["exact_cells"] == int(exact.sum()) > 0
    assert exact.sum() <= round(0.3 * exact.size)
    np.testing.assert_allclose(arrays["logits"][:, exact], crops[:, exact], atol=1e-4)
    assert not runs["dense"][1]["exact"].any() and runs["dense"][0]["exact_cells"] == 0
    record, arrays = runs["auto"]
    assert record["settings"]["method"] == "auto" and record["method_reason"].startswith("auto:")
    assert record["method"] == {0: "dense", arrays["exact"].size: "crops"}.get(
        int(arrays["exact"].sum()), "refine"
    )
    np.testing.assert_allclose(
        arrays["logits"][:, arrays["exact"]], crops[:, arrays["exact"]], atol=1e-4
    )
