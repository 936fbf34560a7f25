"""Reading files anyone may have damaged (``heatmap_cli.io.strict``) and the folder lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io import (
    FileTooLargeError,
    NonFiniteJsonError,
    NotAFileError,
    loads_strict,
    locked,
    read_regular_file,
)

REPO = Path(__file__).resolve().parents[2]


def finished_within(seconds: float, call: Callable[[], object]) -> object:
    """``call()``'s result or exception, failing the test if it is still running after
    ``seconds`` (a read that blocks forever would otherwise hang the test run)."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # handed to the test
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s: it blocks"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "figures.json"
    os.mkfifo(fifo)

    outcome = finished_within(5, lambda: read_regular_file(fifo, max_bytes=100))

    assert isinstance(outcome, NotAFileError)
    assert str(outcome) == f"{fifo}: not a file (a FIFO)"


@pytest.mark.parametrize(("path", "kind"), [("/dev/zero", "a device"), ("/dev/null", "a device")])
def test_a_device_is_refused_before_a_byte_is_read(path: str, kind: str) -> None:
    if not os.path.exists(path):
        pytest.skip(f"no {path} here")
    outcome = finished_within(5, lambda: read_regular_file(Path(path), max_bytes=100))
    assert isinstance(outcome, NotAFileError)
    assert str(outcome) == f"{path}: not a file ({kind})"


def test_a_folder_is_not_a_file_and_a_missing_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(NotAFileError, match="not a file"):
        read_regular_file(tmp_path, max_bytes=100)
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing", max_bytes=100)


def test_a_file_is_read_up_to_its_limit_and_refused_beyond(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 100)
    link = tmp_path / "link"
    link.symlink_to(path)

    assert read_regular_file(path, max_bytes=100) == b"x" * 100
    assert read_regular_file(link, max_bytes=100) == b"x" * 100  # a link to a file is followed
    with pytest.raises(FileTooLargeError):
        read_regular_file(path, max_bytes=99)


@pytest.mark.parametrize(
    "text",
    [
        '{"score": NaN}',
        '{"score": Infinity}',
        "[1, -Infinity]",
        '{"score": 1e999}',
        '{"a": {"b": [0.5, -1e400]}}',
    ],
)
def test_json_with_a_number_no_json_writer_writes_is_refused(text: str) -> None:
    assert json.loads(text) is not None  # Python's reader takes it...
    with pytest.raises(NonFiniteJsonError) as excinfo:
        loads_strict(text)  # ...the tool's does not: it could never write it back
    assert isinstance(excinfo.value, ValueError)  # as every other damage


def test_strict_json_reads_what_the_writers_write() -> None:
    document = {"a": [1, 2.5, -3e-7, 1e308, None, True, "NaN"], "b": {"c": "Infinity"}}
    assert loads_strict(json.dumps(document)) == document
    assert loads_strict(json.dumps(document).encode()) == document


# --- the folder lock ----------------------------------------------------------------------------


def test_the_lock_excludes_another_holder_and_adds_no_file(tmp_path: Path) -> None:
    with (
        locked(tmp_path, ".lock"),
        pytest.raises(OutputWriteError, match="held its lock for over 0 s"),
        locked(tmp_path, ".lock", timeout_s=0.05),
    ):
        pass
    with locked(tmp_path, ".lock", timeout_s=0.05):  # released
        pass
    assert list(tmp_path.iterdir()) == []


_HOLD = """
import sys, time
from pathlib import Path
from heatmap_cli.io import locked
with locked(Path(sys.argv[1]), ".lock"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_the_lock_holds_across_processes_and_a_killed_holder_releases_it(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path), "60"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(OutputWriteError), locked(tmp_path, ".lock", timeout_s=0.2):
            pass
        holder.kill()  # SIGKILL: no cleanup of its own
        holder.wait()
        started = time.monotonic()
        with locked(tmp_path, ".lock", timeout_s=5):
            pass
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()
