"""The command's new choices: scales, labels, outputs, formats, npz contents, sizes, early errors.

Most tests serve the tiny padding-free network of ``test_cli.py`` (window 32, native stride 8);
one measures the npz of the real default model at stride 8.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import heatmap_cli
from tests.helpers.cli import (
    CATEGORIES,
    REPO,
    SAMPLES,
    output_files,
    run,
    run_tiny,
    save_photo,
)


def record(out: Path, stem: str = "photo") -> dict:
    return json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))


@pytest.fixture
def no_image_read(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Fails any image read, and records it: options must be refused before the first one."""
    reads: list[Path] = []

    def read_photo(path: Path, **kwargs: object) -> None:
        reads.append(path)
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr("heatmap_cli.pipeline.scoring.read_photo", read_photo)
    return reads


# --- files written ---------------------------------------------------------------------------


def test_outputs_choose_the_files_and_the_json_is_always_written(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    for outputs, expected in [
        ("npz", {"photo.npz", "photo.json"}),
        ("json", {"photo.json"}),
        ("png,json", {"photo.json", "photo_sheet.png"}),
    ]:
        out = tmp_path / outputs.replace(",", "_")
        result = run_tiny(photo, "--out", out, "--outputs", outputs, "-k", "2")
        assert result.exit_code == 0, result.output
        written = output_files(out)
        assert expected <= written and not (written - expected - _overlays(record(out)))
        document = record(out)
        assert document["settings"]["outputs"] == outputs.split(",") + (
            [] if "json" in outputs else ["json"]
        )
        if "png" not in outputs:
            assert [c["overlay"] for c in document["classes"]] == [None, None]


def _overlays(document: dict) -> set[str]:
    return {c["overlay"] for c in document["classes"] if c["overlay"]}


@pytest.mark.parametrize("image_format", ["jpg", "webp"])
def test_overlays_in_a_lossy_format(tiny, tmp_path: Path, image_format: str) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    out = tmp_path / "out"

    result = run_tiny(photo, "--out", out, "--format", image_format, "-k", "2")

    assert result.exit_code == 0, result.output
    overlays = _overlays(record(out))
    assert len(overlays) == 2 and all(name.endswith(f".{image_format}") for name in overlays)
    sheet = f"photo_sheet.{image_format}"
    assert output_files(out) == {*overlays, sheet, "photo.npz", "photo.json"}


def test_npz_keeps_the_chosen_classes_in_the_chosen_dtype(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    full = tmp_path / "full"
    assert run_tiny(photo, "--out", full, "-k", "3").exit_code == 0
    with np.load(full / "photo.npz") as data:
        logits, probs = data["logits"], data["probs"]
        assert "class_indices" not in data.files
    ranked = [r["index"] for r in record(full)["top_k"]]

    for choice, wanted in [("rendered", ranked[:2]), ("top3", ranked[:3])]:
        out = tmp_path / choice
        result = run_tiny(photo, "--out", out, "-k", "2", "--npz-classes", choice,
                          "--npz-dtype", "float16")  # fmt: skip
        assert result.exit_code == 0, result.output
        with np.load(out / "photo.npz") as data:
            assert data["class_indices"].tolist() == wanted
            assert data["probs"].dtype == data["logits"].dtype == np.float16
            assert tuple(data["classes"]) == CATEGORIES  # every name, by index
            np.testing.assert_allclose(data["probs"], probs[wanted], atol=1e-3)
            np.testing.assert_allclose(data["logits"], logits[wanted], rtol=1e-3, atol=1e-3)


# --- early, clear errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--outputs", "png,svg"], "outputs must be a comma-separated subset of png,npz,json"),
        (["--npz-classes", "top0"], "npz classes must be all, rendered or topK"),
        (["--npz-dtype", "float64"], "'float64' is not one of 'float32', 'float16'"),
        (["--format", "gif"], "'gif' is not one of 'png', 'jpg', 'webp'"),
        (["--scale", "log"], "'log' is not one of 'shared', 'absolute', 'per-class'"),
        (["--label", "left"], "'left' is not one of 'auto', 'corner', 'none'"),
        (["--size", "big"], "must be a number of pixels or 'native', got 'big'"),
        (["--scores", "logits", "--scale", "absolute"], "logits have no absolute range"),
        (["--vmin", "0.6", "--vmax", "0.2"], "vmin must be below vmax"),
        (["--method", "dense", "--stride", "4"], "method 'dense' runs at the native stride 8"),
        (["--size", "20"], "size 20 is below the model's 32-pixel window"),
        (["--size", "64", "--scales", "1,0.25"], "scale 0.25 of size 64 is below the model's"),
    ],
)
def test_options_that_cannot_work_exit_2_before_any_image_is_read(
    tiny, no_image_read, tmp_path: Path, options: list[str], message: str
) -> None:
    photo = save_photo(tmp_path / "photo.png")

    result = run_tiny(photo, "--out", tmp_path / "out", *options)

    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert no_image_read == []
    assert not list((tmp_path / "out").glob("*.json"))


def test_native_size_scores_the_photo_at_its_own_pixels(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    out = tmp_path / "out"

    result = run_tiny(photo, "--out", out, "--size", "native")

    assert result.exit_code == 0, result.output
    document = record(out)
    # 60 px is 32 + 8*3.5: snapped to 64 (or 56); 90 to the nearest 32 + 8k at that scale
    assert document["input_size"]["height"] in (56, 64)
    assert document["size"] == document["settings"]["size"] == "native"
    with np.load(out / "photo.npz") as data:
        ratio = data["window"][0] / 32
    assert ratio == pytest.approx(90 / document["input_size"]["width"])


# --- pictures and numbers that agree ---------------------------------------------------------


def test_logit_maps_and_the_json_agree(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    out = tmp_path / "out"

    result = run_tiny(photo, "--out", out, "--scores", "logits", "-k", "3", "--cmap", "RdBu_r")

    assert result.exit_code == 0, result.output
    document = record(out)
    with np.load(out / "photo.npz") as data:
        logits, centers = data["logits"], data["centers"]
    assert [c["index"] for c in document["classes"]] == [r["index"] for r in document["top_k"]]
    for entry in document["classes"]:
        values = logits[entry["index"]]
        row, col = np.unravel_index(np.argmax(values), values.shape)
        assert entry["peak"] == pytest.approx(float(values.max()))
        assert (entry["x"], entry["y"]) == pytest.approx(tuple(centers[row, col].tolist()))
        drawn = logits[[c["index"] for c in document["classes"]]]
        reach = max(abs(float(drawn.min())), abs(float(drawn.max())))
        assert entry["scale"] == pytest.approx({"low": -reach, "high": reach, "name": "shared"})


def test_multiscale_overlays_are_the_ranked_classes(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    out = tmp_path / "out"

    result = run_tiny(photo, "--out", out, "--scales", "1,1.5", "--flip", "-k", "3")

    assert result.exit_code == 0, result.output
    document = record(out)
    ranked = [(r["index"], r["name"]) for r in document["top_k"]]
    assert [(c["index"], c["name"]) for c in document["classes"]] == ranked
    table = result.stdout.splitlines()[2:]  # photo line, header, then the ranked rows
    assert [int(line.split()[1]) for line in table] == [index for index, _ in ranked]


# --- reproducibility -------------------------------------------------------------------------


def test_version_and_help() -> None:
    script = str(Path(sys.executable).parent / "heatmap")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout == f"heatmap {heatmap_cli.__version__}\n"
    shown = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "\\b" not in shown.stdout and "\b" not in shown.stdout
    assert "\n  Examples:\n    heatmap photo.jpg --class 281\n" in shown.stdout
    assert "--size native" in shown.stdout and "--scales" in shown.stdout


def test_help_does_not_import_torch_or_ray() -> None:
    code = "import sys; from heatmap_cli.cli.options import main\n"
    code += "sys.argv = ['heatmap', '--help']\n"
    code += "try:\n    main()\nexcept SystemExit:\n    pass\n"
    code += "print('torch' in sys.modules, 'ray' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, cwd=REPO)  # fmt: skip
    assert shown.stdout.strip().endswith("False False")


# --- outputs for scale: the real model's npz at stride 8 -------------------------------------


def test_float16_npz_halves_the_file_and_top_classes_quarter_it(tmp_path: Path) -> None:
    photo = SAMPLES / "coffee.jpg"
    runs = {
        "float32": [],
        "float16": ["--npz-dtype", "float16"],
        "top100": ["--npz-dtype", "float16", "--npz-classes", "top100"],
    }
    sizes, arrays = {}, {}
    for name, options in runs.items():
        out = tmp_path / name
        # dilate: auto's exact cells follow the time measured, so they differ between runs
        args = ("--stride", "8", "--method", "dilate", "--outputs", "npz", *options)
        result = run(photo, "--out", out, *args)
        assert result.exit_code == 0, result.output
        sizes[name] = (out / "coffee.npz").stat().st_size
        with np.load(out / "coffee.npz") as data:
            arrays[name] = {key: data[key] for key in ("logits", "probs")}
    single, half = arrays["float32"], arrays["float16"]
    assert half["probs"].dtype == np.float16 and half["probs"].shape == single["probs"].shape
    np.testing.assert_allclose(half["probs"], single["probs"], atol=1e-3)
    np.testing.assert_allclose(half["logits"], single["logits"], rtol=1e-3, atol=1e-6)
    assert sizes["float16"] <= 0.55 * sizes["float32"]
    assert sizes["top100"] * 4 <= sizes["float32"]
