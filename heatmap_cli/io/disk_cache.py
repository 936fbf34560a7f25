"""The tool's cache folder on disk: small JSON files that later runs read back.

The folder is ``$HEATMAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/heatmap-cli``, else
``~/.cache/heatmap-cli``. A cache that cannot be read or written is never an error: what it
would hold is computed again (and the write is skipped), so a read-only home or a damaged file
only costs time. Files are written atomically, so concurrent runs (Ray actors, two terminals)
never see a half-written one. Plain Python: no torch, no numpy.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["CACHE_DIR_ENV", "cache_dir", "read_cached", "write_cached"]

CACHE_DIR_ENV = "HEATMAP_CACHE_DIR"
"""Environment variable naming the cache folder."""


def cache_dir() -> Path:
    """The cache folder (it may not exist yet)."""
    named = os.environ.get(CACHE_DIR_ENV)
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "heatmap-cli"


def read_cached(name: str) -> object | None:
    """The JSON value stored as ``name`` in the cache folder; None if absent or unreadable."""
    try:
        return json.loads((cache_dir() / name).read_text(encoding="utf-8"))
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
            json.dump(value, file)
        os.replace(temporary, path)
    except (OSError, TypeError, ValueError):
        with contextlib.suppress(OSError):
            os.unlink(temporary)
