"""Tests of the HTML report's Python side: encoding grids, reading records, caching, failures.

The page itself is tested in a real browser in ``test_report_browser.py``. Here the output
folders are written by hand, following the output contract (json + npz per image), so every
variant a later version may write (float16, a subset of classes, no npz, missing keys) is
covered without running a model; one test runs the command itself with ``--report``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from heatmap_cli.cli.options import main
from heatmap_cli.errors import HeatmapError, InvalidOptionError
from heatmap_cli.report import ASSETS_DIR_NAME, REPORT_FILE, write_report
from heatmap_cli.report.encoding import (
    CELL_TOP,
    DISPLAY_FLOOR,
    MAX_MAPS,
    STORE_THRESHOLD,
    GridDataError,
    ScoreGrid,
    encode_grid,
    read_score_file,
)
from heatmap_cli.report.failures import Failure, merge_failures
from heatmap_cli.report.page import colormap_table
from heatmap_cli.report.records import find_records

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_images"
NAMES = tuple(f"class {i}" for i in range(40))


def random_probs(rows: int, cols: int, classes: int = len(NAMES), seed: int = 0) -> np.ndarray:
    """Softmax grids: a few confident classes, some faint, many negligible; (K, rows, cols)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (classes, rows, cols))
    confident = min(3, classes)
    logits[:confident] += rng.uniform(2.0, 6.0, (confident, rows, cols))
    logits[max(confident, classes // 2) :] -= 4.0
    exp = np.exp(logits - logits.max(axis=0))
    return (exp / exp.sum(axis=0)).astype(np.float32)


def lattice(rows: int, cols: int, step: float = 10.0, first: float = 16.0) -> np.ndarray:
    xs = first + step * np.arange(cols)
    ys = first + step * np.arange(rows)
    return np.stack(np.meshgrid(xs, ys), axis=-1).astype(np.float32)


def score_grid(probs: np.ndarray) -> ScoreGrid:
    centers = lattice(*probs.shape[1:]).astype(np.float64)
    return ScoreGrid(
        scores=probs,
        class_indices=np.arange(len(probs)),
        names=dict(enumerate(NAMES[: len(probs)])),
        xs=centers[0, :, 0],
        ys=centers[:, 0, 1],
        window=(32.0, 32.0),
    )


def decode(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def write_outputs(
    out: Path,
    stem: str,
    *,
    probs: np.ndarray | None = None,
    photo_size: tuple[int, int] = (72, 56),
    photo: bool = True,
    npz: bool = True,
    seed: int = 0,
    **npz_extra: object,
) -> dict:
    """Writes one image's json (and npz, photo, one overlay) as the command would."""
    probs = random_probs(4, 6, seed=seed) if probs is None else probs
    width, height = photo_size
    source = out.parent / "photos" / f"{stem}.png"
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if photo:
        source.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(source)
    folder = (out / stem).parent
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(stem).name
    peaks = probs.reshape(len(probs), -1).max(axis=1)
    best = [int(i) for i in np.argsort(-peaks)[:3]]
    overlay = f"{name}_{best[0]}_class_{best[0]}.png"
    Image.fromarray(pixels).save(folder / overlay)
    if npz:
        arrays = {
            "probs": probs,
            "centers": lattice(*probs.shape[1:]),
            "window": np.array([32.0, 32.0], dtype=np.float32),
            "classes": np.array(NAMES[: len(probs)]),
            **npz_extra,
        }
        np.savez_compressed(folder / f"{name}.npz", **arrays)
    record = {
        "image": str(source),
        "model": "tiny",
        "method": "dense",
        "stride": 8,
        "original_size": {"width": width, "height": height},
        "grid": {"rows": probs.shape[1], "cols": probs.shape[2]},
        "classes": [
            {
                "index": best[0],
                "name": NAMES[best[0]],
                "peak": float(peaks[best[0]]),
                "x": 16.0,
                "y": 16.0,
                "overlay": overlay,
            }
        ],
        "top_k": [{"index": i, "name": NAMES[i], "score": float(peaks[i])} for i in best],
    }
    (folder / f"{name}.json").write_text(json.dumps(record), encoding="utf-8")
    return record


def embedded_report(out: Path) -> dict:
    html = (out / REPORT_FILE).read_text(encoding="utf-8")
    match = re.search(
        r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S
    )
    assert match, "no embedded report data"
    return json.loads(match.group(1))


def asset_stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / ASSETS_DIR_NAME).iterdir()}


# ---------------------------------------------------------------------------------------------
# Encoding one grid
# ---------------------------------------------------------------------------------------------


def test_stored_maps_are_classes_reaching_one_step_quantized_over_the_overlay_range() -> None:
    probs = random_probs(5, 7)
    peaks = probs.reshape(len(probs), -1).max(axis=1)
    faint = int(np.argmin(peaks))
    assert peaks[faint] < STORE_THRESHOLD, "the test needs a class below the threshold"

    data = encode_grid(score_grid(probs), keep=[faint])

    stored = data["maps"]["index"]
    expected = {faint} | {i for i in range(len(probs)) if peaks[i] >= STORE_THRESHOLD}
    assert set(stored) == expected and stored[0] == faint  # kept classes come first
    q = decode(data["maps"]["q"], "u1").reshape(len(stored), 5, 7)
    for row, index in enumerate(stored):
        top = data["maps"]["top"][row]
        assert top == pytest.approx(max(peaks[index], DISPLAY_FLOOR), rel=1e-5)
        # One step of 255 over the drawn range [0, top]: at most half a step off.
        np.testing.assert_array_less(np.abs(q[row] / 255 * top - probs[index]), top / 510 + 1e-6)


def test_cells_list_their_best_classes_and_every_class_keeps_its_peak() -> None:
    probs = random_probs(3, 4)

    data = encode_grid(score_grid(probs))

    index = decode(data["cells"]["index"], "<u2").reshape(3, 4, CELL_TOP)
    value = decode(data["cells"]["value"], "<u2").reshape(3, 4, CELL_TOP) / 65535
    expected = np.argsort(-probs, axis=0)[:CELL_TOP].transpose(1, 2, 0)
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_allclose(
        value, np.sort(probs, axis=0)[::-1][:CELL_TOP].transpose(1, 2, 0), atol=0.5 / 65535 + 1e-7
    )
    peaks = decode(data["peaks"], "<u2") / 65535
    np.testing.assert_allclose(peaks, probs.reshape(len(probs), -1).max(axis=1), atol=1e-5)
    assert data["classes"] is None  # all classes, in order
    assert data["grid"] == [3, 4] and data["window"] == [32.0, 32.0]
    assert data["xs"] == [16.0, 26.0, 36.0, 46.0] and data["ys"] == [16.0, 26.0, 36.0]


def test_number_of_maps_is_bounded_when_many_classes_pass() -> None:
    probs = np.full((MAX_MAPS + 40, 2, 2), 0.5, dtype=np.float32)  # sigmoid-like scores
    last = len(probs) - 1

    data = encode_grid(score_grid(probs), keep=[last])

    assert len(data["maps"]["index"]) == MAX_MAPS + 1
    assert last in data["maps"]["index"]


def test_a_file_with_some_classes_maps_rows_to_model_indices(tmp_path: Path) -> None:
    probs = random_probs(2, 3, classes=4)
    kept = np.array([3, 7, 11, 30])
    path = tmp_path / "subset.npz"
    np.savez_compressed(
        path,
        probs=probs.astype(np.float16),
        centers=lattice(2, 3),
        window=np.array([32.0, 32.0], dtype=np.float32),
        classes=np.array([NAMES[i] for i in kept]),
        class_indices=kept,
    )

    grid = read_score_file(path)
    data = encode_grid(grid, keep=[30, 99])

    assert grid.scores.dtype == np.float32
    assert grid.names == {int(i): NAMES[i] for i in kept}
    np.testing.assert_array_equal(decode(data["classes"], "<u2"), kept)
    assert set(data["maps"]["index"]) <= set(kept.tolist()) and 30 in data["maps"]["index"]
    best = decode(data["cells"]["index"], "<u2").reshape(2, 3, 4)
    np.testing.assert_array_equal(best, kept[np.argsort(-grid.scores, axis=0)].transpose(1, 2, 0))


def test_a_file_with_some_classes_may_name_all_of_them(tmp_path: Path) -> None:
    path = tmp_path / "subset.npz"
    np.savez(
        path,
        probs=random_probs(2, 2, classes=2),
        centers=lattice(2, 2),
        window=np.array([32.0, 32.0]),
        classes=np.array(NAMES),
        class_indices=np.array([5, 9]),
    )

    assert read_score_file(path).names == dict(enumerate(NAMES))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"probs": None}, "has no probs"),
        ({"centers": np.zeros((2, 3, 2), dtype=np.float32)}, "do not form a grid"),
        ({"probs": np.full((3, 2, 3), 4.0, dtype=np.float32)}, "not all within"),
        ({"window": np.array([0.0, 32.0])}, "window must be"),
        ({"class_indices": np.array([1])}, "do not match"),
    ],
)
def test_files_that_cannot_be_drawn_say_why(tmp_path: Path, change: dict, message: str) -> None:
    arrays = {
        "probs": random_probs(2, 3, classes=3),
        "centers": lattice(2, 3),
        "window": np.array([32.0, 32.0]),
    }
    arrays.update(change)
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})

    with pytest.raises(GridDataError, match=message):
        read_score_file(path)


def test_a_damaged_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")

    with pytest.raises(GridDataError, match=r"cannot read bad\.npz"):
        read_score_file(path)


# ---------------------------------------------------------------------------------------------
# Records, colours and failures
# ---------------------------------------------------------------------------------------------


def test_records_are_the_finished_images_with_fallbacks_for_missing_keys(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_outputs(out, "b/two")
    write_outputs(out, "one")
    (out / "three.json").write_text('{"image": "x.jpg", "model": "m"}', encoding="utf-8")
    (out / "manifest.json").write_text('[{"image": "x.jpg"}]', encoding="utf-8")
    (out / "broken.json").write_text('{"image": ', encoding="utf-8")
    (out / ASSETS_DIR_NAME).mkdir()
    (out / ASSETS_DIR_NAME / "x.json").write_text('{"image": "y", "model": "m"}', encoding="utf-8")

    records = find_records(out)

    assert [str(r.stem) for r in records] == ["b/two", "one", "three"]
    bare = records[2]
    assert (bare.ranking, bare.rendered, bare.original_size, bare.grid) == ([], [], None, None)
    assert bare.activation == "softmax" and bare.text("stride") is None
    two = records[0]
    assert two.grid == (4, 6) and two.original_size == (72, 56) and two.text("stride") == "8"
    assert two.rendered[0].overlay is not None and len(two.ranking) == 3


def test_colour_table_is_matplotlibs_and_unknown_names_are_refused() -> None:
    import matplotlib

    table = colormap_table("inferno")

    assert table.shape == (matplotlib.colormaps["inferno"].N, 3) and table.dtype == np.uint8
    np.testing.assert_allclose(table / 255, matplotlib.colormaps["inferno"].colors, atol=0.5 / 255)
    with pytest.raises(HeatmapError, match="unknown colormap"):  # a RenderError
        colormap_table("no such map")


def test_failures_persist_until_their_image_succeeds_later() -> None:
    old = [
        Failure("a.jpg", "truncated", 100.0),
        Failure("b.jpg", "empty file", 100.0),
        Failure("./c.jpg", "not an image", 100.0),
    ]
    now = [Failure("b.jpg", "still empty", 200.0)]
    finished = {"c.jpg": 150.0, "a.jpg": 50.0}  # c redone after it failed; a's json is older

    merged = merge_failures(old, now, finished)

    assert [(f.image, f.reason) for f in merged] == [
        ("a.jpg", "truncated"),
        ("b.jpg", "still empty"),
    ]
    assert Failure.now("x/y.jpg", "x/y.jpg: truncated").reason == "truncated"


# ---------------------------------------------------------------------------------------------
# Writing the report
# ---------------------------------------------------------------------------------------------


def test_report_lists_every_image_and_makes_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    records = [write_outputs(out, "one"), write_outputs(out, "sub dir/two #2", seed=1)]

    path = write_report(out, cmap="viridis", alpha=0.7)

    assert path == out / REPORT_FILE
    report = embedded_report(out)
    assert [e["name"] for e in report["images"]] == ["one", "sub dir/two #2"]
    assert report["alpha"] == 0.7 and report["cmap"] == "viridis"
    assert base64.b64decode(report["lut"]) == colormap_table("viridis").tobytes()
    for entry, record in zip(report["images"], records, strict=True):
        assert entry["top"] == [[c["index"], c["name"], c["score"]] for c in record["top_k"]]
        assert entry["notes"] == [] and entry["photo_size"] == [72, 56]
        for field in ("thumb", "photo", "data", "labels"):
            assert (out / entry[field].replace("%20", " ").replace("%23", "#")).is_file()
    # Relative URLs, escaped: "sub dir/two #2_<i>_class_<i>.png".
    assert report["images"][1]["rendered"][0][3].startswith("sub%20dir/two%20%232_")
    script = (out / report["images"][0]["data"]).read_text(encoding="utf-8")
    assert script.startswith('heatmapReport.receive("' + report["images"][0]["key"] + '", {')


def test_report_and_its_code_make_no_remote_reference(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_outputs(out, "one")
    write_report(out)
    static = REPO / "heatmap_cli" / "report" / "static"

    texts = [(out / REPORT_FILE).read_text(encoding="utf-8")]
    texts += [p.read_text(encoding="utf-8") for p in static.iterdir()]

    for text in texts:
        assert not re.search(r"(https?:|wss?:|ftp:)?//[\w.-]+\.\w", text.replace("file://", ""))
        assert "fetch(" not in text and "XMLHttpRequest" not in text


def test_unchanged_images_are_not_rebuilt_and_removed_ones_are_dropped(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_outputs(out, "one")
    write_outputs(out, "two", seed=1)
    write_report(out)
    before = asset_stamps(out)

    json_two = out / "two.json"
    later = json_two.stat().st_mtime_ns + 5_000_000_000
    os.utime(json_two, ns=(later, later))
    (out / "one.json").unlink()
    write_report(out)

    after = asset_stamps(out)
    entries = embedded_report(out)["images"]
    assert [e["name"] for e in entries] == ["two"]
    key = entries[0]["key"]
    rebuilt = {f"{key}.t.jpg", f"{key}.p.jpg", f"{key}.d.js"}
    assert all(after[name] != before[name] for name in rebuilt)
    assert not any(name.startswith("one-") for name in after)  # the removed image's files
    labels = [name for name in after if name.startswith("labels-")]
    assert len(labels) == 1 and after[labels[0]] == before[labels[0]]  # shared, kept


def test_a_lost_file_is_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_outputs(out, "one")
    write_report(out)
    entry = embedded_report(out)["images"][0]
    (out / entry["data"]).unlink()

    write_report(out)

    assert (out / entry["data"]).is_file()


def test_without_npz_or_photo_the_entry_says_why(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_outputs(out, "nogrid", npz=False)
    write_outputs(out, "nophoto", photo=False, seed=1)
    write_outputs(out, "badgrid", seed=2, centers=np.zeros((4, 6, 2), dtype=np.float32))

    write_report(out)

    bad, nogrid, nophoto = embedded_report(out)["images"]
    assert nogrid["data"] is None and nogrid["photo"] and nogrid["thumb"]
    assert nogrid["notes"] == [
        "no nogrid.npz: the run wrote no grid, so only rendered overlays are shown"
    ]
    assert nophoto["data"] and nophoto["photo"] is None and nophoto["thumb"]  # from its overlay
    assert "not readable (" in nophoto["notes"][0]
    assert nophoto["notes"][1] == "the thumbnail shows a rendered overlay"
    assert bad["data"] is None and "do not form a grid" in bad["notes"][0]


def test_failures_are_listed_and_kept_until_redone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_outputs(out, "one")
    bad = str(tmp_path / "photos" / "bad.png")  # where write_outputs puts the photo of "bad"
    write_report(out, failures=[(bad, f"{bad}: truncated file")])
    write_report(out)  # a later run that did not retry it

    failures = embedded_report(out)["failures"]
    assert [(f["image"], f["reason"]) for f in failures] == [(bad, "truncated file")]

    write_outputs(out, "bad")  # a run that redid it, after it failed
    later = (out / "bad.json").stat().st_mtime_ns + 5_000_000_000
    os.utime(out / "bad.json", ns=(later, later))
    write_report(out, failures=[("other.jpg", "empty file")])

    assert [f["image"] for f in embedded_report(out)["failures"]] == ["other.jpg"]


def test_bad_arguments_fail_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="alpha"):
        write_report(tmp_path, alpha=1.5)
    with pytest.raises(HeatmapError, match="unknown colormap"):
        write_report(tmp_path, cmap="nope")
    assert not (tmp_path / REPORT_FILE).exists()


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_command_report_keeps_earlier_images_and_failures_on_resume(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "coffee.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes())
    (photos / "broken.jpg").write_bytes((SAMPLES / "coffee.jpg").read_bytes()[:2000])
    out = tmp_path / "out"
    runner = CliRunner()

    first = runner.invoke(main, [str(photos), "--out", str(out), "--report", "--device", "cpu"])
    (photos / "chelsea.jpg").write_bytes((SAMPLES / "chelsea.jpg").read_bytes())
    (photos / "broken.jpg").unlink()
    second = runner.invoke(
        main, [str(photos), "--out", str(out), "--report", "--skip-existing", "--device", "cpu"]
    )

    assert first.exit_code == 1 and second.exit_code == 0, (first.output, second.output)
    assert f"Report: {out / REPORT_FILE}" in second.stderr
    report = embedded_report(out)
    assert [e["name"] for e in report["images"]] == ["chelsea", "coffee"]
    for entry in report["images"]:
        record = json.loads((out / f"{entry['name']}.json").read_text(encoding="utf-8"))
        assert entry["top"][0][1] == record["top_k"][0]["name"]
    assert [f["image"] for f in report["failures"]] == [str(photos / "broken.jpg")]
    assert not report["failures"][0]["reason"].startswith(str(photos))


def test_report_carries_each_images_fidelity_and_exact_peaks(tmp_path: Path) -> None:
    out = tmp_path / "out"
    record = write_outputs(out, "one")
    record["classes"][0]["exact_peak"] = 0.125
    record["fidelity"] = {
        "cells": [[0, 0], [1, 2], [3, 4]],
        "top1_agreement": 2 / 3,
        "max_abs_diff": 0.5,
        "mean_abs_diff": 0.25,
    }
    (out / "one.json").write_text(json.dumps(record), encoding="utf-8")
    write_outputs(out, "two", seed=1)  # an older json: no fidelity, no exact peak

    write_report(out)

    one, two = embedded_report(out)["images"]
    assert one["rendered"][0][4] == 0.125
    assert one["fidelity"] == {
        "top1_agreement": 2 / 3,
        "max_abs_diff": 0.5,
        "mean_abs_diff": 0.25,
        "cells": 3,
    }
    assert two["rendered"][0][4] is None and two["fidelity"] is None


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_the_reports_own_files_and_records_holding_non_finite_numbers_are_not_trusted(
    tmp_path: Path, number: str
) -> None:
    out = tmp_path / "out"
    write_outputs(out, "one")
    write_outputs(out, "two", seed=1)
    write_report(out, failures=[("gone.png", "empty file")])
    assets = out / ASSETS_DIR_NAME
    for name in ("cache.json", "failures.json"):  # edited by hand, or by another program
        text = (assets / name).read_text(encoding="utf-8")
        (assets / name).write_text(re.sub(r"(\d+\.\d+)", number, text, count=1), "utf-8")
    two = (out / "two.json").read_text(encoding="utf-8")
    (out / "two.json").write_text(two.replace('"peak": ', f'"peak": {number}, "p": ', 1))

    damaged: list[Path] = []
    write_report(out, damaged=damaged)

    assert damaged == [out / "two.json"]
    report = embedded_report(out)
    assert [Path(entry["image"]).name for entry in report["images"]] == ["one.png"]
    for name in ("cache.json", "failures.json"):  # rewritten as strict JSON
        json.loads((assets / name).read_text(encoding="utf-8"), parse_constant=pytest.fail)
