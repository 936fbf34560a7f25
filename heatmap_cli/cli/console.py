r"""The command's output channels, which never fail, stop or miscount a batch, and its tally.

Standard output carries one line per finished image (its ranking), standard error the progress
bar, notes, warnings, errors and the summary. Either may be closed from the start (``2>&-``), or
break or fill up while the batch runs (``| head -1``, ``> /dev/full``). Lines are not images: a
:class:`Channel` that fails to write stops writing from then on and never raises, the work goes
on, every image is counted once (:class:`Tally`), and the exit status comes from the images
alone. The failed stream's file descriptor is pointed at ``/dev/null`` so that Python's own
final flush cannot fail either (which would make the exit status 120).

:func:`reserve_standard_descriptors` opens ``/dev/null`` on standard descriptors that are closed
at start: otherwise the next file the command opens (an output) would get descriptor 2, and
anything a library writes to "stderr" at the C level would land in it.

File names that are not valid UTF-8 reach Python with surrogate escapes: standard output writes
them as their original bytes (so a script reading it gets the real name), standard error with
backslash escapes (``caf\udce9.jpg``, readable in any log), as Python's UTF-8 mode does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["QUIET_ERRORS_ONLY", "Channel", "Console", "Tally", "reserve_standard_descriptors"]

QUIET_ERRORS_ONLY = 2
"""The quiet level (``-qq``) from which only errors are said, and the summary line only when an
image failed. Level 1 (``-q``) drops the progress bar and the per-image result lines on standard
output, and keeps notes, warnings, redo reasons, errors and the summary line."""


def reserve_standard_descriptors() -> None:
    """Opens ``/dev/null`` on each of descriptors 0, 1 and 2 that is closed."""
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if opened != descriptor:
                os.dup2(opened, descriptor)
                os.close(opened)


class Channel:
    """A text stream that never raises: once a write or flush fails, it writes nothing more.

    Args:
        stream: The stream to write to; None (Python's stand-in for a closed standard stream)
            gives a channel that writes nothing.
        errors: How characters the encoding cannot write are written: ``"surrogateescape"``
            (file names' original bytes) or ``"backslashreplace"``.

    Attributes:
        failure: Why writing stopped (a few words), or None while it works.
        broken_pipe: Whether it stopped because the reader went away (``| head``).
    """

    def __init__(self, stream: TextIO | None, errors: str = "backslashreplace") -> None:
        self._stream = stream
        self._errors = errors
        self.failure: str | None = None if stream is not None else "closed"
        self.broken_pipe = False

    @property
    def encoding(self) -> str:
        """The stream's encoding (UTF-8 if it does not say)."""
        return getattr(self._stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        """Writes ``text`` (and flushes it); returns its length whatever happened."""
        if self.failure is None:
            try:
                self._write(text)
            except (OSError, ValueError) as error:  # ValueError: the stream was closed
                self._stop(error)
        return len(text)

    def flush(self) -> None:
        """Flushes the stream, unless writing has stopped."""
        if self.failure is None and self._stream is not None:
            try:
                self._stream.flush()
            except (OSError, ValueError) as error:
                self._stop(error)

    def fileno(self) -> int:
        """The stream's descriptor (for terminal-size queries); raises OSError if it has none."""
        if self._stream is None:
            raise OSError(errno.EBADF, "closed")
        return self._stream.fileno()

    def isatty(self) -> bool:
        """Whether the stream is a terminal (False once writing has stopped)."""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return self.failure is None and bool(self._stream and self._stream.isatty())
        return False

    def _write(self, text: str) -> None:
        stream = self._stream
        assert stream is not None
        buffer = getattr(stream, "buffer", None)
        if buffer is None:  # a text-only stream: no bytes to keep, so escape
            stream.write(text.encode(self.encoding, "backslashreplace").decode(self.encoding))
            stream.flush()
            return
        stream.flush()  # text written to the stream by others goes first
        try:
            data = text.encode(self.encoding, self._errors)
        except UnicodeEncodeError:  # a character the encoding lacks, beyond file names
            data = text.encode(self.encoding, "backslashreplace")
        buffer.write(data)
        buffer.flush()

    def _stop(self, error: BaseException) -> None:
        self.broken_pipe = isinstance(error, BrokenPipeError)
        self.failure = (
            (error.strerror or str(error)).lower() if isinstance(error, OSError) else "closed"
        )
        with contextlib.suppress(OSError, ValueError, AttributeError):
            descriptor = self._stream.fileno()  # type: ignore[union-attr]
            if descriptor in (1, 2):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, descriptor)
                os.close(null)


@dataclass
class Tally:
    """Every image of a run counted once: what the summary and the "Interrupted" line say.

    Attributes:
        todo: Images this run has to do (found, less those skipped), failed discoveries too.
        done: Images finished.
        skipped: Images already done (``--skip-existing``).
        failures: ``(path, reason)`` of every image or entry that failed.
    """

    todo: int = 0
    done: int = 0
    skipped: int = 0
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """How many failed."""
        return len(self.failures)

    @property
    def unfinished(self) -> int:
        """How many the run has not got to yet."""
        return max(0, self.todo - self.done - self.failed)


class Console:
    """The command's lines: results on standard output, everything else on standard error.

    Lines go through the progress bar when one is shown, so they never tear it.

    Args:
        out: Standard output (None: closed).
        err: Standard error (None: closed).
    """

    def __init__(self, out: TextIO | None, err: TextIO | None) -> None:
        self.out = Channel(out, errors="surrogateescape")
        self.err = Channel(err, errors="backslashreplace")
        self._bar: tqdm | None = None

    @classmethod
    def standard(cls) -> Console:
        """The console of the process's current ``sys.stdout`` and ``sys.stderr``."""
        return cls(sys.stdout, sys.stderr)

    def result(self, line: str) -> None:
        """A line of results (standard output); says once on stderr if that output fails."""
        working = self.out.failure is None
        self._write(line, self.out)
        if working and self.out.failure is not None and not self.out.broken_pipe:
            self.say(f"Note: cannot write to standard output ({self.out.failure}); going on")

    def say(self, line: str) -> None:
        """A line for the user (standard error)."""
        self._write(line, self.err)

    def progress(self, total: int, *, shown: bool) -> tqdm:
        """A progress bar on standard error, which the console's lines then go through."""
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, unit="img", file=self.err, disable=not shown, dynamic_ncols=True
        )
        return self._bar

    def _write(self, line: str, channel: Channel) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line, file=channel)  # type: ignore[arg-type]
        else:
            channel.write(line + "\n")
