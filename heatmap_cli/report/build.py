"""Writing the report of an output folder: gallery entries, cached per image, and the page.

The report is rebuilt from what the folder holds (every finished image's json), so a resumed
run keeps the images of the runs before it. Each image's files are made once and remade only
when its json or npz changes (a different modification time or size, or an npz that appeared
or went); ``index_files/cache.json`` remembers the entries, and files no entry names any more
are removed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.io import atomic_writer, loads_strict, read_regular_file, write_json
from heatmap_cli.report.assets import ASSET_SUFFIXES, asset_key, build_entry, entry_files
from heatmap_cli.report.failures import Failure, load_failures, merge_failures, save_failures
from heatmap_cli.report.page import colormap_table, render_page
from heatmap_cli.report.records import ASSETS_DIR_NAME, ImageRecord, find_records

__all__ = ["CACHE_VERSION", "REPORT_FILE", "write_report"]

REPORT_FILE = "index.html"
CACHE_VERSION = 1
"""Raised whenever what ``build_entry`` writes changes, so that old caches are ignored."""

_CACHE_FILE = "cache.json"
_MAX_CACHE_BYTES = 1 << 32  # the report's own file: about a kilobyte per image
_FAILURES_FILE = "failures.json"


def write_report(
    out_dir: Path,
    failures: Iterable[tuple[str | os.PathLike[str], str]] = (),
    *,
    cmap: str = "inferno",
    alpha: float = 0.5,
    workers: int | None = None,
    damaged: list[Path] | None = None,
) -> Path:
    """Writes ``out_dir/index.html`` and its per-image files in ``out_dir/index_files/``.

    Args:
        out_dir: An output folder of ``heatmap`` (one or more runs).
        failures: This run's failed inputs, as ``(image, reason)`` pairs; earlier runs'
            failures are kept until their image succeeds.
        cmap: The overlays' matplotlib colour map (the page draws maps with the same table).
        alpha: Initial opacity of the map at full score, in ``[0, 1]``.
        workers: Threads that build new per-image files (decoding, resizing, encoding);
            default: the number of CPUs, at most 8.
        damaged: If given, the image json files left out because they cannot be trusted (not
            strict JSON: truncated, or holding NaN or Infinity) are appended to it.

    Returns:
        The path of ``index.html``.

    Raises:
        InvalidOptionError: ``alpha`` is outside ``[0, 1]`` or ``workers`` is not positive.
        RenderError: ``cmap`` is not a matplotlib colour map.
        OutputWriteError: A report file cannot be written.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InvalidOptionError(f"alpha must be within [0, 1], got {alpha}")
    if workers is not None and workers < 1:
        raise InvalidOptionError(f"workers must be positive, got {workers}")
    colormap_table(cmap)  # an unknown name fails here, before any work
    out_dir = Path(out_dir)
    assets = out_dir / ASSETS_DIR_NAME
    current = [Failure.now(image, reason) for image, reason in failures]

    records = find_records(out_dir, damaged)
    entries = _entries(records, out_dir, _load_cache(assets / _CACHE_FILE), workers)
    _remove_unused(assets, {path.name for entry in entries for path in entry_files(out_dir, entry)})
    cache = {
        asset_key(record.stem): {"stamp": _stamp(record, out_dir), "entry": entry}
        for record, entry in zip(records, entries, strict=True)
    }
    write_json(assets / _CACHE_FILE, {"version": CACHE_VERSION, "images": cache})

    finished = {record.image: record.stamp[0] / 1e9 for record in records}
    listed = merge_failures(load_failures(assets / _FAILURES_FILE), current, finished)
    save_failures(assets / _FAILURES_FILE, listed)

    page = render_page(entries, listed, title=out_dir.resolve().name, cmap=cmap, alpha=alpha)
    path = out_dir / REPORT_FILE
    with atomic_writer(path, "w") as file:
        file.write(page)
    return path


def _entries(
    records: list[ImageRecord],
    out_dir: Path,
    cache: dict[str, dict[str, object]],
    workers: int | None,
) -> list[dict[str, object]]:
    """Each record's entry: the cached one if its json is unchanged and its files exist."""

    def reuse(record: ImageRecord) -> dict[str, object] | None:
        cached = cache.get(asset_key(record.stem))
        if not cached or cached.get("stamp") != _stamp(record, out_dir):
            return None
        entry = cached.get("entry")
        if not isinstance(entry, dict):
            return None
        return entry if all(path.is_file() for path in entry_files(out_dir, entry)) else None

    reused = [reuse(record) for record in records]
    todo = [record for record, entry in zip(records, reused, strict=True) if entry is None]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        built = iter(list(pool.map(lambda record: build_entry(record, out_dir), todo)))
    return [entry if entry is not None else next(built) for entry in reused]


def _stamp(record: ImageRecord, out_dir: Path) -> list[int | None]:
    """``[mtime_ns, size]`` of the json, then of the npz (``None, None`` without one)."""
    try:
        info = (out_dir / f"{record.stem}.npz").stat()
        npz: list[int | None] = [info.st_mtime_ns, info.st_size]
    except OSError:
        npz = [None, None]
    return [*record.stamp, *npz]


def _load_cache(path: Path) -> dict[str, dict[str, object]]:
    try:
        cache = loads_strict(read_regular_file(path, max_bytes=_MAX_CACHE_BYTES))
    except (OSError, ValueError):
        return {}
    if not isinstance(cache, dict) or cache.get("version") != CACHE_VERSION:
        return {}
    images = cache.get("images")
    return images if isinstance(images, dict) else {}


def _remove_unused(assets: Path, used: set[str]) -> None:
    """Deletes per-image files that no entry names (images removed from the folder)."""
    if not assets.is_dir():
        return
    for path in assets.iterdir():
        ours = path.name.endswith(ASSET_SUFFIXES) or (
            path.name.startswith("labels-") and path.name.endswith(".js")
        )
        if ours and path.name not in used and path.is_file():
            path.unlink(missing_ok=True)
