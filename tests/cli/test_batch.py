"""Issue 18: a batch that never lies.

Limits on what is computed, truthful resume, ownership of files, discovery that never aborts,
output channels that are not images, Ctrl-C at any moment, options checked when parsed. What only
a real process shows (a memory cap, pipes, closed descriptors, SIGINT) runs the command in a
child process (``tests/cli_process.py``); the rest runs in-process on test_cli.py's tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap_cli.pipeline.limits import MAX_TOP_K
from tests.helpers.cli import (
    TinyNet,
    run,
    run_tiny,
    save_photo,
    stderr_lines,
    summary,
)
from tests.helpers.toys import as_loaded

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 120  # a safety net for a hung child, not a measurement


def complete(out: Path, stem: str) -> bool:
    """Whether an image is complete, by its own json: every file it names exists, sized as said."""
    folder, name = (out / stem).parent, Path(stem).name
    try:
        record = json.loads((folder / f"{name}.json").read_bytes())
    except (OSError, ValueError):
        return False
    named = [entry["overlay"] for entry in record["classes"]] + [f"{name}.npz"]
    sizes = {entry["name"]: entry["bytes"] for entry in record.get("files", [])}
    return all((folder / file).is_file() for file in named) and all(
        (folder / file).is_file() and (folder / file).stat().st_size == size
        for file, size in sizes.items()
    )


def child(*args: object, env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen:
    """Starts the command in a child process (``tests.helpers.cli_process``).

    The child serves the models ``tiny`` and ``slow``.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.cli_process", *map(str, args), "--device", "cpu"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        **popen,  # type: ignore[arg-type]
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    """Waits for a child; its exit status and standard error (if piped)."""
    _, err = process.communicate(timeout=CHILD_TIMEOUT_S)
    return process.returncode, (err or b"").decode("utf-8", "backslashreplace")


def save_strip(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Limits on what is computed
# ---------------------------------------------------------------------------------------------


def under_a_memory_cap(*args: object) -> tuple[int, str]:
    """The command on the tiny model, quiet, in a child that may allocate 2 GiB beyond its start."""
    process = child(
        *args,
        "--model",
        "tiny",
        "-q",
        stderr=subprocess.PIPE,
        env={"HEATMAP_TEST_MEMORY_GIB": "2"},
    )
    return finish(process)


def test_extreme_strips_are_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    thin = save_strip(photos / "thin.png", 1, 50000)  # 279 bytes; 384 x 19,200,000 planned
    wide = save_strip(photos / "wide.png", 20000, 40)
    save_photo(photos / "photo.png", size=(60, 50))
    out = tmp_path / "out"

    code, err = under_a_memory_cap(photos, "--out", out, "-k", "1")

    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 2, err
    for path, (width, height) in ((thin, (1, 50000)), (wide, (20000, 40))):
        [line] = [line for line in errors if str(path) in line]
        assert f"a {width}x{height} image needs a" in line
        assert "above the limit of 32:1 (--max-aspect raises it)" in line
    assert complete(out, "photo")
    assert "1 done, 2 failed" in err


def test_running_out_of_memory_names_the_image_and_what_to_lower(tmp_path: Path) -> None:
    thin = save_strip(tmp_path / "thin.png", 1, 50000)
    photo = save_photo(tmp_path / "photo.png", size=(60, 50))
    limits = ["--max-aspect", "100000", "--max-input-pixels", str(10**12)]  # both lifted

    code, err = under_a_memory_cap(thin, photo, "--out", tmp_path / "out", *limits)

    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert errors == [
        f"Error: {thin}: not enough memory to resize a 1x50000 image for the network; "
        "lower --size, --scales or --max-input-pixels"
    ]
    assert complete(tmp_path / "out", "photo")


def test_running_out_of_memory_while_rendering_says_what_to_lower(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import heatmap_cli.cli.writers

    photos = three_photos(tmp_path / "photos")
    real_render = heatmap_cli.cli.writers.render_overlay

    def render(result, *args, **kwargs):
        if result.item.path.name == "b.png":
            raise MemoryError
        return real_render(result, *args, **kwargs)

    monkeypatch.setattr(heatmap_cli.cli.writers, "render_overlay", render)
    result = run_tiny(photos, "--out", tmp_path / "out", "-s", "48")

    assert result.exit_code == 1
    assert [line for line in stderr_lines(result) if line.startswith("Error:")] == [
        f"Error: {photos / 'b.png'}: not enough memory to render and write its outputs; "
        "lower --max-overlay-side or --top-k"
    ]
    assert complete(tmp_path / "out", "a") and complete(tmp_path / "out", "c")
    assert not (tmp_path / "out" / "b.json").exists()


def test_the_pixel_limit_refuses_one_image_with_one_line(tiny, tmp_path: Path) -> None:
    square = save_photo(tmp_path / "photos" / "square.png", size=(40, 40))
    wide = save_photo(tmp_path / "photos" / "wide.png", size=(80, 40))
    out = tmp_path / "out"

    result = run_tiny(tmp_path / "photos", "--out", out, "-s", "40", "--max-input-pixels", "2000")

    assert result.exit_code == 1, result.output
    errors = [line for line in stderr_lines(result) if line.startswith("Error:")]
    assert errors == [
        f"Error: {wide}: a 80x40 image needs a 80x40 network input = 3,200 pixels, above the "
        "limit of 2,000 (--max-input-pixels raises it; a smaller --size lowers the input)"
    ]
    assert complete(out, "square") and str(square)
    assert summary(result).group(1, 2) == ("1", "1")


def test_a_size_no_image_could_fit_is_a_usage_error(tiny, tmp_path: Path) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"

    result = run_tiny(photo, "--out", out, "--size", "100000")

    assert result.exit_code == 2
    assert result.stderr == (
        "Error: --size 100000 gives every image a network input of at least "
        "100000x100000 = 10,000,000,000 pixels, above --max-input-pixels 67,108,864\n"
    )
    assert not out.exists()
    assert tiny == []  # refused before the model is loaded


# ---------------------------------------------------------------------------------------------
# Truthful resume
# ---------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_manifest(path: Path) -> None:
    record = json.loads(path.read_bytes())
    del record["settings"], record["files"]
    path.write_text(json.dumps(record), encoding="utf-8")


DAMAGE = {
    "empty json": (
        lambda out: (out / "b.json").write_bytes(b""),
        "its json is empty, truncated or not json",
    ),
    "truncated json": (
        lambda out: _truncate(out / "b.json"),
        "its json is empty, truncated or not json",
    ),
    "json of an older version": (
        lambda out: _drop_manifest(out / "b.json"),
        "its json records no settings (written by an older version)",
    ),
    "deleted overlay": (lambda out: (out / "b_1_cat.png").unlink(), "b_1_cat.png is missing"),
    "truncated npz": (
        lambda out: _truncate(out / "b.npz"),
        "b.npz has {size} bytes, its json says {recorded}",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_skip_existing_redoes_an_image_whose_outputs_are_not_complete(
    tiny, tmp_path: Path, damage: str
) -> None:
    photos = tmp_path / "photos"
    for name in "abc":
        save_photo(photos / f"{name}.png", seed=ord(name))
    out = tmp_path / "out"
    assert run_tiny(photos, "--out", out, "-s", "48", "-c", "1").exit_code == 0
    recorded = {e["name"]: e["bytes"] for e in json.loads((out / "b.json").read_bytes())["files"]}
    damage_outputs, reason = DAMAGE[damage]
    damage_outputs(out)
    reason = reason.format(size=(out / "b.npz").stat().st_size, recorded=recorded["b.npz"])
    untouched = {name: (out / name).stat().st_mtime_ns for name in ("a.json", "c.json")}

    result = run_tiny(photos, "--out", out, "-s", "48", "-c", "1", "--skip-existing")

    assert result.exit_code == 0, result.output
    assert [line for line in stderr_lines(result) if line.startswith("Redoing")] == [
        f"Redoing {photos / 'b.png'}: {reason}"
    ]
    assert summary(result).group(1, 2, 3) == ("1", "0", "2")
    assert complete(out, "b")
    assert {name: (out / name).stat().st_mtime_ns for name in untouched} == untouched


@pytest.mark.parametrize(
    ("options", "changed"),
    [
        (["--class", "4"], "classes [1] -> [4]"),
        (["--stride", "4"], "stride 8 -> 4"),  # auto both times: the method asked for
        (["--alpha", "0.75"], "alpha 0.5 -> 0.75"),
        (["--scales", "1,1.5"], "scales [1.0] -> [1.0, 1.5]"),
    ],
)
def test_skip_existing_redoes_an_image_made_with_other_options(
    tiny, tmp_path: Path, options: list[str], changed: str
) -> None:
    photo = save_photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    base = [photo, "--out", out, "-s", "48", "--skip-existing"]
    assert run_tiny(*base, "-c", "1").exit_code == 0
    new = ["-c", "1", *options] if options[0] != "--class" else options

    redone = run_tiny(*base, *new)
    again = run_tiny(*base, *new)

    assert redone.exit_code == again.exit_code == 0, redone.output
    assert f"Redoing {photo}: settings changed: {changed}" in stderr_lines(redone)
    assert summary(redone).group(1, 2) == ("1", "0")
    assert summary(again).group(1, 2, 3) == ("0", "0", "1")


# ---------------------------------------------------------------------------------------------
# Ownership of files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("moment", ["while writing", "while moving into place"])
def test_an_interrupted_run_never_deletes_what_a_concurrent_run_finished(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    photos = tmp_path / "photos"
    for name in "wxy":
        save_photo(photos / f"{name}.png", seed=ord(name))
    out = tmp_path / "out"
    command = [photos, "--out", out, "-s", "48", "-k", "2"]
    real_replace = os.replace
    other: list[object] = []

    def replace(source: object, destination: object) -> None:
        target = Path(str(destination))
        private = target.parent.name.startswith(".")
        wanted = private if moment == "while writing" else target.parent == out
        if target.name == "x.npz" and wanted and not other:
            # The other run starts and finishes every image, x included, right now.
            other.append(None)
            other[0] = run_tiny(*command)
            raise KeyboardInterrupt
        real_replace(source, destination)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    interrupted = run_tiny(*command)

    assert interrupted.exit_code == 130, interrupted.output
    assert other and other[0].exit_code == 0  # type: ignore[attr-defined]
    assert all(complete(out, stem) for stem in "wxy")
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no private leftovers


def test_temporaries_of_a_process_that_is_gone_are_removed_whatever_their_age(
    tiny, tmp_path: Path
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "out"
    dead_file = out / f".photo.json.{gone.pid}-0123abcd.tmp"
    dead_folder = out / "sub" / f".photo.{gone.pid}-89abcdef.tmp"
    live_file = out / ".photo.npz.1-0123abcd.tmp"  # pid 1 runs, and may be a concurrent run
    (dead_folder).mkdir(parents=True)
    (dead_folder / "photo.json").write_text("{", encoding="utf-8")
    for path in (dead_file, live_file):
        path.write_bytes(b"")

    result = run_tiny(save_photo(tmp_path / "photo.png"), "--out", out, "-s", "48")

    assert result.exit_code == 0
    assert not dead_file.exists() and not dead_folder.exists()
    assert live_file.exists()


# ---------------------------------------------------------------------------------------------
# Discovery that never aborts, names that are not UTF-8
# ---------------------------------------------------------------------------------------------


def save_bytes_named(folder: Path, name: bytes, seed: int = 0) -> Path:
    """A photo whose file name is the given bytes (not valid UTF-8 is the point)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    save_photo(path, seed=seed)
    return path


def test_a_link_loop_and_a_name_that_is_not_utf8_do_not_stop_a_folder(tiny, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    odd = save_bytes_named(photos, b"caf\xe9.png", seed=1)
    save_photo(photos / "plain.png", seed=2)
    (photos / "x").symlink_to("x")  # ln -s x photos/x
    out = tmp_path / "out"

    result = run_tiny(photos, "--out", out, "-s", "48", "-k", "1")

    assert result.exit_code == 1, result.output
    errors = [line for line in stderr_lines(result) if line.startswith("Error:")]
    assert errors == [f"Error: {photos / 'x'}: too many levels of symbolic links"]
    assert summary(result).group(1, 2) == ("2", "1")
    written = set(os.listdir(os.fsencode(out)))
    record_bytes = (out / os.fsdecode(b"caf\xe9.json")).read_bytes()
    record = json.loads(record_bytes)
    assert b"\\udce9" in record_bytes  # the name escaped: the json is valid UTF-8
    assert record["image"] == str(odd)
    assert {os.fsencode(entry["name"]) for entry in record["files"]} <= written
    assert b"caf\xe9.npz" in written and complete(out, os.fsdecode(b"caf\xe9"))
    assert complete(out, "plain")


def test_a_name_that_is_not_utf8_is_written_with_its_own_bytes(tiny, tmp_path: Path) -> None:
    odd = save_bytes_named(tmp_path, b"caf\xe9.png")

    result = run_tiny(odd, "--out", tmp_path / "out", "-s", "48", "-k", "1")

    assert result.exit_code == 0, result.output
    assert os.fsencode(odd) + b": " in result.stdout_bytes  # the ranking line names the file


def test_the_report_takes_a_name_that_is_not_utf8(tiny, tmp_path: Path) -> None:
    odd = save_bytes_named(tmp_path / "photos", b"caf\xe9.png")
    out = tmp_path / "out"

    result = run_tiny(odd.parent, "--out", out, "-s", "48", "-k", "1", "--report")

    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "caf\\udce9" in page  # the name, escaped in the page's json


def test_an_unreadable_input_named_on_the_command_line_is_one_line(tiny, tmp_path: Path) -> None:
    loop = tmp_path / "loop.jpg"
    loop.symlink_to("loop.jpg")
    photo = save_photo(tmp_path / "photo.png")

    result = run_tiny(loop, photo, "--out", tmp_path / "out", "-s", "48")

    assert result.exit_code == 1, result.output
    assert [line for line in stderr_lines(result) if line.startswith("Error:")] == [
        f"Error: {loop}: too many levels of symbolic links"
    ]
    assert summary(result).group(1, 2) == ("1", "1")


def test_a_folder_that_cannot_be_listed_is_one_line(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    save_photo(photos / "sub" / "hidden.png")
    save_photo(photos / "seen.png")
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if isinstance(path, str | Path) and Path(path) == photos / "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    result = run_tiny(photos, "--out", tmp_path / "out", "-s", "48")

    assert result.exit_code == 1, result.output
    assert [line for line in stderr_lines(result) if line.startswith("Error:")] == [
        f"Error: {photos / 'sub'}: cannot list folder: permission denied"
    ]
    assert complete(tmp_path / "out", "seen")


# ---------------------------------------------------------------------------------------------
# Output channels are not images
# ---------------------------------------------------------------------------------------------


def three_photos(folder: Path) -> Path:
    for name in "abc":
        save_photo(folder / f"{name}.png", seed=ord(name))
    return folder


def batch_of_three(tmp_path: Path, **popen: object) -> tuple[subprocess.Popen, Path]:
    """The command on three photos in a child process; the process and its output folder."""
    out = tmp_path / "out"
    photos = three_photos(tmp_path / "photos")
    return child(photos, "--out", out, "--model", "tiny", "-k", "1", **popen), out


def lines_of(stderr: str) -> list[str]:
    """Non-empty lines, progress-bar redraws split off."""
    return [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]


def test_a_broken_stdout_pipe_loses_lines_not_images(tmp_path: Path) -> None:
    process, out = batch_of_three(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # `| head -0`: every line meets a closed pipe
    code, err = finish(process)

    assert code == 0, err
    lines = lines_of(err)
    assert next(line for line in lines if " done, " in line).startswith("3 done, 0 failed")
    assert not [line for line in lines if line.startswith(("Error", "Note", "Exception"))]
    assert all(complete(out, stem) for stem in "abc")


def test_a_full_stdout_loses_lines_not_images(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        process, out = batch_of_three(tmp_path, stdout=full, stderr=subprocess.PIPE)
        code, err = finish(process)

    assert code == 0, err
    lines = lines_of(err)
    assert [line for line in lines if line.startswith(("Note", "Error"))] == [
        "Note: cannot write to standard output (no space left on device); going on"
    ]
    assert next(line for line in lines if " done, " in line).startswith("3 done, 0 failed")
    assert all(complete(out, stem) for stem in "abc")


def test_a_closed_stderr_does_not_stop_the_batch(tmp_path: Path) -> None:
    process, out = batch_of_three(
        tmp_path,
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.close(2),  # `2>&-`
    )
    output, _ = process.communicate(timeout=CHILD_TIMEOUT_S)

    assert process.returncode == 0
    assert output.decode().count(": class") == 3  # each image's ranking line
    assert all(complete(out, stem) for stem in "abc")
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


# ---------------------------------------------------------------------------------------------
# Ctrl-C at any moment
# ---------------------------------------------------------------------------------------------


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not path.exists():
        assert process.poll() is None, "the child ended early"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


INTERRUPTED = (
    "Interrupted: 0 done, 0 failed, 1 not finished; "
    "run again with --skip-existing to finish the rest"
)


def loading_slowly(tmp_path: Path, **env: str) -> subprocess.Popen:
    """The command on one photo, in a child whose model loads slowly (``helpers.cli_process``)."""
    photo = save_photo(tmp_path / "photo.png")
    return child(
        photo, "--out", tmp_path / "out", "--model", "slow", stderr=subprocess.PIPE, env=env
    )


def test_ctrl_c_while_the_model_loads_exits_130(tmp_path: Path) -> None:
    loading = tmp_path / "loading"
    process = loading_slowly(tmp_path, HEATMAP_TEST_LOADING=str(loading))

    wait_for(loading, process)
    process.send_signal(signal.SIGINT)
    code, err = finish(process)

    assert code == 130, err
    assert [line for line in err.splitlines() if line] == [INTERRUPTED]
    assert not (tmp_path / "out").exists()


def test_a_second_ctrl_c_exits_130_with_the_same_line(tmp_path: Path) -> None:
    loading, cleaning = tmp_path / "loading", tmp_path / "cleaning"
    process = loading_slowly(
        tmp_path, HEATMAP_TEST_LOADING=str(loading), HEATMAP_TEST_STUBBORN=str(cleaning)
    )

    wait_for(loading, process)
    process.send_signal(signal.SIGINT)
    wait_for(cleaning, process)  # the first Ctrl-C is being handled, slowly
    process.send_signal(signal.SIGINT)
    code, err = finish(process)

    assert code == 130, err
    assert [line for line in err.splitlines() if line] == [INTERRUPTED]


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--alpha", "nan"], "Invalid value for '--alpha': 'nan' is not a finite number"),
        (
            ["--memory-budget", "nan"],
            "Invalid value for '--memory-budget': 'nan' is not a finite number",
        ),
        (
            ["--memory-budget", "inf"],
            "Invalid value for '--memory-budget': 'inf' is not a finite number",
        ),
        (
            ["--memory-budget", "1e-12"],
            "Invalid value for '--memory-budget': 1e-12 GiB is less than one byte",
        ),
        (["--max-aspect", "nan"], "Invalid value for '--max-aspect': 'nan' is not a finite number"),
        (
            ["--max-aspect", "0.5"],
            "Invalid value for '--max-aspect': 0.5 is not in the range x>=1.",
        ),
        (
            ["--max-input-pixels", "0"],
            "Invalid value for '--max-input-pixels': must be positive, got 0",
        ),
    ],
)
def test_numeric_options_refuse_nan_infinity_and_out_of_range(
    tiny, tmp_path: Path, options: list[str], message: str
) -> None:
    out = tmp_path / "out"

    result = run_tiny(save_photo(tmp_path / "photo.png"), "--out", out, *options)

    assert result.exit_code == 2
    assert result.stderr.endswith(f"Error: {message}\n")
    assert not out.exists()
    assert tiny == []


def test_a_usage_error_after_parsing_leaves_no_output_folder(tiny, tmp_path: Path) -> None:
    out = tmp_path / "out"

    result = run_tiny(save_photo(tmp_path / "photo.png"), "--out", out, "--class", "dog")

    assert result.exit_code == 2
    assert not out.exists()


def test_top_k_is_capped_with_a_note(serve_model, tmp_path: Path) -> None:
    classes = [f"class {i}" for i in range(MAX_TOP_K + 5)]
    serve_model(
        "wide",
        lambda: as_loaded(TinyNet(len(classes)), window=(32, 32), categories=classes, name="wide"),
    )
    out = tmp_path / "out"

    result = run(
        save_photo(tmp_path / "photo.png"),
        "--out",
        out,
        "-s",
        "48",
        "--model",
        "wide",
        "-k",
        "5000",
    )

    assert result.exit_code == 0, result.output
    assert stderr_lines(result)[0] == (
        f"Note: --top-k 5000 is capped at {MAX_TOP_K}: each class is a full-size overlay "
        "(--class renders any class on purpose)"
    )
    record = json.loads((out / "photo.json").read_bytes())
    assert len(record["classes"]) == len(record["top_k"]) == MAX_TOP_K
    assert len(list(out.glob("photo_*_class_*.png"))) == MAX_TOP_K


def test_out_equal_to_an_input_folder_is_refused(tiny, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    save_photo(photos / "x.png")

    result = run_tiny(photos, "--out", photos / ".." / "photos")

    assert result.exit_code == 2
    assert "the next run would read its overlays as photos" in result.stderr
    assert sorted(p.name for p in photos.iterdir()) == ["x.png"]


def save_damaged_exif(path: Path) -> Path:
    """A JPEG whose EXIF block is cut short: Pillow warns while reading it."""
    exif = Image.Exif()
    exif[0x010E] = "a description long enough to be stored at an offset " * 3
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(path, exif=exif.tobytes()[:-60])
    return path


def test_library_warnings_are_one_line_naming_the_file(tiny, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    damaged = [save_damaged_exif(photos / name) for name in ("d1.jpg", "d2.jpg")]
    save_photo(photos / "fine.png")
    with warnings.catch_warnings(record=True) as caught:  # what this Pillow says about it
        warnings.simplefilter("always")
        Image.open(damaged[0]).getexif()
    message = " ".join(str(caught[0].message).split())

    result = run_tiny(photos, "--out", tmp_path / "out", "-s", "48")

    assert result.exit_code == 0, result.output
    assert [line for line in stderr_lines(result) if "Warning" in line] == [
        f"Warning: {path}: {message}" for path in damaged
    ]
