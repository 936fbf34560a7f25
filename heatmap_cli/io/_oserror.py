"""One short, lower-case reason for an operating-system error, shared by reading and writing."""

from __future__ import annotations

import os

__all__ = ["os_reason"]


def os_reason(exc: OSError) -> str:
    """Short lower-case reason for an operating-system error, e.g. ``"permission denied"``.

    Args:
        exc: The error ``open``, ``stat``, ``mkdir`` or ``os.replace`` raised.

    Returns:
        A few words without the path.
    """
    by_type: tuple[tuple[type[OSError], str], ...] = (
        (PermissionError, "permission denied"),
        (FileNotFoundError, "no such file or directory"),
        (IsADirectoryError, "is a directory"),
        (NotADirectoryError, "not a directory"),
    )
    for kind, reason in by_type:
        if isinstance(exc, kind):
            return reason
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__
