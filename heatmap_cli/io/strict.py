"""Reading files that anyone may have damaged: regular files only, JSON with finite numbers only.

Files the tool reads back (an image's json, the manifest, cached figures, a labels file) may have
been edited by hand, truncated, or replaced by something that is not a file at all:

* :func:`read_regular_file` opens without blocking and checks what it opened before reading a
  byte: a FIFO (which would wait forever for a writer), a device (``/dev/zero`` never ends) or a
  folder is refused as "not a file", and a file larger than the caller's limit is refused before
  it fills memory.
* :func:`loads_strict` parses JSON as the writers write it: Python's ``json.loads`` accepts
  ``NaN``, ``Infinity`` and ``1e999`` (which becomes infinity), which no JSON writer of this tool
  produces and none can write back (``allow_nan=False``), so a document holding one is refused
  like any damaged one.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

__all__ = [
    "FileTooLargeError",
    "NonFiniteJsonError",
    "NotAFileError",
    "loads_strict",
    "read_regular_file",
]

_CHUNK = 1 << 24  # bytes read at a time


class NotAFileError(OSError):
    """A path that names a FIFO, a device, a socket or a folder where a file was expected."""


class FileTooLargeError(OSError):
    """A file larger than its reader accepts."""


class NonFiniteJsonError(ValueError):
    """A JSON document holding ``NaN``, ``Infinity`` or a number too large for a float."""


def read_regular_file(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of a regular file, refusing anything else without waiting or filling memory.

    The path is opened non-blocking (a FIFO with no writer opens at once instead of waiting) and
    checked with ``fstat`` on what was opened, so a path swapped after a check cannot slip by.

    Args:
        path: The file (a symbolic link to a regular file is followed).
        max_bytes: The largest size accepted.

    Returns:
        Its content.

    Raises:
        NotAFileError: It is a FIFO, a device, a socket or a folder.
        FileTooLargeError: It holds more than ``max_bytes`` bytes.
        OSError: It cannot be opened or read (missing, no permission...).
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise NotAFileError(f"{path}: not a file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise FileTooLargeError(f"{path}: {info.st_size} bytes, more than {max_bytes}")
        chunks, size = [], 0
        while size <= max_bytes:  # a file that grew since fstat is caught here
            chunk = os.read(descriptor, min(max_bytes + 1 - size, _CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > max_bytes:
        raise FileTooLargeError(f"{path}: more than {max_bytes} bytes")
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity``, ``-Infinity`` and overflowing numbers.

    Args:
        text: A JSON document (bytes are decoded as UTF-8, a byte-order mark refused as by
            ``json.loads``).

    Returns:
        The parsed value; every float in it is finite.

    Raises:
        NonFiniteJsonError: It holds a non-finite number (a ``ValueError``).
        ValueError: It is not JSON (``json.JSONDecodeError``, ``UnicodeDecodeError``).
    """
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def _refuse_constant(name: str) -> Any:
    raise NonFiniteJsonError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteJsonError(f"{text} is too large for a number")
    return value
