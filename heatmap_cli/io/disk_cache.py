"""The tool's cache folder on disk: small JSON files that later runs read back.

The folder is ``$HEATMAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/heatmap-cli``, else
``~/.cache/heatmap-cli``. A cache that cannot be read or written is never an error: what it
would hold is computed again (and the write is skipped), so a read-only home or a damaged file
only costs time. What is read is checked before it is believed: only a regular file no larger
than the caller's limit is opened (a FIFO or a device in its place is never waited on), and it
must be strict JSON (no NaN or infinity; :mod:`~heatmap_cli.io.strict`); the caller checks the
value's shape. Files are written atomically, so concurrent runs (Ray actors, two terminals) never
see a half-written one. Plain Python: no torch, no numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from heatmap_cli.io.strict import loads_strict, read_regular_file

__all__ = ["CACHE_DIR_ENV", "MAX_CACHED_BYTES", "cache_dir", "read_cached", "write_cached"]

CACHE_DIR_ENV = "HEATMAP_CACHE_DIR"
"""Environment variable naming the cache folder."""

MAX_CACHED_BYTES = 16 * 1024 * 1024
"""The largest cache file read unless the caller says less (a model card with 21k names fits)."""


def cache_dir() -> Path:
    """The cache folder (it may not exist yet)."""
    named = os.environ.get(CACHE_DIR_ENV)
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "heatmap-cli"


def read_cached(name: str, *, max_bytes: int = MAX_CACHED_BYTES) -> object | None:
    """The JSON value stored as ``name`` in the cache folder.

    Args:
        name: The file's name in the folder.
        max_bytes: The largest file read.

    Returns:
        The value; None if the file is missing, not a regular file, larger than ``max_bytes``,
        or not strict JSON.
    """
    try:
        return loads_strict(read_regular_file(cache_dir() / name, max_bytes=max_bytes))
    except (OSError, ValueError):
        return None


def write_cached(name: str, value: object) -> None:
    """Stores a JSON value as ``name`` in the cache folder, atomically; failures are ignored."""
    path = cache_dir() / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(value, file, allow_nan=False)
        os.replace(temporary, path)
    except (OSError, TypeError, ValueError):  # ValueError: a non-finite number is not written
        with contextlib.suppress(OSError):
            os.unlink(temporary)
