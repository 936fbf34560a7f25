"""Tests of heatmap_cli.cli.resume: when an image's outputs are complete (the --skip-existing
check).

The command-level cases (a truncated json, a deleted overlay, changed options) are in
test_batch.py; these are the ones a hand-written or hostile json can make.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path, PurePath

import pytest

from heatmap_cli.cli.resume import Verdict, check_outputs, settings_changes

SETTINGS = {"model": "tiny", "stride": 8, "scales": [1.0], "classes": []}


def finished(out: Path, **overrides: object) -> Path:
    """A finished image ``x``: its npz, and a json recording SETTINGS and the npz's size."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "x.npz").write_bytes(b"0123456789")
    record = {"image": "x.png", "settings": SETTINGS, "files": [{"name": "x.npz", "bytes": 10}]}
    (out / "x.json").write_text(json.dumps({**record, **overrides}), encoding="utf-8")
    return out


def test_complete_outputs_are_done(tmp_path: Path) -> None:
    out = finished(tmp_path)
    as_the_command_has_them = {**SETTINGS, "scales": (1.0,)}  # tuples compare as json lists

    assert check_outputs(out, PurePath("x"), as_the_command_has_them) == Verdict(True)


def test_an_image_never_made_is_not_news(tmp_path: Path) -> None:
    assert check_outputs(tmp_path, PurePath("x"), SETTINGS) == Verdict(False, None)


def test_a_json_that_is_not_text_or_not_an_object_is_redone(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_bytes(b"\xff\xfe{")
    (tmp_path / "y.json").write_text("[1, 2]", encoding="utf-8")

    assert check_outputs(tmp_path, PurePath("x"), SETTINGS).reason == (
        "its json is empty, truncated or not json"
    )
    assert check_outputs(tmp_path, PurePath("y"), SETTINGS).reason == "its json is not an object"


def test_a_file_list_cannot_point_outside_the_folder(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789")
    for name in ("../secret", "/etc/hostname", "", ".", ".."):
        out = finished(tmp_path / "out", files=[{"name": name, "bytes": 10}])

        verdict = check_outputs(out, PurePath("x"), SETTINGS)

        assert verdict == Verdict(False, "its json's file list is not valid"), name


def test_a_listed_name_that_is_a_folder_is_not_a_file(tmp_path: Path) -> None:
    out = finished(tmp_path, files=[{"name": "x.npz", "bytes": 10}, {"name": "d", "bytes": 0}])
    (out / "d").mkdir()

    assert check_outputs(out, PurePath("x"), SETTINGS).reason == "d is not a file"


def test_an_empty_file_list_is_not_complete(tmp_path: Path) -> None:
    out = finished(tmp_path, files=[])

    assert check_outputs(out, PurePath("x"), SETTINGS).reason == (
        "its json lists no files (written by an older version)"
    )


def test_settings_changes_name_every_key_that_differs() -> None:
    recorded = {"stride": 32, "alpha": 0.5, "gone": True, "classes": [1]}
    current = {"stride": 16, "alpha": 0.5, "new": "x", "classes": (1,)}

    assert settings_changes(recorded, current) == [
        "gone true -> (none)",
        'new (none) -> "x"',
        "stride 32 -> 16",
    ]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_json_holding_a_number_json_does_not_allow_is_redone(tmp_path: Path, number: str) -> None:
    out = finished(tmp_path)
    text = (out / "x.json").read_text(encoding="utf-8")
    (out / "x.json").write_text(text.replace('"bytes": 10', f'"bytes": 10, "p": {number}'))

    verdict = check_outputs(out, PurePath("x"), SETTINGS)

    assert verdict == Verdict(False, "its json holds NaN or Infinity, which JSON does not allow")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_json_that_is_a_fifo_is_redone_without_waiting(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.json")
    verdicts: list[Verdict] = []
    checking = threading.Thread(
        target=lambda: verdicts.append(check_outputs(tmp_path, PurePath("x"), SETTINGS)),
        daemon=True,
    )

    checking.start()
    checking.join(10)

    assert verdicts == [Verdict(False, "its json is not a file")]
