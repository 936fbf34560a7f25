"""Warnings raised while one image is read, collected for that image instead of printed raw.

Pillow warns about damaged metadata ("Corrupt EXIF data", "Tag data larger than file") with the
file nowhere in the message, and a batch reads its images in several threads at once. Python's
``warnings.catch_warnings`` swaps process-wide state, so two threads using it at once can lose
warnings or leave a recorder installed for good. :func:`captured_warnings` instead installs one
process-wide ``warnings.showwarning`` hook (once; it stays) that hands a warning to the list of
the thread it was raised in, when that thread is inside the block, and to the previous hook
otherwise. The loader wraps each image's preparation in it, so every warning becomes one line
naming its file.

Python shows a warning once per place in the code by default, so the second photo with the same
damage would stay silent; :func:`show_library_warnings_every_time` (called by the command)
makes Pillow's warnings show every time.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any, TextIO

__all__ = ["captured_warnings", "show_library_warnings_every_time"]

_current = threading.local()
_install_lock = threading.Lock()
_previous: list[Any] = []  # the hook ours replaced, called for warnings outside any block


def _dispatch(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    caught: list[str] | None = getattr(_current, "caught", None)
    if caught is None:
        _previous[0](message, category, filename, lineno, file, line)
        return
    text = " ".join(str(message).split())  # one line, whatever the library wrote
    if text and text not in caught:
        caught.append(text)


def _install() -> None:
    with _install_lock:
        if warnings.showwarning is not _dispatch:
            _previous[:] = [warnings.showwarning]
            warnings.showwarning = _dispatch


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Collects the warnings this thread raises inside the block, instead of showing them.

    Yields:
        The list that receives each distinct warning's message, as one line, in order.
    """
    _install()
    outer = getattr(_current, "caught", None)
    _current.caught = caught = []
    try:
        yield caught
    finally:
        _current.caught = outer


def show_library_warnings_every_time() -> None:
    """Shows Pillow's warnings every time they are raised, not once per line of Pillow.

    A process-wide filter, for the command's process: each damaged photo gets its own line.
    """
    warnings.filterwarnings("always", module=r"PIL(\.|$)")
