"""Tests of the command's output channels (heatmap_cli.cli.console) and per-thread warnings.

The command-level cases (``| head``, ``> /dev/full``, ``2>&-``) run real processes in
test_batch.py; these pin down what a channel does with each kind of failing stream.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import warnings
from pathlib import Path

import pytest

from heatmap_cli.cli.console import Channel, Console, Tally
from heatmap_cli.pipeline.thread_warnings import captured_warnings


class FailingStream(io.TextIOWrapper):
    """A UTF-8 text stream whose writes start failing with ``error`` after ``good`` writes."""

    def __init__(self, error: BaseException, good: int = 0) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8")
        self.error, self.good, self.attempts = error, good, 0

    def flush(self) -> None:
        self.attempts += 1
        if self.attempts > self.good:
            raise self.error
        super().flush()


@pytest.mark.parametrize(
    ("error", "failure", "broken_pipe"),
    [
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), "broken pipe", True),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device", False),
        (ValueError("I/O operation on closed file."), "closed", False),
    ],
)
def test_a_failing_stream_stops_the_channel_without_raising(
    error: BaseException, failure: str, broken_pipe: bool
) -> None:
    stream = FailingStream(error)
    channel = Channel(stream)

    assert channel.write("first line\n") == len("first line\n")
    attempts = stream.attempts
    channel.write("second line\n")
    channel.flush()

    assert (channel.failure, channel.broken_pipe) == (failure, broken_pipe)
    assert stream.attempts == attempts  # nothing more was tried


def test_a_closed_standard_stream_is_a_channel_that_writes_nothing() -> None:
    channel = Channel(None)

    assert channel.write("lost\n") == 5
    assert channel.failure == "closed"
    assert not channel.isatty()
    with pytest.raises(OSError, match="closed"):
        channel.fileno()


def test_names_that_are_not_utf8_keep_their_bytes_on_stdout_and_are_escaped_on_stderr() -> None:
    name = os.fsdecode(b"caf\xe9.jpg")
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as a UTF-8 terminal's
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    console = Console(out, err)

    console.result(f"{name}: tabby 0.9")
    console.say(f"Error: {name}: truncated")

    assert out.buffer.getvalue() == b"caf\xe9.jpg: tabby 0.9\n"  # type: ignore[attr-defined]
    assert err.buffer.getvalue() == b"Error: caf\\udce9.jpg: truncated\n"  # type: ignore[attr-defined]


def test_standard_output_failing_is_said_once_unless_the_reader_left() -> None:
    full, gone = io.StringIO(), io.StringIO()
    disk_full = Console(FailingStream(OSError(errno.ENOSPC, "No space left on device")), full)
    reader_left = Console(FailingStream(BrokenPipeError(errno.EPIPE, "Broken pipe")), gone)

    for console in (disk_full, reader_left):
        console.result("a: cat 0.9")
        console.result("b: cat 0.8")

    assert full.getvalue() == (
        "Note: cannot write to standard output (no space left on device); going on\n"
    )
    assert gone.getvalue() == ""


def test_the_tally_counts_what_is_left() -> None:
    tally = Tally(todo=5, done=2)
    tally.failures.append((Path("photos/x.png"), "broken"))

    assert (tally.failed, tally.unfinished) == (1, 2)


def test_warnings_go_to_the_thread_that_raised_them() -> None:
    both_inside = threading.Barrier(2)
    caught: dict[str, list[str]] = {}

    def read(name: str) -> None:
        with captured_warnings() as mine:
            both_inside.wait()  # the two captures overlap
            warnings.warn(f"damaged {name}", UserWarning, stacklevel=1)
            warnings.warn(f"damaged {name}", UserWarning, stacklevel=1)  # said once
            both_inside.wait()
        caught[name] = mine

    threads = [threading.Thread(target=read, args=(name,)) for name in ("a", "b")]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with pytest.warns(UserWarning, match="outside"):  # outside any capture: shown as usual
            warnings.warn("outside", UserWarning, stacklevel=1)

    assert caught == {"a": ["damaged a"], "b": ["damaged b"]}
