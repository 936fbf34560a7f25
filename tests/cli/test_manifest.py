"""``OUT/manifest.jsonl``: one row per input, written by every run, merged across runs.

Plain runs on test_cli.py's tiny model; ``tests/test_distributed.py`` checks that ``--ray`` leaves
the same rows.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

from heatmap_cli.cli.manifest import MANIFEST_NAME, Manifest, ManifestRow, read_manifest
from tests.helpers.cli import run_tiny, save_photo, stderr_lines


def manifest_rows(out: Path) -> dict[str, dict]:
    """The manifest's rows by stem (by path for an entry without one); one line each."""
    lines = (out / MANIFEST_NAME).read_text(encoding="ascii").splitlines()
    rows = [json.loads(line) for line in lines]
    by_key = {row["stem"] or row["path"]: row for row in rows}
    assert len(by_key) == len(rows)
    return by_key


def photos_with_a_broken_one(folder: Path) -> Path:
    save_photo(folder / "a.png", seed=1)
    save_photo(folder / "sub" / "b.jpg", seed=2)
    (folder / "broken.jpg").write_bytes(b"not an image")
    return folder


def test_every_input_has_one_row_saying_what_became_of_it(tiny, tmp_path: Path) -> None:
    photos = photos_with_a_broken_one(tmp_path / "photos")
    (photos / "loop").symlink_to("loop")  # an entry that cannot even be listed
    out = tmp_path / "out"

    result = run_tiny(photos, "--out", out, "-s", "48", "-k", "2")

    assert result.exit_code == 1
    rows = manifest_rows(out)
    assert set(rows) == {"a", "sub/b", "broken", str(photos / "loop")}
    errors = [line.removeprefix("Error: ") for line in stderr_lines(result) if "Error" in line]
    failed = {key: row for key, row in rows.items() if row["status"] == "failed"}
    assert sorted(row["error"] for row in failed.values()) == sorted(errors)
    assert all(row["top_k"] is None and row["files"] == [] for row in failed.values())
    for stem in ("a", "sub/b"):
        row, record = rows[stem], json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
        assert row["status"] == "done" and row["error"] is None
        assert row["path"] == record["image"]
        assert row["top_k"] == record["top_k"]
        folder = Path(stem).parent
        listed = [(folder / entry["name"]).as_posix() for entry in record["files"]]
        assert row["files"] == [*listed, f"{stem}.json"]  # the json last


def test_a_resumed_run_says_skipped_and_a_later_run_keeps_the_other_rows(
    tiny, tmp_path: Path
) -> None:
    photos = photos_with_a_broken_one(tmp_path / "photos")
    out = tmp_path / "out"
    assert run_tiny(photos, "--out", out, "-s", "48").exit_code == 1
    first = manifest_rows(out)

    resumed = run_tiny(photos, "--out", out, "-s", "48", "--skip-existing")

    assert resumed.exit_code == 1  # the broken file is tried again, and fails again
    rows = manifest_rows(out)
    assert {key: row["status"] for key, row in rows.items()} == {
        "a": "skipped",
        "sub/b": "skipped",
        "broken": "failed",
    }
    for stem in ("a", "sub/b"):  # the same ranking and files, read back from the json
        assert {**rows[stem], "status": "done"} == first[stem]

    # Another input into the same folder: its row is added, the others stay.
    save_photo(tmp_path / "c.png", seed=3)
    assert run_tiny(tmp_path / "c.png", "--out", out, "-s", "48").exit_code == 0
    assert set(manifest_rows(out)) == {"a", "sub/b", "broken", "c"}


def test_an_interrupted_run_writes_the_rows_of_the_images_it_finished(
    tiny, interrupt_on_commit, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    for name in ("a", "b"):
        save_photo(photos / f"{name}.png", seed=ord(name))
    out = tmp_path / "out"

    interrupt_on_commit("b.json")
    result = run_tiny(photos, "--out", out, "-s", "48")
    interrupt_on_commit(None)

    assert result.exit_code == 130
    assert {key: row["status"] for key, row in manifest_rows(out).items()} == {"a": "done"}


def test_lines_that_are_not_rows_are_left_out_and_replaced(tmp_path: Path) -> None:
    kept = ManifestRow.failed(Path("x.png"), Path("x"), "x.png: not an image")
    (tmp_path / MANIFEST_NAME).write_text(
        json.dumps(kept.to_json()) + '\n{"path": "torn\n[1, 2]\n', encoding="ascii"
    )
    manifest = Manifest(tmp_path)
    manifest.add(ManifestRow.failed(Path("y.png"), Path("y"), "y.png: not an image"))

    manifest.write()

    assert [row.stem for row in read_manifest(tmp_path / MANIFEST_NAME)] == ["x", "y"]
    assert read_manifest(tmp_path / "missing.jsonl") == []


def test_a_name_that_is_not_utf8_is_an_ascii_escape_read_back_as_itself(tmp_path: Path) -> None:
    name = "caf\udce9"
    manifest = Manifest(tmp_path)
    manifest.add(ManifestRow.finished(Path(f"{name}.png"), Path(name), "done", [], []))

    manifest.write()

    assert "\\udce9" in (tmp_path / MANIFEST_NAME).read_text(encoding="ascii")
    assert [row.stem for row in read_manifest(tmp_path / MANIFEST_NAME)] == [name]


def test_ray_options_need_ray_and_ray_needs_its_package(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = save_photo(tmp_path / "a.png")
    out = tmp_path / "out"

    for option in (["--workers", "2"], ["--ray-address", "auto"]):
        result = run_tiny(photo, "--out", out, *option)
        assert result.exit_code == 2
        assert f"Invalid value for {option[0]}: only works with --ray" in result.stderr

    monkeypatch.setitem(sys.modules, "ray.data", None)  # as if Ray were not installed
    result = run_tiny(photo, "--out", out, "--ray")
    assert result.exit_code == 2
    assert "pip install 'heatmap-cli[ray]'" in result.stderr
    assert not out.exists()


def test_a_cluster_that_does_not_answer_is_one_line_not_a_wait(tiny, tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    photo = save_photo(tmp_path / "a.png")

    result = run_tiny(photo, "--out", tmp_path / "out", "--ray", "--ray-address", address)

    assert result.exit_code == 1
    assert f"Error: Ray: cannot reach the cluster at {address}: " in result.stderr
