"""Slides through the command: what it writes, resume, skip, and bad slides in a folder."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.helpers.cli import CATEGORIES, output_files, run_tiny, save_photo, stderr_lines, summary
from tests.helpers.slides import require_slides, write_slide

require_slides()

SIZE = (400, 520)


@pytest.fixture
def slides(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    write_slide(folder / "a.svs", SIZE, downsamples=(1, 4))
    return folder


def test_a_slide_gets_its_grid_tables_pictures_and_record(tiny, slides, tmp_path):
    out = tmp_path / "out"
    result = run_tiny(slides / "a.svs", "--out", out, "--mpp", "1.0", "-k", "2")
    assert result.exit_code == 0, result.stderr
    names = {"a.npz", "a.csv", "a.geojson", "a.json", "a_thumbnail.png", "a_tissue.png"}
    assert names <= output_files(out)
    record = json.loads((out / "a.json").read_text())
    slide = record["slide"]
    assert (slide["level"], slide["downsample"], slide["slide_mpp"], slide["model_mpp"]) == (
        0,
        2.0,
        0.5,
        1.0,
    )
    assert record["kind"] == "slide" and record["original_size"] == {"width": 520, "height": 400}
    assert 0 < slide["tissue"]["fraction"] < 1
    assert slide["tiles"]["context"] == "exact" and slide["tiles"]["full_context_fraction"] == 1
    assert slide["tiles"]["full_context_cells"] == slide["tissue"]["cells"]
    with np.load(out / "a.npz") as grid:
        tissue, centers, probs = grid["tissue"], grid["centers"], grid["probs"]
        assert (grid["full_context"] == tissue).all()
        assert probs.shape == (len(CATEGORIES), *tissue.shape)
        assert np.isnan(probs[:, ~tissue]).all() and np.isfinite(probs[:, tissue]).all()
        # level-0 centres: window 32 model pixels = 64 level-0 pixels, stride 8 = 16
        assert centers[0, 0].tolist() == [32.0, 32.0] and centers[0, 1].tolist() == [48.0, 32.0]
        assert grid["window"].tolist() == [64.0, 64.0]
    with (out / "a.csv").open() as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["minx", "miny", "width", "height", *(f"prob_{c}" for c in CATEGORIES)]
    assert len(rows) - 1 == tissue.sum()
    assert {(r[2], r[3]) for r in rows[1:]} == {("64", "64")}
    collection = json.loads((out / "a.geojson").read_text())
    assert collection["features"] and collection["type"] == "FeatureCollection"
    for rendered in record["classes"]:
        assert (out / rendered["overlay"]).is_file()
    assert not list(out.glob(".*"))  # no kept tiles once done


def test_a_folder_goes_on_past_bad_slides_and_leaves_nothing_of_them(tiny, slides, tmp_path):
    cut = write_slide(slides / "cut.svs", SIZE)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])
    (slides / "vendor.mrxs").write_bytes(b"nothing an OpenSlide reader knows" * 4)
    write_slide(slides / "nompp.tif", SIZE, layout="generic")
    save_photo(slides / "photo.png", (64, 48))
    out = tmp_path / "out"
    result = run_tiny(slides, "--out", out, "--mpp", "1.0", "-q")
    assert result.exit_code == 1
    assert summary(result).group(1, 2) == ("2", "3")
    errors = [line for line in stderr_lines(result) if line.startswith("Error:")]
    assert len(errors) == 3
    for name, advice in (
        ("cut.svs", "again"),
        ("vendor.mrxs", "convert"),
        ("nompp.tif", "--slide-mpp"),
    ):
        assert any(name in line and advice in line for line in errors), errors
    stems = {name.split(".")[0].split("_")[0] for name in output_files(out)}
    assert stems == {"a", "photo"}  # nothing of the bad slides, nothing hidden left
    with_mpp = run_tiny(slides / "nompp.tif", "--out", out, "--mpp", "1.0", "--slide-mpp", "0.5")
    assert with_mpp.exit_code == 0, with_mpp.stderr


def test_finished_slides_are_skipped_and_changed_settings_redo_them(tiny, slides, tmp_path):
    out = tmp_path / "out"
    assert run_tiny(slides, "--out", out, "-q").exit_code == 0
    again = run_tiny(slides, "--out", out, "--skip-existing")
    assert summary(again).group(1, 3) == ("0", "1")
    changed = run_tiny(slides, "--out", out, "--skip-existing", "--tissue", "off")
    assert summary(changed).group(1) == "1"
    assert any("settings changed: tissue" in line for line in stderr_lines(changed))


def test_an_interrupted_slide_keeps_its_tiles_and_no_partial_outputs(
    tiny, slides, tmp_path, monkeypatch
):
    from heatmap_cli.pipeline.slides import scoring

    out = tmp_path / "out"
    original = scoring.GridStore.mark_done
    calls = []

    def interrupt(self, index):
        original(self, index)
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(scoring.GridStore, "mark_done", interrupt)
    result = run_tiny(slides / "a.svs", "--out", out, "--tissue", "off", "--tile", "64")
    assert result.exit_code == 130
    assert all(name.startswith(".a.slide-tiles/") for name in output_files(out))
    monkeypatch.setattr(scoring.GridStore, "mark_done", original)
    resumed = run_tiny(slides / "a.svs", "--out", out, "--tissue", "off", "--tile", "64")
    assert resumed.exit_code == 0, resumed.stderr
    assert any("resumed: 2 of" in line for line in stderr_lines(resumed))
    assert not [name for name in output_files(out) if name.startswith(".")]


def test_the_report_shows_a_slide_by_its_thumbnail_with_hover_values(tiny, slides, tmp_path):
    out = tmp_path / "out"
    result = run_tiny(slides / "a.svs", "--out", out, "--report", "-q")
    assert result.exit_code == 0, result.stderr
    assert (out / "index.html").is_file()
    assets = {p.name for p in (out / "index_files").iterdir()}
    assert any(name.endswith(".t.jpg") for name in assets)  # the thumbnail, not the slide
    assert any(name.endswith(".d.js") for name in assets)  # hover values (NaN off tissue: 0)


def test_the_tables_keep_the_npz_classes(tiny, slides, tmp_path):
    out = tmp_path / "out"
    result = run_tiny(slides / "a.svs", "--out", out, "--npz-classes", "top2", "-q")
    assert result.exit_code == 0, result.stderr
    with np.load(out / "a.npz") as grid:
        kept = [CATEGORIES[i] for i in grid["class_indices"]]
    header = (out / "a.csv").read_text().splitlines()[0].split(",")
    assert header[4:] == [f"prob_{name}" for name in kept] and len(kept) == 2
    feature = json.loads((out / "a.geojson").read_text())["features"][0]
    assert set(feature["properties"]["measurements"]) == {*header[4:], "cells"}


def test_the_geojson_tiles_grow_where_the_file_would_pass_its_size(
    tiny, slides, tmp_path, monkeypatch
):
    usual = tmp_path / "usual"
    assert run_tiny(slides / "a.svs", "--out", usual, "--mpp", "1.0").exit_code == 0
    monkeypatch.setattr("heatmap_cli.pipeline.slides.summary.GEOJSON_BYTES", 4_000)
    small = tmp_path / "small"
    assert run_tiny(slides / "a.svs", "--out", small, "--mpp", "1.0").exit_code == 0
    features = {
        name: json.loads((out / "a.geojson").read_text())["features"]
        for name, out in (("usual", usual), ("small", small))
    }
    assert len(features["small"]) < len(features["usual"])
    assert (small / "a.geojson").stat().st_size < (usual / "a.geojson").stat().st_size
    sides = {f["geometry"]["coordinates"][0][1][1] - f["geometry"]["coordinates"][0][0][1]
             for f in features["small"]}  # fmt: skip
    assert sides and min(sides) > 64  # tiles wider than one window (64 level-0 pixels)
    for name in features:  # every tissue cell is in one tile either way
        cells = sum(f["properties"]["measurements"]["cells"] for f in features[name])
        assert cells == json.loads((usual / "a.json").read_text())["slide"]["tissue"]["cells"]
