"""Issue 25: round three of bad input, at the command.

Records that cannot be trusted (NaN or Infinity in an image's json or the manifest), a poisoned
tiling-figure cache, odd labels files, concurrent runs into one manifest, a model that returns
NaN, a redo that writes fewer files, what ``-q`` and ``-qq`` keep, a model that cannot be had
offline, and a checkpoint's training size. The library-level cases are next to their modules
(``tests/io/test_strict.py``, ``tests/io/test_figure_cache.py``,
``tests/models/test_checkpoints.py``); Ray's are in ``tests/cli/test_ray_keeper.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from heatmap_cli.cli.manifest import MANIFEST_NAME
from heatmap_cli.io.figure_cache import CACHE_DIR_ENV
from tests.helpers.cli import (
    CATEGORIES,
    WINDOW,
    TinyNet,
    output_files,
    run,
    run_tiny,
    save_photo,
    stderr_lines,
    summary,
)
from tests.helpers.toys import as_loaded

REPO = Path(__file__).resolve().parents[2]
NETS = REPO / "tests" / "helpers" / "nets.py"
CHILD_TIMEOUT_S = 300  # a safety net for hung children, not a measurement


def finished_within(seconds: float, call: Callable[[], object]) -> object:
    """``call()``'s result, failing the test if it is still running after ``seconds``."""
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s: it blocks"
    return outcome[0]


def photos(folder: Path, count: int = 2) -> list[Path]:
    return [save_photo(folder / f"p{i}.png", seed=i) for i in range(count)]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# 1. A record that cannot be trusted is treated like a damaged one
# ---------------------------------------------------------------------------------------------

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]


@pytest.mark.parametrize("number", NON_FINITE)
def test_a_non_finite_number_in_an_images_json_gets_it_redone(
    tiny, tmp_path: Path, number: str
) -> None:
    first, second = photos(tmp_path / "photos")
    out = tmp_path / "out"
    base = [tmp_path / "photos", "--out", out, "-s", "48", "--skip-existing"]
    assert run_tiny(*base).exit_code == 0
    damaged = out / "p0.json"
    text = damaged.read_text(encoding="utf-8")
    damaged.write_text(text.replace('"score": ', f'"score": {number}, "was": ', 1), "utf-8")

    result = run_tiny(*base)

    assert result.exit_code == 0, result.output
    assert f"Redoing {first}: its json holds NaN or Infinity, which JSON does not allow" in (
        stderr_lines(result)
    )
    assert summary(result).group(1, 2, 3) == ("1", "0", "1")
    assert "was" not in read_json(damaged)["top_k"][0]  # made again, strict JSON
    rows = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert {row["stem"]: row["status"] for row in rows} == {"p0": "done", "p1": "skipped"}
    assert str(second) not in result.stderr.replace("outputs in", "")


@pytest.mark.parametrize("number", NON_FINITE)
def test_a_report_leaves_out_a_json_with_a_non_finite_number_and_says_so(
    tiny, tmp_path: Path, number: str
) -> None:
    first, second = photos(tmp_path / "photos")
    out = tmp_path / "out"
    assert run_tiny(first, "--out", out, "-s", "48", "--report").exit_code == 0
    damaged = out / "p0.json"
    record = read_json(damaged)
    record["classes"][0]["peak"] = "PEAK"
    damaged.write_text(json.dumps(record).replace('"PEAK"', number), encoding="utf-8")
    report = out / "index.html"
    before = report.stat().st_mtime_ns

    result = run_tiny(second, "--out", out, "-s", "48", "--report")

    assert result.exit_code == 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    notes = [line for line in stderr_lines(result) if line.startswith("Note: the report")]
    assert notes == [
        "Note: the report leaves out 1 json file(s) that are damaged or hold NaN or Infinity "
        f"({damaged}); --skip-existing makes their images again"
    ]
    assert summary(result).group(1, 2) == ("1", "0")
    assert report.stat().st_mtime_ns != before
    assert "p1" in report.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "damage",
    [
        lambda row: row.replace('"score": ', '"score": NaN, "x": ', 1),
        lambda row: row.replace('"score": ', '"score": Infinity, "x": ', 1),
        lambda row: row.replace('"top_k": [', '"top_k": [1, ', 1),
        lambda row: row[: len(row) // 2],
    ],
    ids=["NaN", "Infinity", "top_k not objects", "torn"],
)
def test_a_manifest_row_that_cannot_be_trusted_is_dropped_with_one_line(
    tiny, tmp_path: Path, damage: Callable[[str], str]
) -> None:
    first, second = photos(tmp_path / "photos")
    out = tmp_path / "out"
    assert run_tiny(first, "--out", out, "-s", "48").exit_code == 0
    manifest = out / MANIFEST_NAME
    manifest.write_text(damage(manifest.read_text().strip()) + "\n", encoding="ascii")

    results = [run_tiny(second, "--out", out, "-s", "48") for _ in range(2)]

    for result in results:
        assert result.exit_code == 0, result.output
        assert summary(result).group(1, 2) == ("1", "0")
    notes = [line for line in stderr_lines(results[0]) if line.startswith("Note:")]
    assert notes == [
        f"Note: {manifest}: left out 1 line that is not a valid row (line 1: torn, edited, or "
        "holding NaN or Infinity, which JSON does not allow)"
    ]
    assert not any(line.startswith("Note:") for line in stderr_lines(results[1]))
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [row["stem"] for row in rows] == ["p1"]


# ---------------------------------------------------------------------------------------------
# 2. A damaged tiling-figure cache only costs time
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        '{"bytes_per_pixel": 1}',
        '{"classes": NaN, "bytes_per_pixel": 70}',
        '{"classes": Infinity, "bytes_per_pixel": 70}',
        '{"classes": 1e15, "bytes_per_pixel": 70}',
        None,
    ],
    ids=["no classes", "NaN", "infinite classes", "huge classes", "FIFO"],
)
def test_a_damaged_figure_cache_fails_no_image(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str | None
) -> None:
    if damage is None and not hasattr(os, "mkfifo"):
        pytest.skip("os.mkfifo does not exist on this platform (Windows): no FIFO to plant")
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    photo = save_photo(tmp_path / "photo.png")
    sound = run_tiny(photo, "--out", tmp_path / "sound", "-s", "48")
    assert sound.exit_code == 0
    (cached,) = (tmp_path / "cache").iterdir()
    cached.unlink()
    if damage is None:
        os.mkfifo(cached)
    else:
        cached.write_text(damage, encoding="utf-8")

    def damaged_runs() -> list:
        return [run_tiny(photo, "--out", tmp_path / f"run{i}", "-s", "48") for i in range(2)]

    results = finished_within(120, damaged_runs)

    for result in results:  # type: ignore[attr-defined]
        assert result.exit_code == 0, result.output
        assert summary(result).group(1, 2) == ("1", "0")
    assert cached.is_file()
    assert read_json(cached) == read_json(next((tmp_path / "cache").iterdir()))


# ---------------------------------------------------------------------------------------------
# 3-5. Labels files: line breaks, indices written twice or not plainly, what is not a file
# ---------------------------------------------------------------------------------------------


def labels_with(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


@pytest.mark.parametrize(
    ("name", "names", "said"),
    [
        (
            "labels.json",
            json.dumps(["a", "b", "two\nlines", "d", "e", "f"]),
            "line 1: the name of class 2 holds a line break (U+000A)",
        ),
        (
            "labels.json",
            json.dumps(["a", "b", "c", "d", "e", "f\r\ng"], indent=1),
            "line 7: the name of class 5 holds a line break (U+000D)",
        ),
        (
            "labels.txt",
            "a\nb\nc\u2028d\ne\nf\ng\n",
            "line 3 holds a line break inside its name (U+2028)",
        ),
        (
            "labels.txt",
            "a\nb\nc\nd\ne\nf\x85g\n",
            "line 6 holds a line break inside its name (U+0085)",
        ),
    ],
    ids=["JSON LF", "JSON CRLF", "txt U+2028", "txt NEL"],
)
def test_a_class_name_with_a_line_break_is_a_usage_error_naming_file_and_line(
    tiny, tmp_path: Path, name: str, names: str, said: str
) -> None:
    labels = labels_with(tmp_path / "labels", name, names)
    photo = save_photo(tmp_path / "photo.png")

    for label in ("auto", "none"):
        result = run_tiny(photo, "--out", tmp_path / "out", "--labels", labels, "--label", label)

        assert result.exit_code == 2, result.output
        assert stderr_lines(result) == [f"Error: {labels}: {said}; a class name is one line"]
        assert not (tmp_path / "out").exists()
    # NUL, a right-to-left mark, a tab or a very long name on one line are names like others
    odd = ["nul\x00x", "\u202eRTL", "tab\tx", "x" * 3000, "e", "f"]
    labels.write_text(json.dumps(odd) if name.endswith(".json") else "\n".join(odd), "utf-8")
    result = run_tiny(photo, "--out", tmp_path / "out", "--labels", labels, "-k", "6", "-s", "48")
    assert result.exit_code == 0, result.output


def test_a_model_whose_own_class_names_hold_line_breaks_is_drawn_safely(
    serve_model, tmp_path: Path
) -> None:
    names = ("back\nground", "cat\r", "tabby\x85cat", "tiger\u2028cat", "es\rpresso", "maker")
    serve_model(
        "odd", lambda: as_loaded(TinyNet(len(names)), window=(WINDOW, WINDOW), categories=names)
    )
    photo = save_photo(tmp_path / "photo.png")

    result = run(photo, "--out", tmp_path / "out", "-s", "48", "-k", "6", "--model", "odd")

    assert result.exit_code == 0, result.output
    assert len(read_json(tmp_path / "out" / "photo.json")["classes"]) == 6
    assert (tmp_path / "out" / "photo_sheet.png").is_file()


@pytest.mark.parametrize(
    ("keys", "said"),
    [
        (["0", "1", "2", "3", "4", "5", "+1"], "the key '+1' is not a class index"),
        (["0", "01", "2", "3", "4", "5"], "the key '01' is not a class index"),
        (["0", " 1", "2", "3", "4", "5"], "the key ' 1' is not a class index"),
    ],
    ids=["+1", "01", "space"],
)
def test_a_json_index_not_written_plainly_is_a_usage_error(
    tiny, tmp_path: Path, keys: list[str], said: str
) -> None:
    mapping = {key: f"name {number}" for number, key in enumerate(keys)}
    labels = labels_with(tmp_path / "labels", "labels.json", json.dumps(mapping))
    photo = save_photo(tmp_path / "photo.png")

    result = run_tiny(photo, "--out", tmp_path / "out", "--labels", labels)

    assert result.exit_code == 2, result.output
    assert stderr_lines(result) == [
        f"Error: {labels}: {said} (0, 1, 2... written plainly, each once)"
    ]


def test_a_json_index_named_twice_is_a_usage_error(tiny, tmp_path: Path) -> None:
    text = '{"0": "a", "1": "b", "2": "c", "3": "d", "4": "e", "5": "f", "1": "EVIL"}'
    labels = labels_with(tmp_path / "labels", "labels.json", text)

    result = run_tiny(
        save_photo(tmp_path / "photo.png"), "--out", tmp_path / "out", "--labels", labels
    )

    assert result.exit_code == 2, result.output
    assert stderr_lines(result) == [f"Error: {labels}: names the key '1' twice"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("kind", ["FIFO", "device"])
def test_labels_that_are_not_a_file_are_a_usage_error_at_once(
    tiny, tmp_path: Path, kind: str
) -> None:
    labels = Path("/dev/zero")
    if kind == "FIFO":
        labels = tmp_path / "labels.txt"
        os.mkfifo(labels)
    photo = save_photo(tmp_path / "photo.png")

    result = finished_within(
        60, lambda: run_tiny(photo, "--out", tmp_path / "out", "--labels", labels)
    )

    assert result.exit_code == 2, result.output  # type: ignore[attr-defined]
    what = "a FIFO" if kind == "FIFO" else "a device"
    assert stderr_lines(result) == [f"Error: {labels}: not a file ({what})"]  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# 6. Concurrent runs lose no manifest row
# ---------------------------------------------------------------------------------------------

# One writer of the manifest in a child process: it waits for the start signal (a file), then
# adds its rows and writes, with a delay between reading the manifest and renaming the new one
# (as a slow disk would have it), so that without a lock every writer overwrites the others.
_WRITER = """
import contextlib, os, sys, time
from pathlib import Path
import heatmap_cli.cli.manifest as manifest_module
from heatmap_cli.cli.manifest import Manifest, ManifestRow

out, name, start = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
real_writer = manifest_module.atomic_writer

@contextlib.contextmanager
def slow_writer(path, mode="wb"):
    time.sleep(0.3)
    with real_writer(path, mode) as file:
        yield file

manifest_module.atomic_writer = slow_writer
manifest = Manifest(out)
for index in range(3):
    manifest.add(ManifestRow.finished(Path(f"{name}-{index}.png"), Path(f"{name}-{index}"),
                                      "done", [{"index": 0, "name": "a", "score": 0.5}], []))
while not start.exists():
    time.sleep(0.01)
manifest.write()
"""


def test_many_concurrent_writers_lose_no_manifest_row(tmp_path: Path) -> None:
    out, start = tmp_path / "out", tmp_path / "start"
    out.mkdir()
    names = [f"run{i}" for i in range(12)]
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(out), name, str(start)], cwd=REPO)
        for name in names
    ]
    try:
        start.touch()
        assert [writer.wait(timeout=CHILD_TIMEOUT_S) for writer in writers] == [0] * len(names)
    finally:
        for writer in writers:
            writer.kill()
    rows = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    expected = sorted(f"{name}-{index}" for name in names for index in range(3))
    assert sorted(row["stem"] for row in rows) == expected
    assert output_files(out) == set()  # no lock file or temporary left in the folder


# ---------------------------------------------------------------------------------------------
# 8. A model that returns NaN or infinity
# ---------------------------------------------------------------------------------------------


class PoisonedNet(TinyNet):
    """TinyNet that turns bright pixels into ``value`` (NaN, infinity) before its body: the
    windows that hold one get non-finite scores, dark photos none."""

    def __init__(self, value: float) -> None:
        super().__init__(len(CATEGORIES))
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.where(x > 1.5, self.value, x))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores_fail_the_image_in_one_line(
    serve_model, tmp_path: Path, value: float
) -> None:
    serve_model(
        "poisoned",
        lambda: as_loaded(PoisonedNet(value), window=(WINDOW, WINDOW), categories=CATEGORIES),
    )
    bright = save_photo(tmp_path / "photos" / "bright.png")  # random pixels: some cells bright
    dark = tmp_path / "photos" / "dark.png"
    from PIL import Image

    Image.new("RGB", (48, 40), (0, 0, 0)).save(dark)
    out = tmp_path / "out"

    for scale in ("shared", "per-class", "absolute"):
        result = run(
            tmp_path / "photos", "--out", out, "-s", "48", "--model", "poisoned", "--scale", scale
        )

        assert result.exit_code == 1, result.output
        errors = [line for line in stderr_lines(result) if line.startswith("Error:")]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith(
            f"Error: {bright}: the model produced non-finite scores for this image: "
        )
        assert errors[0].endswith("; check the model and its weights")
        assert "vmin" not in result.stderr and "Traceback" not in result.stderr
        assert "1 done, 1 failed" in result.stderr  # the dark photo is done
        assert (out / "dark.json").is_file() and not (out / "bright.json").exists()


# ---------------------------------------------------------------------------------------------
# 9. A redo that writes fewer files removes the ones its previous json listed
# ---------------------------------------------------------------------------------------------


def test_a_redo_with_fewer_classes_removes_the_stale_overlays_and_nothing_else(
    tiny, tmp_path: Path
) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    base = [photo, "--out", out, "-s", "48", "--skip-existing"]
    assert run_tiny(*base, "-k", "3").exit_code == 0
    first = read_json(out / "photo.json")
    overlays = [entry["overlay"] for entry in first["classes"]]
    mine = out / "photo_notes.png"  # the user's own file, named like an output
    mine.write_bytes(b"mine")
    replaced = out / overlays[1]  # an output the user replaced since (another size)
    replaced.write_bytes(b"replaced by hand")

    result = run_tiny(*base, "-k", "1")

    assert result.exit_code == 0, result.output
    second = read_json(out / "photo.json")
    assert [entry["overlay"] for entry in second["classes"]] == overlays[:1]
    assert not (out / overlays[2]).exists()  # the tool's own stale overlay
    assert not (out / "photo_sheet.png").exists()  # one class: no sheet any more
    assert replaced.read_bytes() == b"replaced by hand"
    assert mine.read_bytes() == b"mine"
    listed = {entry["name"] for entry in second["files"]}
    assert output_files(out) == {*listed, "photo.json", mine.name, replaced.name}

    # a json that cannot be trusted names nothing to remove
    record = (out / "photo.json").read_text(encoding="utf-8")
    (out / "photo.json").write_text(record.replace('"score": ', '"score": NaN, "x": ', 1))
    before = output_files(out)
    assert run_tiny(*base, "-k", "1", "--outputs", "png,json").exit_code == 0
    assert before <= output_files(out)  # the npz it listed is kept


def test_a_redo_without_the_npz_removes_the_old_npz(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert run_tiny(photo, "--out", out, "-s", "48", "-k", "2").exit_code == 0

    result = run_tiny(photo, "--out", out, "-s", "48", "-k", "2", "--outputs", "png,json")

    assert result.exit_code == 0, result.output
    assert not (out / "photo.npz").exists()
    assert output_files(out) == {e["name"] for e in read_json(out / "photo.json")["files"]} | {
        "photo.json"
    }


# ---------------------------------------------------------------------------------------------
# 10. What -q and -qq keep
# ---------------------------------------------------------------------------------------------


def test_quiet_keeps_the_summary_warnings_and_redo_reasons(tiny, tmp_path: Path) -> None:
    first, second = (  # smaller than the window: a warning each
        save_photo(tmp_path / "photos" / f"p{i}.png", size=(30, 24), seed=i) for i in range(2)
    )
    out = tmp_path / "out"
    base = [tmp_path / "photos", "--out", out, "-s", "48", "--skip-existing"]
    assert run_tiny(*base, "-qq").exit_code == 0

    result = run_tiny(*base, "-q", "-k", "2")

    assert result.exit_code == 0
    assert result.stdout == ""  # no per-image result lines
    lines = stderr_lines(result)
    assert "%|" not in result.stderr  # no progress bar
    assert [line for line in lines if line.startswith("Redoing")] == [
        f"Redoing {photo}: settings changed: top_k 3 -> 2" for photo in (first, second)
    ]
    assert sum(line.startswith("Warning:") for line in lines) == 2  # smaller than the window
    assert summary(result).group(1, 2) == ("2", "0")

    silent = run_tiny(*base, "-qq", "-k", "1", "--report")  # errors only
    assert silent.exit_code == 0
    assert (silent.stdout, silent.stderr) == ("", "")
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    failed = run_tiny(*base, "--quiet", "--quiet", "-k", "1")
    assert failed.exit_code == 1
    lines = stderr_lines(failed)
    assert len(lines) == 2 and lines[0].startswith("Error: ")
    assert summary(failed).group(1, 2, 3) == ("0", "1", "2")


def test_help_says_what_quiet_keeps() -> None:
    result = run("--help")
    text = " ".join(result.stdout.split())
    assert (
        "-q, --quiet No progress bar or per-image result lines (notes, warnings and the "
        "summary stay); -qq: errors only."
    ) in text


# ---------------------------------------------------------------------------------------------
# 11. A model that cannot be had offline is a usage error, before any image is read
# ---------------------------------------------------------------------------------------------


def test_a_torchvision_model_without_cached_weights_exits_2_before_any_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    opened: list[str] = []
    real_open = Path.open

    def watched(self: Path, *args: object, **kwargs: object):
        if self.suffix == ".png":
            opened.append(self.name)
        return real_open(self, *args, **kwargs)

    photo = save_photo(tmp_path / "photo.png")
    monkeypatch.setattr(Path, "open", watched)

    result = run(photo, "--out", tmp_path / "out", "--model", "resnet18")

    assert result.exit_code == 2, result.output
    (line,) = stderr_lines(result)
    assert line.startswith("Error: Weights ResNet18_Weights.IMAGENET1K_V1 for resnet18 are not")
    assert "--weights FILE" in line
    assert not (tmp_path / "out").exists()
    assert opened == []


# ---------------------------------------------------------------------------------------------
# 12. A checkpoint's training size
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "not recorded"])
def test_a_checkpoint_says_its_size_or_the_assumed_window_is_said(
    tmp_path: Path, recorded: bool
) -> None:
    sys.path.insert(0, str(NETS.parent))
    try:
        from nets import PooledHeadNet, seeded  # the module the command imports by path
    finally:
        sys.path.remove(str(NETS.parent))
    weights = tmp_path / "trained.ckpt"
    checkpoint: dict[str, object] = {"state_dict": seeded(PooledHeadNet).state_dict()}
    if recorded:
        checkpoint["hyper_parameters"] = {"lr": 0.01, "img_size": 44}
    torch.save(checkpoint, weights)
    photo = save_photo(tmp_path / "photo.png", size=(240, 230))

    result = run(
        photo,
        "--out",
        tmp_path / "out",
        "--model",
        f"{NETS}:PooledHeadNet",
        "--weights",
        weights,
        "-s",
        "native",
    )

    assert result.exit_code == 0, result.output
    notes = [line for line in stderr_lines(result) if "input size" in line]
    size = read_json(tmp_path / "out" / "photo.json")["settings"]["input_size"]
    if recorded:
        assert notes == [
            f"Note: {weights}: input size 44x44, from its hyper_parameters['img_size']"
        ]
        assert size == {"width": 44, "height": 44}
    else:
        assert notes == [
            f"Note: {weights} records no input size; assuming 224x224 (set --input-size to the "
            "size it was trained at)"
        ]
        assert size == {"width": 224, "height": 224}
