"""A small on-disk cache of figures that are slow to measure and fixed for a given network.

Some figures cost a shape-only pass of the whole network, which on the CPU takes longer than
scoring a photo: the activation bytes per input pixel that decide whether an image needs tiles
(``heatmap_cli.grid.tiling``) is measured on storage-less meta tensors, whose Python kernels import
``torch._dynamo`` (0.7 s of a 3 s run on a 600x400 photo). The figure depends only on the
network's structure, so it is kept in a JSON file per key and read back by later runs.

The folder is ``$HEATMAP_CACHE_DIR``, else ``$XDG_CACHE_HOME/heatmap-cli``, else
``~/.cache/heatmap-cli``. A cache that cannot be read or written is never an error: the figure
is measured again (and the write is skipped), so a read-only home or a damaged file only costs
time. What is read is checked before it is believed: only a regular file of at most
:data:`MAX_FILE_BYTES` is opened (a FIFO or a device in its place is never waited on), it must
be a strict JSON object of finite numbers, and the caller's ``plausible`` check (the tiling
estimate's: the network's class count, a bytes-per-pixel figure within physical bounds) must
accept it; anything else is measured again and the file replaced. Files are written atomically,
so concurrent runs (Ray actors, two terminals) never see a half-written one.
:data:`DISK_FIGURES` is the store the engine hands to the tiling estimate.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import itertools
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import fx, nn

from heatmap_cli.io.strict import loads_strict, read_regular_file

__all__ = [
    "CACHE_DIR_ENV",
    "DISK_FIGURES",
    "MAX_FILE_BYTES",
    "DiskFigureStore",
    "cache_dir",
    "cached_figures",
    "network_fingerprint",
]

CACHE_DIR_ENV = "HEATMAP_CACHE_DIR"
"""Environment variable naming the cache folder."""

MAX_FILE_BYTES = 64 * 1024
"""The largest cache file read (one holds a few numbers)."""

Figures = Mapping[str, float]
Plausible = Callable[[Figures], bool]


def cache_dir() -> Path:
    """The folder of cached figures (it may not exist yet)."""
    named = os.environ.get(CACHE_DIR_ENV)
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "heatmap-cli"


def network_fingerprint(net: nn.Module, *extra: str) -> str:
    """A key for figures that depend only on what a network computes, not on its weights.

    It digests the module tree with every layer's configuration (``repr``), the generated code
    of every ``torch.fx.GraphModule`` in it, the source files of every layer class, the names,
    shapes and dtypes of its parameters and buffers, and the torch and heatmap-cli versions.

    Args:
        net: The network.
        *extra: Anything else the figures depend on (e.g. the dtype they were measured in).

    Returns:
        32 hex digits.
    """
    import heatmap_cli

    digest = hashlib.sha256()

    def add(text: str) -> None:
        digest.update(text.encode("utf-8", "backslashreplace") + b"\0")

    for text in (torch.__version__, heatmap_cli.__version__, *extra, repr(net)):
        add(text)
    layer_types = {type(module) for module in net.modules()}
    for module in net.modules():
        if isinstance(module, fx.GraphModule):
            add(module.code)
    files: set[str] = set()
    for layer_type in sorted(layer_types, key=lambda t: f"{t.__module__}.{t.__qualname__}"):
        add(f"{layer_type.__module__}.{layer_type.__qualname__}")
        with contextlib.suppress(OSError, TypeError):  # classes made at run time have no file
            files.add(inspect.getfile(layer_type))
    for name in sorted(files):  # the whole file: faster than cutting out the class's lines
        with contextlib.suppress(OSError):
            digest.update(hashlib.sha256(Path(name).read_bytes()).digest())
    for name, tensor in itertools.chain(net.named_parameters(), net.named_buffers()):
        add(f"{name} {tuple(tensor.shape)} {tensor.dtype}")
    return digest.hexdigest()[:32]


def cached_figures(
    kind: str,
    key: str,
    measure: Callable[[], Figures],
    plausible: Plausible | None = None,
) -> dict[str, float]:
    """The figures stored under ``kind`` and ``key``, measured and stored on a miss.

    Args:
        kind: What the figures are (a file name prefix, e.g. ``"activation-bytes"``).
        key: A fingerprint of everything the figures depend on (hex digits).
        measure: Measures the figures when they are not cached, or cached unreadably.
        plausible: Whether stored figures can be believed; those it refuses are measured
            again and replaced.

    Returns:
        The figures, by name.
    """
    path = cache_dir() / f"{kind}-{key}.json"
    stored = _read(path)
    if stored is not None and (plausible is None or plausible(stored)):
        return stored
    figures = {name: float(value) for name, value in measure().items()}
    _write(path, figures)
    return figures


def _read(path: Path) -> dict[str, float] | None:
    """A file's figures: a regular file holding a strict JSON object of finite numbers."""
    try:
        loaded = loads_strict(read_regular_file(path, max_bytes=MAX_FILE_BYTES))
    except (OSError, ValueError):  # missing, not a file, too large, not strict JSON
        return None
    if not isinstance(loaded, dict) or not all(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        for value in loaded.values()
    ):
        return None
    return {str(name): float(value) for name, value in loaded.items()}


def _write(path: Path, figures: dict[str, float]) -> None:
    """Writes ``figures`` atomically; a cache that cannot be written is left alone."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(figures, file, allow_nan=False)
        os.replace(temporary, path)
    except (OSError, ValueError):  # ValueError: a non-finite figure is not written
        with contextlib.suppress(OSError):
            os.unlink(temporary)


class DiskFigureStore:
    """Figures kept on disk per network structure (a ``grid.tiling.FigureStore``)."""

    def figures(
        self,
        kind: str,
        net: nn.Module,
        extra: Sequence[str],
        measure: Callable[[], Figures],
        plausible: Plausible | None = None,
    ) -> dict[str, float]:
        """The figures of ``kind`` for ``net`` and ``extra``, measured and stored on a miss.

        Stored figures that ``plausible`` refuses are measured again and replaced.
        """
        return cached_figures(kind, network_fingerprint(net, *extra), measure, plausible)


DISK_FIGURES = DiskFigureStore()
"""The store of :func:`cache_dir`, handed to the tiling estimate by the engine."""
