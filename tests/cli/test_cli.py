"""Tests of the ``heatmap`` command: outputs, class choice, batches, bad input, interruption.

Most tests serve a tiny padding-free network as the model ``tiny`` (a model source registered for
the test, see ``serve_model`` in conftest.py), so they take milliseconds; a few use the real
offline default model on the sample photos, one of them through the installed script.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms
from torch import nn

from heatmap_cli.errors import ImageReadError, UnknownClassError
from heatmap_cli.io.inputs import slug
from heatmap_cli.models import imagenet_categories
from tests.helpers.cli import (
    CATEGORIES,
    NATIVE_STRIDE,
    SAMPLES,
    NoisyNet,
    TinyNet,
    complete_outputs,
    image_size,
    output_files,
    run,
    run_tiny,
    save_photo,
    stderr_lines,
    summary,
    tiny_model,
)

# ---------------------------------------------------------------------------------------------
# Issue 3: the command and its outputs
# ---------------------------------------------------------------------------------------------


def check_npz_contract(npz: Path, num_classes: int, categories: tuple[str, ...]) -> dict:
    with np.load(npz) as data:
        arrays = {key: data[key] for key in data.files}
    assert set(arrays) == {
        "logits",
        "probs",
        "centers",
        "window",
        "window_input",
        "stride",
        "input_size",
        "classes",
        "exact",
    }
    assert arrays["exact"].dtype == bool and arrays["exact"].shape == arrays["logits"].shape[1:]
    logits, probs, centers = arrays["logits"], arrays["probs"], arrays["centers"]
    assert logits.dtype == np.float32 and probs.dtype == np.float32
    assert logits.ndim == 3 and logits.shape[0] == num_classes
    assert probs.shape == logits.shape
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert centers.dtype == np.float32 and centers.shape == (*logits.shape[1:], 2)
    assert arrays["window"].dtype == np.float32 and arrays["window"].shape == (2,)
    assert arrays["window_input"].shape == (2,)
    assert arrays["stride"].shape == () and np.issubdtype(arrays["stride"].dtype, np.integer)
    assert arrays["input_size"].shape == (2,)
    assert np.issubdtype(arrays["input_size"].dtype, np.integer)
    assert arrays["classes"].dtype.kind == "U" and tuple(arrays["classes"]) == categories
    return arrays


def test_class_by_index_writes_overlay_npz_and_json(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.jpg", size=(90, 60))
    out = tmp_path / "out"

    result = run_tiny(photo, "--class", "4", "--out", out, "--size", "64")

    assert result.exit_code == 0, result.output
    assert output_files(out) == {"photo_4_espresso.png", "photo.npz", "photo.json"}
    assert image_size(out / "photo_4_espresso.png") == (90, 60)

    arrays = check_npz_contract(out / "photo.npz", len(CATEGORIES), CATEGORIES)
    # 60 px -> 64 = 32 + 8*4, 90 px -> 96 = 32 + 8*8: a 5 x 9 grid at the native stride.
    assert arrays["logits"].shape == (6, 5, 9)
    assert int(arrays["stride"]) == NATIVE_STRIDE
    assert tuple(arrays["input_size"]) == (64, 96)
    np.testing.assert_allclose(arrays["window"], [32 * 90 / 96, 32 * 60 / 64])
    # Cell (0, 0) sees resized pixels [0, 32): its centre is 16 resized px = 16 * scale.
    np.testing.assert_allclose(arrays["centers"][0, 0], [16 * 90 / 96, 16 * 60 / 64])
    np.testing.assert_allclose(
        arrays["centers"][-1, -1], [(8 * 8 + 16) * 90 / 96, (8 * 4 + 16) * 60 / 64]
    )

    record = json.loads((out / "photo.json").read_text(encoding="utf-8"))
    assert record["model"] == "tiny"
    # auto (the default) chose by this run's measured cost, and says so
    assert record["settings"]["method"] == "auto" and record["method_reason"].startswith("auto: ")
    assert record["method"] in ("crops", "refine", "dense")
    assert record["stride"] == NATIVE_STRIDE
    assert record["original_size"] == {"width": 90, "height": 60}
    assert record["input_size"] == {"width": 96, "height": 64}
    # The window in the npz's pixels (original), and as the network saw it (input pixels).
    window = arrays["window"].tolist()
    assert record["window"] == {
        "width": pytest.approx(window[0], abs=1e-3),
        "height": pytest.approx(window[1], abs=1e-3),
        "units": "original pixels",
    }
    assert record["window_input"] == {"width": 32, "height": 32, "units": "input pixels"}
    assert arrays["window_input"].tolist() == [32, 32]
    [entry] = record["classes"]
    assert {"index", "name", "peak", "x", "y"} <= set(entry)
    assert (entry["index"], entry["name"]) == (4, "espresso")
    probs, centers = arrays["probs"][4], arrays["centers"]
    row, col = np.unravel_index(np.argmax(probs), probs.shape)
    assert entry["peak"] == pytest.approx(float(probs.max()))
    assert (entry["x"], entry["y"]) == pytest.approx(tuple(centers[row, col].tolist()))
    assert [set(r) for r in record["top_k"]] == [{"index", "name", "score"}] * 3
    scores = [r["score"] for r in record["top_k"]]
    assert scores == sorted(scores, reverse=True)
    best = int(np.argmax(arrays["probs"].reshape(6, -1).max(axis=1)))
    assert (record["top_k"][0]["index"], record["top_k"][0]["name"]) == (best, CATEGORIES[best])

    assert summary(result).group(1, 2) == ("1", "0")


def test_real_model_class_281_on_the_sample_photos(tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = run(SAMPLES, "--class", "281", "--out", out, "--size", "256")

    assert result.exit_code == 0, result.output
    assert output_files(out) == {
        f"{stem}{suffix}"
        for stem in ("chelsea", "coffee")
        for suffix in ("_281_tabby.png", ".npz", ".json")
    }
    categories = imagenet_categories()
    for stem in ("chelsea", "coffee"):
        photo_size = image_size(SAMPLES / f"{stem}.jpg")
        assert image_size(out / f"{stem}_281_tabby.png") == photo_size
        arrays = check_npz_contract(out / f"{stem}.npz", 1000, categories)
        record = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        assert record["model"] == "efficientnet_lite0"
        assert record["stride"] == int(arrays["stride"]) == 32
        [entry] = record["classes"]
        assert (entry["index"], entry["name"]) == (281, "tabby")
        assert 0 <= entry["x"] <= photo_size[0] and 0 <= entry["y"] <= photo_size[1]
    chelsea = json.loads((out / "chelsea.json").read_text(encoding="utf-8"))
    coffee = json.loads((out / "coffee.json").read_text(encoding="utf-8"))
    assert 281 <= chelsea["top_k"][0]["index"] <= 285  # a domestic cat
    assert (coffee["top_k"][0]["index"], coffee["top_k"][0]["name"]) == (967, "espresso")


def test_installed_script_on_a_sample_photo(tmp_path: Path) -> None:
    script = shutil.which("heatmap", path=str(Path(sys.executable).parent))
    assert script is not None, "the heatmap console script is not installed next to python"
    out = tmp_path / "out"

    # At --size 224 the grid is one row of windows: the quickest real run.
    process = subprocess.run(
        [script, str(SAMPLES / "chelsea.jpg"), "--out", str(out), "--size", "224", "-k", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert re.search(r"^1 done, 0 failed in ", process.stderr, re.MULTILINE), process.stderr
    record = json.loads((out / "chelsea.json").read_text(encoding="utf-8"))
    assert 281 <= record["top_k"][0]["index"] <= 285
    assert record["grid"]["rows"] == 1
    assert len(record["classes"]) == 2
    assert (out / "chelsea_sheet.png").is_file()


@pytest.mark.parametrize(
    "command",
    [
        [str(Path(sys.executable).parent / "heatmap"), "--help"],
        [sys.executable, "-m", "heatmap_cli", "--help"],
    ],
    ids=["script", "python-m"],
)
def test_help(command: list[str]) -> None:
    process = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("Usage: ")
    assert "--class INDEX|NAME" in process.stdout
    assert "--skip-existing" in process.stdout


@pytest.mark.parametrize(
    ("spec", "index"),
    [
        ("5", 5),
        ("ESPRESSO", 4),  # case-insensitive exact name beats "espresso maker"
        ("Cat", 1),  # exact name beats the substring of "tabby cat" and "tiger cat"
        ("tabby", 2),  # unique substring
        ("MAKER", 5),
        ("  tiger cat ", 3),
    ],
)
def test_class_by_name(tiny, tmp_path: Path, spec: str, index: int) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"

    result = run_tiny(photo, "--class", spec, "--out", out, "-s", "48")

    assert result.exit_code == 0, result.output
    record = json.loads((out / "photo.json").read_text(encoding="utf-8"))
    assert [c["index"] for c in record["classes"]] == [index]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ca", "class name 'ca' is ambiguous: cat (1), tabby cat (2), tiger cat (3)"),
        ("6", "class index 6 is out of range 0..5"),
        ("-1", "class index -1 is out of range 0..5"),
        ("dog", "no class named 'dog'; use an index 0..5 or a name"),
        (
            "tigercat",
            "no class named 'tigercat'; did you mean tiger cat (3)? use an index 0..5 or a name",
        ),
    ],
)
def test_bad_class_is_a_usage_error(tiny, tmp_path: Path, spec: str, message: str) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"

    result = run_tiny(photo, "--class", spec, "--out", out)

    assert result.exit_code == 2
    assert result.stderr == f"Error: {message}\n"
    assert output_files(out) == set()


def test_ambiguous_real_class_name_lists_candidates(tmp_path: Path) -> None:
    result = run(SAMPLES / "chelsea.jpg", "--class", "cat", "--out", tmp_path / "out")

    assert result.exit_code == 2
    assert result.stderr == (
        "Error: class name 'cat' is ambiguous: oystercatcher (143), tiger cat (282), "
        "Persian cat (283), Siamese cat (284), Egyptian cat (285), polecat (358), "
        "Madagascar cat (383), catamaran (484)\n"
    )


@pytest.mark.parametrize("top_k", [1, 3, 6])
def test_top_k_classes_are_rendered_with_a_contact_sheet(tiny, tmp_path: Path, top_k: int) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"

    result = run_tiny(photo, "--top-k", top_k, "--out", out, "-s", "48")

    assert result.exit_code == 0, result.output
    overlays = sorted(out.glob("photo_*_*.png"))
    overlays = [p for p in overlays if p.name != "photo_sheet.png"]
    assert len(overlays) == top_k
    record = json.loads((out / "photo.json").read_text(encoding="utf-8"))
    assert len(record["classes"]) == len(record["top_k"]) == top_k
    assert [c["index"] for c in record["classes"]] == [r["index"] for r in record["top_k"]]
    names = {f"photo_{c['index']}_{slug(c['name'])}.png" for c in record["classes"]}
    assert names == {c["overlay"] for c in record["classes"]} == {p.name for p in overlays}
    sheet = out / "photo_sheet.png"
    assert sheet.is_file() == (top_k > 1)
    if top_k > 1:
        assert image_size(sheet)[0] > 48


def test_folder_structure_is_mirrored(tiny, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    save_photo(photos / "a" / "x.jpg", seed=1)
    save_photo(photos / "b" / "x.jpg", seed=2)
    save_photo(photos / "b" / "deep" / "y.png", seed=3)
    save_photo(photos / "top.png", seed=4)
    (photos / "notes.txt").write_text("not an image", encoding="utf-8")
    loose = save_photo(tmp_path / "elsewhere" / "loose.png", seed=5)
    out = tmp_path / "out"

    result = run_tiny(photos, loose, "--class", "1", "--out", out, "-s", "48")

    assert result.exit_code == 0, result.output
    for stem in ("a/x", "b/x", "b/deep/y", "top", "loose"):
        assert output_files(out) >= {f"{stem}.json", f"{stem}.npz", f"{stem}_1_cat.png"}
    assert len(output_files(out)) == 15
    # The two x.jpg are different photos and keep their own results.
    with np.load(out / "a" / "x.npz") as a, np.load(out / "b" / "x.npz") as b:
        assert not np.allclose(a["logits"], b["logits"])
    assert json.loads((out / "b" / "x.json").read_text(encoding="utf-8"))["image"] == str(
        photos / "b" / "x.jpg"
    )
    match = summary(result)
    assert match.group(1, 2) == ("5", "0")
    assert match.group(6) == str(out)


def test_output_folder_inside_the_input_folder_is_not_read_back(tiny, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    save_photo(photos / "x.png")
    out = photos / "maps"

    first = run_tiny(photos, "--out", out, "-s", "48", "-k", "1")
    second = run_tiny(photos, "--out", out, "-s", "48", "-k", "1")

    assert first.exit_code == second.exit_code == 0
    assert summary(second).group(1, 2) == ("1", "0")
    assert not (out / "maps").exists()


def test_conversion_notes_are_shown_but_unrelated_warnings_are_not(
    serve_model, tmp_path: Path
) -> None:
    # NoisyNet warns while it is traced, which is during conversion: its UserWarning is a note
    # about the model; the other categories are not about it and stay out of the output.
    serve_model("noisy", lambda: tiny_model(NoisyNet))
    photo = save_photo(tmp_path / "photo.png")

    result = run(photo, "--out", tmp_path / "out", "-s", "48", "-k", "1", "--model", "noisy")

    assert result.exit_code == 0, result.output
    notes = [line for line in stderr_lines(result) if line.startswith("Note:")]
    assert notes == ["Note: NoisyNet has global pooling inside its body"]


def test_double_quiet_prints_nothing_on_success(tiny, tmp_path: Path) -> None:
    save_photo(tmp_path / "photos" / "a.png")
    save_photo(tmp_path / "photos" / "b.png")

    result = run_tiny(tmp_path / "photos", "--out", tmp_path / "out", "-qq", "-s", "48")

    assert result.exit_code == 0
    assert result.stderr == ""
    assert result.stdout == ""


def test_no_images_is_a_usage_error(tiny, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    result = run_tiny(tmp_path / "empty", "--out", tmp_path / "out")

    assert result.exit_code == 2
    assert result.stderr.endswith("Error: no images found in the given inputs\n")


def test_missing_input_is_a_usage_error(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    missing = tmp_path / "missing.jpg"

    result = run_tiny(photo, missing, "--out", tmp_path / "out")

    assert result.exit_code == 2
    assert result.stderr.endswith(f"Error: {missing}: no such file or directory\n")
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or output_files(tmp_path / "out") == set()


# ---------------------------------------------------------------------------------------------
# Issue 7: bad input never crashes a batch
# ---------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with almost no data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def make_mixed_folder(folder: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """Readable images of every kind, and broken files.

    Returns:
        ``{relative name: displayed (width, height)}`` of the readable images and
        ``{relative name: reason}`` of the broken ones.
    """
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    good: dict[str, tuple[int, int]] = {}

    def add(name: str, image: Image.Image, displayed: tuple[int, int], **options: object) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name, **options)
        good[name] = displayed

    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    add("grey.png", rgb.convert("L"), (56, 40))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)))
    add("alpha.png", rgba, (56, 40))
    add("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), (56, 40))
    add("print.jpg", Image.new("CMYK", (50, 44), (0, 128, 255, 30)), (50, 44))
    deep = np.linspace(0, 65535, 44 * 52).astype(np.uint16).reshape(44, 52)
    add("deep.png", Image.fromarray(deep), (52, 44))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    add("rotated.jpg", Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8)), (40, 64),
        exif=exif)  # fmt: skip
    frames = [Image.new("RGB", (48, 36), color) for color in ("red", "green", "blue")]
    add("moving.gif", frames[0], (48, 36), save_all=True, append_images=frames[1:], duration=50)
    add("tiny.png", rgb.resize((20, 12)), (20, 12))
    add("sub/café_日本.png", rgb, (56, 40))

    broken = {
        "empty.jpg": "empty file",
        "text.jpg": "not an image (unrecognized format)",
        "cut.jpg": "truncated or corrupt image data",
        "bomb.png": "image has 40000 x 40000 = 1600000000 pixels, above the limit of 89478485; "
        "raise it with --max-pixels",
        "locked.png": "permission denied",
    }
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a photo\n", encoding="utf-8")
    full = folder / "whole.tmpjpg"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, format="JPEG")
    data = full.read_bytes()
    full.unlink()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "bomb.png").write_bytes(png_claiming(40000, 40000))
    rgb.save(folder / "locked.png")

    # The files really are what their names say.
    kinds = {"grey.png": "L", "alpha.png": "RGBA", "palette.png": "P", "print.jpg": "CMYK"}
    for name, mode in kinds.items():
        with Image.open(folder / name) as image:
            assert image.mode == mode, name
    with Image.open(folder / "deep.png") as image:
        assert image.mode.startswith("I"), image.mode  # 16 bits per sample
    with Image.open(folder / "moving.gif") as image:
        assert image.n_frames == 3
    with Image.open(folder / "rotated.jpg") as image:
        assert image.size == (64, 40) and image.getexif()[0x0112] == 6
    return good, broken


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files named locked.* cannot be opened (tests run as root, so chmod would not do)."""
    real_open = Path.open

    def guarded_open(self: Path, *args: object, **kwargs: object):
        if self.name.startswith("locked."):
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)


def test_bad_inputs_never_stop_a_batch(tiny, unreadable, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    good, broken = make_mixed_folder(photos)
    out = tmp_path / "out"

    result = run_tiny(photos, "--out", out, "-s", "48", "-k", "2")

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = stderr_lines(result)
    for name, (width, height) in good.items():
        stem = name.rsplit(".", 1)[0]
        assert complete_outputs(out, stem), name
        record = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        assert record["original_size"] == {"width": width, "height": height}, name
        for entry in record["classes"]:
            overlay = (out / stem).parent / entry["overlay"]
            assert image_size(overlay) == (width, height), name
        assert not [line for line in lines if line.startswith("Error:") and name in line]
    for name, reason in broken.items():
        assert [line for line in lines if name in line] == [f"Error: {photos / name}: {reason}"]
        stem = name.rsplit(".", 1)[0]
        assert not [f for f in output_files(out) if Path(f).name.startswith(stem)], name
    assert summary(result).group(1, 2) == (str(len(good)), str(len(broken)))
    # Only the image smaller than the window gets a warning, on one line.
    warnings = [line for line in lines if line.startswith("Warning:")]
    assert warnings == [
        f"Warning: {photos / 'tiny.png'}: 20x12 is smaller than the network's 32x32 window; "
        "upscaled, so its scores are less reliable"
    ]
    assert not [f for f in output_files(out) if f.endswith(".tmp")]


def test_bad_input_with_debug_shows_the_traceback(tiny, tmp_path: Path) -> None:
    (tmp_path / "text.jpg").write_text("not a photo", encoding="utf-8")

    plain = run_tiny(tmp_path / "text.jpg", "--out", tmp_path / "out")
    debug = run_tiny(tmp_path / "text.jpg", "--out", tmp_path / "out", "--debug")

    assert plain.exit_code == 1
    assert "Traceback" not in plain.output
    assert plain.stderr.startswith(
        f"Error: {tmp_path / 'text.jpg'}: not an image (unrecognized format)\n"
    )
    # With --debug the exception escapes to Python, which prints the traceback.
    assert isinstance(debug.exception, ImageReadError)
    assert debug.exc_info is not None and debug.exc_info[2] is not None


def test_usage_error_with_debug_shows_the_traceback(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")

    result = run_tiny(photo, "--out", tmp_path / "out", "--class", "dog", "--debug")

    assert isinstance(result.exception, UnknownClassError)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--stride", "3"],
            "stride 3 does not divide the network's native stride 8; valid strides: 8, 4, 2, 1",
        ),
        (["--size", "0"], "Invalid value for '-s' / '--size': must be positive, got 0"),
        (["--size", "-5"], "Invalid value for '-s' / '--size': must be positive, got -5"),
        (["--stride", "0"], "Invalid value for '--stride': must be positive, got 0"),
        (["--top-k", "0"], "Invalid value for '-k' / '--top-k': must be positive, got 0"),
        (["-b", "0"], "Invalid value for '-b' / '--batch-size': must be positive, got 0"),
        (["--max-pixels", "0"], "Invalid value for '--max-pixels': must be positive, got 0"),
        (["--alpha", "2"], "Invalid value for '--alpha': 2.0 is not in the range 0<=x<=1."),
        (
            ["--method", "fast"],
            "Invalid value for '--method': 'fast' is not one of "
            "'auto', 'dense', 'stitch', 'dilate', 'crops', 'refine'.",  # auto, then grid.METHODS
        ),
    ],
)
def test_bad_options_are_usage_errors(tiny, tmp_path: Path, options: list[str], message: str):
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"

    result = run_tiny(photo, "--out", out, *options)

    assert result.exit_code == 2
    assert result.stderr.endswith(f"Error: {message}\n")
    assert "Traceback" not in result.output
    assert not out.exists() or output_files(out) == set()


def test_bad_colormap_is_a_usage_error(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")

    result = run_tiny(photo, "--out", tmp_path / "out", "--cmap", "infern")

    assert result.exit_code == 2
    assert result.stderr.startswith("Error: unknown colormap 'infern'; did you mean inferno")
    assert tiny == []  # refused before any model is loaded


def test_unknown_model_is_a_usage_error_with_a_suggestion(tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")

    result = run(photo, "--out", tmp_path / "out", "--model", "resnet5O")

    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Unknown model 'resnet5O'. Did you mean resnet50")
    assert "heatmap --list-models" in result.stderr
    assert result.stderr.count("\n") == 1


def test_garbage_weights_file_is_named(tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    weights = tmp_path / "garbage.pth"
    weights.write_bytes(b"these are not weights")

    result = run(photo, "--out", tmp_path / "out", "--weights", weights)

    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {weights}: cannot be read")
    assert result.stderr.count("\n") == 1


def test_wrong_architecture_weights_file_is_named(tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    weights = tmp_path / "tiny.pth"
    torch.save(TinyNet(10).state_dict(), weights)

    result = run(photo, "--out", tmp_path / "out", "--weights", weights)

    assert result.exit_code == 2
    assert result.stderr.startswith(
        f"Error: {weights}: does not fit efficientnet_lite0 (tf_efficientnet_lite0)"
    )
    assert result.stderr.count("\n") == 1


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    weights = tmp_path / "nothing.pth"

    result = run(photo, "--out", tmp_path / "out", "--weights", weights)

    assert result.exit_code == 2
    assert result.stderr == f"Error: {weights}: no such file.\n"


def test_output_folder_that_cannot_be_created(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder", encoding="utf-8")

    below = run_tiny(photo, "--out", blocker / "maps")
    onto = run_tiny(photo, "--out", blocker)

    assert below.exit_code == onto.exit_code == 2
    assert below.stderr.endswith(
        f"Error: Invalid value for --out: cannot create {blocker / 'maps'}: Not a directory\n"
    )
    assert onto.stderr.endswith(
        f"Error: Invalid value for '-o' / '--out': Directory '{blocker}' is a file.\n"
    )
    assert tiny == []


def test_exit_status_is_zero_when_all_succeed(tiny, tmp_path: Path) -> None:
    for i in range(3):
        save_photo(tmp_path / "photos" / f"p{i}.png", size=(40 + 8 * i, 36), seed=i)

    result = run_tiny(tmp_path / "photos", "--out", tmp_path / "out", "-s", "40", "-k", "1")

    assert result.exit_code == 0
    assert summary(result).group(1, 2) == ("3", "0")
    assert not [line for line in stderr_lines(result) if line.startswith(("Error", "Warning"))]


# ---------------------------------------------------------------------------------------------
# Atomic outputs, interruption and --skip-existing
# ---------------------------------------------------------------------------------------------


def test_interrupt_leaves_only_complete_images_and_skip_existing_resumes(
    tiny, interrupt_on_commit, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    for name in ("a", "b", "c"):
        save_photo(photos / f"{name}.png", seed=ord(name))
    out = tmp_path / "out"

    # Ctrl-C while b.npz is being written: a's files are done, b's overlays are written.
    interrupt_on_commit("b.npz")
    first = run_tiny(photos, "--out", out, "-s", "48", "-k", "2")
    interrupt_on_commit(None)

    assert first.exit_code == 130
    assert "Traceback" not in first.output
    assert stderr_lines(first)[-1] == (
        "Interrupted: 1 done, 0 failed, 2 not finished; "
        "run again with --skip-existing to finish the rest"
    )
    a_classes = json.loads((out / "a.json").read_text(encoding="utf-8"))["classes"]
    a_files = {"a.json", "a.npz", "a_sheet.png"} | {c["overlay"] for c in a_classes}
    assert len(a_files) == 5
    # Nothing of b survives (no overlay without its json), and no temporary file is left.
    assert output_files(out) == a_files
    written = {name: (out / name).stat().st_mtime_ns for name in a_files}

    # a is done, so a resumed run must not even read it: a broken a.png would fail the run.
    (photos / "a.png").write_bytes(b"no longer a photo")
    second = run_tiny(photos, "--out", out, "-s", "48", "-k", "2", "--skip-existing")

    assert second.exit_code == 0, second.output
    assert summary(second).group(1, 2, 3) == ("2", "0", "1")
    assert {name: (out / name).stat().st_mtime_ns for name in a_files} == written
    for stem in "abc":
        assert complete_outputs(out, stem)
    assert not [f for f in output_files(out) if f.endswith(".tmp")]


def test_an_interrupted_rewrite_leaves_the_earlier_outputs_as_they_were(
    tiny, interrupt_on_commit, tmp_path: Path
) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert run_tiny(photo, "--out", out, "-s", "48", "-k", "2").exit_code == 0
    before = {name: (out / name).read_bytes() for name in output_files(out)}

    interrupt_on_commit("photo.npz")  # the new files are written privately, then moved
    result = run_tiny(photo, "--out", out, "-s", "48", "--class", "4")
    interrupt_on_commit(None)

    assert result.exit_code == 130
    # Nothing was moved into place: the earlier outputs are whole, and say which options made
    # them, so --skip-existing redoes the image for the new options and keeps it for the old.
    assert {name: (out / name).read_bytes() for name in output_files(out)} == before
    new = run_tiny(photo, "--out", out, "-s", "48", "--class", "4", "--skip-existing")
    assert summary(new).group(1, 2) == ("1", "0")
    assert (out / "photo_4_espresso.png").exists()


def test_output_write_failure_is_reported_per_image(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    save_photo(photos / "a.png", seed=1)
    save_photo(photos / "b.png", seed=2)
    out = tmp_path / "out"
    (out / "b.npz").mkdir(parents=True)  # a folder where b's npz should go

    result = run_tiny(photos, "--out", out, "-s", "48", "-k", "1")

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [line for line in stderr_lines(result) if line.startswith("Error:")]
    assert errors == [f"Error: {photos / 'b.png'}: cannot write {out / 'b.npz'}: is a directory"]
    assert complete_outputs(out, "a")
    assert not (out / "b.json").exists()
    assert summary(result).group(1, 2) == ("1", "1")


def test_stale_temporaries_are_removed_at_start(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    stale = out / f".photo.json.{os.getpid()}-0123abcd.tmp"
    stale.parent.mkdir()
    stale.write_text("{", encoding="utf-8")
    os.utime(stale, (0, 0))

    result = run_tiny(photo, "--out", out, "-s", "48", "-k", "1")

    assert result.exit_code == 0
    assert not stale.exists()


# --- Multi-scale and flip (issue 8) ------------------------------------------------------------


def test_single_scale_without_flip_equals_the_plain_run(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    common = ("--size", "64", "-c", "2", "--method", "dense")  # auto's choice follows time
    plain = run_tiny(photo, "--out", tmp_path / "plain", *common)
    scaled = run_tiny(photo, "--out", tmp_path / "scaled", *common, "--scales", "1")
    assert plain.exit_code == scaled.exit_code == 0, scaled.output
    a = np.load(tmp_path / "plain" / "photo.npz")
    b = np.load(tmp_path / "scaled" / "photo.npz")
    np.testing.assert_array_equal(a["logits"], b["logits"])
    np.testing.assert_array_equal(a["centers"], b["centers"])
    record = json.loads((tmp_path / "scaled" / "photo.json").read_text(encoding="utf-8"))
    assert record["multiscale"]["scales"] == [1.0]
    assert record["multiscale"]["flip"] is False


def test_plain_run_and_scales_1_take_one_path_and_write_identical_files(
    tiny, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    for i, size in enumerate([(90, 60), (90, 60), (70, 80)]):
        save_photo(photos / f"{i}.png", size=size, seed=i)
    # a method asked for: auto's choice follows the run's measured time, so may differ
    common = ("--size", "64", "-k", "2", "--method", "dense")
    plain = run_tiny(photos, "--out", tmp_path / "plain", *common)
    scaled = run_tiny(photos, "--out", tmp_path / "scaled", *common, "--scales", "1")

    assert plain.exit_code == scaled.exit_code == 0, scaled.output
    files = output_files(tmp_path / "plain")
    assert files == output_files(tmp_path / "scaled")
    assert len(files) == 3 * 5  # json, npz, sheet and two overlays each
    for name in files:
        a, b = (tmp_path / run / name for run in ("plain", "scaled"))
        assert a.read_bytes() == b.read_bytes(), name
    # Both print the same one-line ranking per image: one pass has no per-pass table.
    assert sorted(plain.stdout.splitlines()) == sorted(scaled.stdout.splitlines())
    assert all(len(line.split(": ", 1)[1].split(", ")) == 2 for line in plain.stdout.splitlines())


@pytest.mark.parametrize("scales", [[], ["--scales", "1,1.5", "--flip"]], ids=["plain", "scales"])
def test_unexpected_error_preparing_one_image_fails_only_that_image(
    tiny, crashing_open, tmp_path: Path, scales: list[str]
) -> None:
    photos = tmp_path / "photos"
    for name in ("a", "crash", "b"):
        save_photo(photos / f"{name}.png", size=(90, 60), seed=len(name))
    save_photo(photos / "small.png", size=(20, 12))
    out = tmp_path / "out"

    result = run_tiny(photos, "--out", out, "--size", "64", "-k", "1", *scales)

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = stderr_lines(result)
    assert [line for line in lines if line.startswith("Error:")] == [
        f"Error: {photos / 'crash.png'}: unexpected RuntimeError: decoder crashed "
        "(--debug shows the traceback)"
    ]
    # The small-image warning is given in every kind of run.
    assert [line for line in lines if line.startswith("Warning:")] == [
        f"Warning: {photos / 'small.png'}: 20x12 is smaller than the network's 32x32 window; "
        "upscaled, so its scores are less reliable"
    ]
    for stem in ("a", "b", "small"):
        assert complete_outputs(out, stem), stem
    assert not [f for f in output_files(out) if f.startswith("crash")]
    assert summary(result).group(1, 2) == ("3", "1")


def test_json_says_whether_and_how_the_image_was_tiled(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(300, 200))

    def record(out: str, *options: object) -> dict:
        result = run_tiny(photo, "--out", tmp_path / out, "--size", "200", "-c", "1", *options)
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / out / "photo.json").read_text(encoding="utf-8"))

    whole = record("whole")
    assert whole["tiling"] == {"tiled": False, "tile": None, "tiles": 1}
    assert [p["tiling"] for p in whole["multiscale"]["passes"]] == [whole["tiling"]]

    tiled = record("tiled", "--tile", "72")
    assert tiled["tiling"]["tiled"] is True
    assert tiled["tiling"]["tile"] == 72
    assert tiled["tiling"]["tiles"] > 1
    assert [p["tiling"] for p in tiled["multiscale"]["passes"]] == [tiled["tiling"]]

    # With several passes each says how it ran (at 0.2x the image fits in one tile), and the
    # total counts every tile.
    several = record("several", "--tile", "72", "--scales", "1,0.2", "--flip")
    passes = several["multiscale"]["passes"]
    assert [p["tiling"] for p in passes] == [tiled["tiling"]] * 2 + [whole["tiling"]] * 2
    assert several["tiling"] == {
        "tiled": True,
        "tile": 72,
        "tiles": 2 * tiled["tiling"]["tiles"] + 2,
    }


def test_overlays_carry_the_photos_colour_profile(tiny, tmp_path: Path) -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photos = tmp_path / "photos"
    save_photo(photos / "tagged.png", icc_profile=profile)
    save_photo(photos / "plain.png")
    out = tmp_path / "out"

    result = run_tiny(photos, "--out", out, "-s", "48", "-k", "2")

    assert result.exit_code == 0, result.output
    tagged = [f for f in output_files(out) if f.startswith("tagged") and f.endswith(".png")]
    plain = [f for f in output_files(out) if f.startswith("plain") and f.endswith(".png")]
    assert len(tagged) == len(plain) == 3  # two overlays and the sheet
    for name in tagged:
        with Image.open(out / name) as image:
            assert image.info.get("icc_profile") == profile, name
    for name in plain:
        with Image.open(out / name) as image:
            assert "icc_profile" not in image.info, name


def test_scales_and_flip_are_recorded_and_ranked(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    out = tmp_path / "out"
    result = run_tiny(photo, "--out", out, "--size", "64", "--scales", "1,1.5", "--flip", "-k", "2")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "photo.json").read_text(encoding="utf-8"))
    passes = record["multiscale"]["passes"]
    assert [(p["scale"], p["flip"]) for p in passes] == [
        (1.0, False),
        (1.0, True),
        (1.5, False),
        (1.5, True),
    ]
    assert len(record["top_k"]) == 2
    assert record["top_k_pooling"] == "max"
    # the averaged grid stays on the first scale's geometry, as the npz says
    arrays = np.load(out / "photo.npz")
    assert tuple(arrays["input_size"]) == (64, 96)
    np.testing.assert_allclose(arrays["probs"].sum(axis=0), 1, rtol=1e-5)
    # and the compact ranking table reaches stdout
    assert "photo.png:" in result.stdout
    assert CATEGORIES[record["top_k"][0]["index"]] in result.stdout


def test_mean_pooling_ranks_by_spatial_mean(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(90, 60))
    out = tmp_path / "out"
    result = run_tiny(photo, "--out", out, "--size", "64", "--pooling", "mean", "-k", "6")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "photo.json").read_text(encoding="utf-8"))
    probs = np.load(out / "photo.npz")["probs"]
    expected = probs.reshape(len(CATEGORIES), -1).mean(axis=1)
    assert record["top_k_pooling"] == "mean"
    assert [r["index"] for r in record["top_k"]] == list(np.argsort(-expected, kind="stable"))
    assert [r["score"] for r in record["top_k"]] == pytest.approx(sorted(expected, reverse=True))


def test_bad_scales_are_a_usage_error(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    result = run_tiny(photo, "--out", tmp_path / "out", "--scales", "1,x")
    assert result.exit_code == 2
    assert "Error: Invalid value for --scales: scale 'x' is not a number" in result.stderr


# --- Tiling (issue 6) --------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [48, 72, 100])
def test_tiled_run_equals_the_untiled_run(tiny, tmp_path: Path, tile: int) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(300, 200))
    whole = run_tiny(photo, "--out", tmp_path / "whole", "--size", "200", "-c", "1")
    tiled = run_tiny(photo, "--out", tmp_path / "tiled", "--size", "200", "-c", "1", "--tile", tile)
    assert whole.exit_code == tiled.exit_code == 0, tiled.output
    a = np.load(tmp_path / "whole" / "photo.npz")["logits"]
    b = np.load(tmp_path / "tiled" / "photo.npz")["logits"]
    assert a.shape == b.shape == (6, 22, 35)  # 200 -> 32 + 8*21; 300 -> 304 = 32 + 8*34
    assert np.abs(a - b).max() <= 1e-3 * (a.max() - a.min())


def test_memory_budget_too_small_for_one_pass_tiles_automatically(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(300, 200))
    whole = run_tiny(photo, "--out", tmp_path / "whole", "--size", "200", "-c", "1")
    tight = run_tiny(
        photo, "--out", tmp_path / "tight", "--size", "200", "-c", "1", "--memory-budget", "0.0003"
    )
    assert whole.exit_code == tight.exit_code == 0, tight.output
    a = np.load(tmp_path / "whole" / "photo.npz")["logits"]
    b = np.load(tmp_path / "tight" / "photo.npz")["logits"]
    assert np.abs(a - b).max() <= 1e-3 * (a.max() - a.min())


def test_too_small_tile_is_a_usage_error(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    result = run_tiny(photo, "--out", tmp_path / "out", "--tile", "16")
    assert result.exit_code == 2
    assert "Error: --tile 16 is too small for tiny: the minimum is 32 pixels" in result.stderr


@pytest.mark.parametrize("method", ["dilate", "stitch"])
def test_tiles_also_hold_at_a_finer_stride(tiny, tmp_path: Path, method: str) -> None:
    photo = save_photo(tmp_path / "photo.png", size=(300, 200))
    common = ("--size", "200", "-c", "1", "--stride", "4", "--method", method)
    whole = run_tiny(photo, "--out", tmp_path / "whole", *common)
    tiled = run_tiny(photo, "--out", tmp_path / "tiled", *common, "--tile", "64")
    assert whole.exit_code == tiled.exit_code == 0, tiled.output
    a = np.load(tmp_path / "whole" / "photo.npz")["logits"]
    b = np.load(tmp_path / "tiled" / "photo.npz")["logits"]
    assert a.shape == b.shape == (6, 43, 68)  # stride 4: 200 = 32 + 4*42, 300 = 32 + 4*67
    assert np.abs(a - b).max() <= 1e-3 * (a.max() - a.min())


# --- torch.compile (issue 5) -------------------------------------------------------------------


def test_compiled_run_equals_the_plain_run(tiny, tmp_path: Path) -> None:
    photos = [save_photo(tmp_path / "in" / f"{i}.png", size=(90, 60), seed=i) for i in range(2)]
    plain = run_tiny(tmp_path / "in", "--out", tmp_path / "plain", "--size", "64", "-c", "2")
    compiled = run_tiny(
        tmp_path / "in", "--out", tmp_path / "compiled", "--size", "64", "-c", "2", "--compile"
    )
    assert plain.exit_code == compiled.exit_code == 0, compiled.output
    for photo in photos:
        a = np.load(tmp_path / "plain" / f"{photo.stem}.npz")["logits"]
        b = np.load(tmp_path / "compiled" / f"{photo.stem}.npz")["logits"]
        assert np.abs(a - b).max() <= 1e-4 * (a.max() - a.min())
    # where inductor cannot compile here, the run falls back and says so; otherwise no note
    notes = [line for line in stderr_lines(compiled) if line.startswith("Note:")]
    assert all("--compile failed" in note for note in notes)


def test_a_failing_compile_falls_back_with_one_note(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []

    def broken_compile(module: nn.Module, **kwargs: object):
        def compiled(x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found\ndetails")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    for i in range(3):  # two sizes: the fallback must hold for the later batches too
        save_photo(tmp_path / "in" / f"{i}.png", size=(90 + 30 * (i % 2), 60), seed=i)
    plain = run_tiny(tmp_path / "in", "--out", tmp_path / "plain", "--size", "64", "-c", "2")
    compiled = run_tiny(
        tmp_path / "in", "--out", tmp_path / "compiled", "--size", "64", "-c", "2", "--compile"
    )
    assert plain.exit_code == compiled.exit_code == 0, compiled.output
    assert len(calls) == 1
    assert calls[0][0] == 8  # a short batch is padded to --batch-size: one compilation per size
    notes = [line for line in stderr_lines(compiled) if line.startswith("Note:")]
    assert notes == [
        "Note: --compile failed (RuntimeError: InvalidCxxCompiler: no working C++ compiler "
        "found); running the network uncompiled"
    ]
    for i in range(3):
        a = np.load(tmp_path / "plain" / f"{i}.npz")["logits"]
        np.testing.assert_array_equal(a, np.load(tmp_path / "compiled" / f"{i}.npz")["logits"])


class _Exited(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def test_the_console_script_ends_with_the_commands_status_and_flushed_streams(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import sys

    from heatmap_cli.cli.options import run

    def exited(status: int) -> None:
        raise _Exited(status)

    monkeypatch.setattr(os, "_exit", exited)
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    for args, status in ((["--help"], 0), (["--no-such-option"], 2), (["missing.jpg"], 2)):
        with pytest.raises(_Exited) as ended:
            run(args)
        assert ended.value.status == status, args
    assert "Usage: heatmap" in capsys.readouterr().out


def test_the_console_script_exits_normally_where_ray_must_shut_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import sys
    import types

    from heatmap_cli.cli.options import run

    monkeypatch.setattr(os, "_exit", lambda status: pytest.fail("ended without Ray's handlers"))
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    with pytest.raises(SystemExit) as ended:
        run(["--no-such-option"])
    assert ended.value.code == 2
