"""A slide's grid as a zarr store: the same arrays and outputs as the npz, resume and skip."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cli import CATEGORIES, output_files, run_tiny, save_photo, stderr_lines, summary
from tests.helpers.slides import require_slides, write_slide

require_slides()

import zarr  # noqa: E402  (the slides extra brings it; HEATMAP_REQUIRE_SLIDES=1 never skips)

SIZE = (400, 520)
RUN = ("--mpp", "1.0", "-k", "2", "-q")  # a 22 x 29 grid of 8 classes


@pytest.fixture
def slide(tmp_path):
    (tmp_path / "slides").mkdir()
    return write_slide(tmp_path / "slides" / "a.svs", SIZE, downsamples=(1, 4))


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of 3 rows and 8 x 8 chunks, so that the tiny grid crosses many of both."""
    from heatmap_cli.pipeline.slides import bands, grid_files

    monkeypatch.setattr(bands, "BAND_BYTES", 4 * len(CATEGORIES) * 29 * 3)
    monkeypatch.setattr(grid_files, "ZARR_CHUNK", 8)


def _outputs(out):
    """Every output but the grid file, the json and the manifest, by name: their bytes."""
    return {
        path.name: path.read_bytes()
        for path in out.iterdir()
        if path.is_file() and path.suffix not in (".npz", ".json", ".jsonl")
    }


def test_the_zarr_store_holds_the_npz_arrays_and_the_other_outputs_are_equal(
    tiny, slide, tmp_path, small_bands
):
    npz_out, zarr_out = tmp_path / "npz", tmp_path / "zarr"
    assert run_tiny(slide, "--out", npz_out, *RUN, "--grid-format", "npz").exit_code == 0
    result = run_tiny(slide, "--out", zarr_out, *RUN, "--grid-format", "zarr")
    assert result.exit_code == 0, result.stderr
    assert not (zarr_out / "a.npz").exists() and (zarr_out / "a.zarr" / ".zmetadata").is_file()
    # Zarr format 2, which zarr-python 2 (WSInfer's environment) reads as well as 3
    zarray = json.loads((zarr_out / "a.zarr" / "probs" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["chunks"] == [1, 8, 8]
    store = zarr.open_group(str(zarr_out / "a.zarr"), mode="r")
    with np.load(npz_out / "a.npz") as grid:
        for name in ("logits", "probs", "tissue", "full_context", "centers"):
            stored = store[name]
            assert stored.dtype == grid[name].dtype
            np.testing.assert_array_equal(stored[...], grid[name])  # NaN where NaN
        assert store["probs"].chunks == (1, 8, 8)
        for name in ("window", "window_input", "stride", "input_size", "level", "downsample"):
            np.testing.assert_array_equal(np.asarray(store.attrs[name]), grid[name])
        assert store.attrs["classes"] == grid["classes"].tolist() == list(CATEGORIES)
        assert store.attrs["slide_mpp"] == grid["slide_mpp"] == 0.5
        assert 0 < grid["tissue"].sum() < grid["tissue"].size  # the NaN cells are tested too
    assert _outputs(zarr_out) == _outputs(npz_out)  # CSV, GeoJSON, overlays, thumbnails
    records = [json.loads((out / "a.json").read_text()) for out in (npz_out, zarr_out)]
    assert records[0]["grid"] == {"rows": 22, "cols": 29, "file": "a.npz", "format": "npz"}
    assert records[1]["grid"] == {"rows": 22, "cols": 29, "file": "a.zarr", "format": "zarr"}
    for key in ("top_k", "classes"):
        assert records[0][key] == records[1][key]
    listed = {entry["name"]: entry for entry in records[1]["files"]}
    files = [p for p in (zarr_out / "a.zarr").rglob("*") if p.is_file()]
    assert listed["a.zarr"]["files"] == len(files)
    assert listed["a.zarr"]["bytes"] == sum(p.stat().st_size for p in files)


def test_outputs_read_in_bands_equal_those_of_the_whole_grid(tiny, slide, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    assert run_tiny(slide, "--out", whole, *RUN, "--npz-dtype", "float16").exit_code == 0
    from heatmap_cli.pipeline.slides import bands

    monkeypatch.setattr(bands, "BAND_BYTES", 1)  # one row per band (or one block of rows)
    banded = tmp_path / "banded"
    assert run_tiny(slide, "--out", banded, *RUN, "--npz-dtype", "float16").exit_code == 0
    assert _outputs(banded) == _outputs(whole)
    with np.load(whole / "a.npz") as one, np.load(banded / "a.npz") as other:
        assert one["probs"].dtype == np.float16
        for name in one.files:
            np.testing.assert_array_equal(one[name], other[name])
    records = [json.loads((out / "a.json").read_text()) for out in (whole, banded)]
    assert records[0]["top_k"] == records[1]["top_k"]
    assert records[0]["classes"] == records[1]["classes"]


def test_auto_writes_zarr_above_the_share_of_the_memory_budget(tiny, slide, tmp_path, monkeypatch):
    from heatmap_cli.pipeline.slides import bands

    # the default: 100k x 100k at 0.5 um/px, 2 classes, 1 GiB: stride 32 fits, 16 does not
    assert bands.choose_grid_format((2, 3119, 3119), "auto", 2**30) == "npz"
    assert bands.choose_grid_format((2, 6244, 6244), "auto", 2**30) == "zarr"
    assert bands.choose_grid_format((2, 6244, 6244), "npz", 2**30) == "npz"
    below = tmp_path / "below"
    assert run_tiny(slide, "--out", below, *RUN).exit_code == 0
    assert (below / "a.npz").is_file() and not (below / "a.zarr").exists()
    grid = bands.grid_bytes((len(CATEGORIES), 22, 29))
    monkeypatch.setattr(bands, "ZARR_SHARE", (grid - 1) / 2**30)  # just under the grid
    above = tmp_path / "above"
    result = run_tiny(slide, "--out", above, *RUN, "--npz-dtype", "float16")
    assert result.exit_code == 0, result.stderr
    assert (above / "a.zarr").is_dir() and not (above / "a.npz").exists()
    assert zarr.open_group(str(above / "a.zarr"), mode="r")["logits"].dtype == np.float16
    monkeypatch.setattr(bands, "ZARR_SHARE", grid / 2**30)  # the grid fits exactly: npz
    assert bands.choose_grid_format((len(CATEGORIES), 22, 29), "auto", 2**30) == "npz"


def test_skip_existing_checks_the_store_and_a_rerun_replaces_it(tiny, slide, tmp_path):
    out = tmp_path / "out"
    zarr_run = ("--out", out, *RUN[:-1], "--grid-format", "zarr")
    assert run_tiny(slide, *zarr_run, "-q").exit_code == 0
    again = run_tiny(slide, *zarr_run, "--skip-existing")
    assert summary(again).group(1, 3) == ("0", "1")
    chunk = next(p for p in (out / "a.zarr" / "probs").iterdir() if p.name[0] != ".")
    chunk.unlink()  # a store that lost a chunk is made again
    redone = run_tiny(slide, *zarr_run, "--skip-existing")
    assert summary(redone).group(1) == "1"
    assert any("a.zarr has" in line for line in stderr_lines(redone)), redone.stderr
    assert chunk.is_file()
    again = run_tiny(slide, *zarr_run, "--skip-existing")
    assert summary(again).group(1, 3) == ("0", "1")
    rerun = run_tiny(slide, *zarr_run)  # without --skip-existing: the store is replaced whole
    assert rerun.exit_code == 0, rerun.stderr
    assert not [name for name in output_files(out) if name.startswith(".")]
    format_changed = run_tiny(slide, "--out", out, *RUN[:-1], "--skip-existing")
    assert any("settings changed: grid_format" in line for line in stderr_lines(format_changed))
    assert (out / "a.npz").is_file() and not (out / "a.zarr").exists()  # the store replaced
    back = run_tiny(slide, *zarr_run, "-q")
    assert back.exit_code == 0 and (out / "a.zarr").is_dir() and not (out / "a.npz").exists()


def test_an_interrupted_zarr_slide_resumes_to_the_same_store(tiny, slide, tmp_path, monkeypatch):
    from heatmap_cli.pipeline.slides import scoring

    whole, out = tmp_path / "whole", tmp_path / "out"
    zarr_run = (*RUN, "--grid-format", "zarr", "--tissue", "off", "--tile", "64")
    assert run_tiny(slide, "--out", whole, *zarr_run).exit_code == 0
    original = scoring.GridStore.mark_done
    calls = []

    def interrupt(self, index):
        original(self, index)
        calls.append(index)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(scoring.GridStore, "mark_done", interrupt)
    assert run_tiny(slide, "--out", out, *zarr_run).exit_code == 130
    assert all(name.startswith(".a.slide-tiles/") for name in output_files(out))
    monkeypatch.setattr(scoring.GridStore, "mark_done", original)
    resumed = run_tiny(slide, "--out", out, *zarr_run)
    assert resumed.exit_code == 0, resumed.stderr
    assert not [name for name in output_files(out) if name.startswith(".")]
    stores = [zarr.open_group(str(o / "a.zarr"), mode="r") for o in (whole, out)]
    for name in ("logits", "probs", "tissue", "centers"):
        np.testing.assert_array_equal(stores[0][name][...], stores[1][name][...])
    assert _outputs(out) == _outputs(whole)


def test_without_zarr_the_slide_fails_in_one_line_and_keeps_its_tiles(
    tiny, slide, tmp_path, monkeypatch
):
    import tiffslide  # noqa: F401  (the slide reader needs zarr too: imported before it goes)

    save_photo(slide.parent / "photo.png", (64, 48))
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr raises ImportError
    result = run_tiny(slide.parent, "--out", out, *RUN[:-1], "--grid-format", "zarr")
    assert result.exit_code == 1
    assert summary(result).group(1, 2) == ("1", "1")  # the photo is done, the slide failed
    errors = [line for line in stderr_lines(result) if line.startswith("Error:")]
    assert len(errors) == 1 and "a.svs" in errors[0], result.stderr
    assert 'pip install "heatmap-cli[slides]"' in errors[0]
    assert not [name for name in output_files(out) if name.startswith("a.")]
    assert (out / ".a.slide-tiles").is_dir()  # scored: kept for the next run
    monkeypatch.delitem(sys.modules, "zarr")
    again = run_tiny(slide.parent, "--out", out, *RUN[:-1], "--grid-format", "zarr")
    assert again.exit_code == 0, again.stderr
    assert any("resumed:" in line for line in stderr_lines(again))
    assert (out / "a.zarr").is_dir()


def test_the_report_hovers_a_zarr_grid_as_it_hovers_the_npz(tiny, slide, tmp_path):
    pages = []
    for grid_format in ("npz", "zarr"):
        out = tmp_path / grid_format
        result = run_tiny(slide, "--out", out, *RUN, "--grid-format", grid_format, "--report")
        assert result.exit_code == 0, result.stderr
        data = [p for p in (out / "index_files").iterdir() if p.name.endswith(".d.js")]
        assert len(data) == 1
        pages.append(data[0].read_text())
    assert pages[1] == pages[0] and '"labels"' in pages[0]


def test_a_listed_store_that_became_a_file_is_not_done(tmp_path):
    from heatmap_cli.cli.resume import check_outputs, folder_size

    store = tmp_path / "a.zarr"
    (store / "probs").mkdir(parents=True)
    (store / "probs" / "0.0.0").write_bytes(b"12345")
    (store / ".zgroup").write_bytes(b"{}")
    size, count = folder_size(store)
    assert (size, count) == (7, 2)
    record = {"settings": {}, "files": [{"name": "a.zarr", "bytes": size, "files": count}]}
    (tmp_path / "a.json").write_text(json.dumps(record))
    assert check_outputs(tmp_path, Path("a"), {}).done
    (store / "probs" / "0.0.1").write_bytes(b"")  # one file more, of no bytes
    assert "a.zarr has 3 files" in check_outputs(tmp_path, Path("a"), {}).reason
    shutil.rmtree(store)
    store.write_bytes(b"1234567")
    assert check_outputs(tmp_path, Path("a"), {}).reason == "a.zarr is not a folder"
