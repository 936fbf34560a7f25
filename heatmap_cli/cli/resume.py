"""Whether an image's outputs are complete: the check behind ``--skip-existing``.

An image counts as done only when all of these hold, and is made again otherwise:

1. its ``<stem>.json`` is a regular file that parses as a strict json object (an empty or
   truncated file does not, nor one holding ``NaN`` or ``Infinity``: JSON has no such numbers,
   so a record holding one was edited or damaged and cannot be trusted);
2. the json records ``settings`` equal to the current run's (``outputs.run_settings``: a new
   ``--class``, ``--stride`` or ``--alpha`` redoes the image, and the reason names what changed);
3. the json lists its ``files`` (name and size in bytes), and every one of them exists, as a
   regular file, with exactly that size; an entry that also counts ``files`` is a folder (a
   slide's ``.zarr`` grid store), whose regular files must be that many, of that total size.

Sizes, not checksums: the check reads one json and makes one ``stat`` per file (five per image at
the default settings). Measured with ``benchmarks/studies/resume_check.py`` on 10,000 finished
images (60,000 files, 29.9 GB; two shared CPU cores): 0.59-0.62 s, 60 us per image, where a SHA-256
of every file takes at least 15 s with every byte already in memory, and for 29.9 GB that do not
fit in the page cache as long as the disk takes to read them. Files are moved into place with their
json last and never rewritten in place (``io.staged_files``), so a file changes under its json only
when another run writes the same name: sizes catch a truncated, deleted or differently sized file;
a different file of exactly the same size (another run's, made with other options) is the one case
they miss.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import NamedTuple

from heatmap_cli.io import (
    NonFiniteJsonError,
    NotAFileError,
    loads_strict,
    output_path,
    read_regular_file,
)

__all__ = [
    "MAX_RECORD_BYTES",
    "ListedFile",
    "Verdict",
    "check_outputs",
    "folder_size",
    "listed_files",
    "read_record",
    "settings_changes",
]

MAX_RECORD_BYTES = 64 * 2**20
"""The largest image json read back (a record is a few kilobytes)."""


@dataclass(frozen=True)
class Verdict:
    """Whether an image is done, and if not why it is made again.

    Attributes:
        done: Its outputs are complete for the current settings.
        reason: Why it is not done, in a few words; None when done, or when nothing of it was
            found (an image never made is not news).
        record: The json of a done image, as parsed (its ranking and files, for the
            manifest); None otherwise.
    """

    done: bool
    reason: str | None = None
    record: Mapping[str, object] | None = field(default=None, compare=False, repr=False)


def check_outputs(out_dir: Path, stem: PurePath, settings: Mapping[str, object]) -> Verdict:
    """Whether an image's outputs in ``out_dir`` are complete for ``settings``.

    Args:
        out_dir: The output folder.
        stem: The image's output stem (``io.ImageInput.stem``).
        settings: The current run's settings (``outputs.run_settings``).

    Returns:
        The verdict; its reason names the first thing found wrong.
    """
    record, reason = read_record(output_path(out_dir, stem, ".json"))
    if record is None:
        return Verdict(False, reason)
    recorded = record.get("settings")
    if not isinstance(recorded, dict):
        return Verdict(False, "its json records no settings (written by an older version)")
    changes = settings_changes(recorded, settings)
    if changes:
        return Verdict(False, f"settings changed: {'; '.join(changes)}")
    folder = output_path(out_dir, stem, ".json").parent
    verdict = _check_files(folder, record.get("files"))
    return Verdict(True, record=record) if verdict.done else verdict


def read_record(marker: Path) -> tuple[dict[str, object] | None, str | None]:
    """An image's json record, if it can be trusted, else why not.

    Args:
        marker: The image's ``<stem>.json``.

    Returns:
        ``(record, None)``; or ``(None, reason)`` for a json that is not a regular file, cannot
        be read, is not strict JSON (``NaN``, ``Infinity``) or is not an object; ``(None, None)``
        when there is none.
    """
    try:
        text = read_regular_file(marker, max_bytes=MAX_RECORD_BYTES)
    except FileNotFoundError:
        return None, None
    except NotAFileError:
        return None, "its json is not a file"
    except OSError as error:
        return None, f"its json cannot be read ({error.strerror or error})"
    try:
        record = loads_strict(text)
    except NonFiniteJsonError:
        return None, "its json holds NaN or Infinity, which JSON does not allow"
    except ValueError:  # UnicodeDecodeError included
        return None, "its json is empty, truncated or not json"
    if not isinstance(record, dict):
        return None, "its json is not an object"
    return record, None


class ListedFile(NamedTuple):
    """A file an image's json lists: its name in the json's folder and its size in bytes."""

    name: str
    size: int


def listed_files(record: Mapping[str, object]) -> list[ListedFile]:
    """The files a record lists, those with a plain name and an integer size only."""
    files = record.get("files")
    listed = []
    for entry in files if isinstance(files, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if isinstance(name, str) and _is_plain_name(name) and type(size) is int:
            listed.append(ListedFile(name, size))
    return listed


def settings_changes(recorded: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    """What differs between recorded and current settings, as ``"stride 32 -> 16"`` lines.

    Both are compared as json would store them (tuples as lists), key by key; a key only one
    side has is a change too (``(none)`` on the other).
    """
    now = json.loads(json.dumps(dict(current)))
    changes = []
    for key in sorted(set(recorded) | set(now)):
        before, after = recorded.get(key, _NONE), now.get(key, _NONE)
        if before != after:
            changes.append(f"{key} {_show(before)} -> {_show(after)}")
    return changes


_NONE = object()


def _show(value: object) -> str:
    return "(none)" if value is _NONE else json.dumps(value, ensure_ascii=False)


def _check_files(folder: Path, files: object) -> Verdict:
    """Every listed file exists in ``folder`` as a regular file of the listed size."""
    if not isinstance(files, list) or not files:
        return Verdict(False, "its json lists no files (written by an older version)")
    for entry in files:
        name = entry.get("name") if isinstance(entry, dict) else None
        size = entry.get("bytes") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _is_plain_name(name) or type(size) is not int:
            return Verdict(False, "its json's file list is not valid")
        try:
            info = (folder / name).lstat()
        except OSError:
            return Verdict(False, f"{name} is missing")
        if isinstance(entry, dict) and "files" in entry:
            verdict = _check_folder(folder / name, entry["files"], size, info)
            if not verdict.done:
                return verdict
            continue
        if stat.S_ISLNK(info.st_mode):
            try:
                info = (folder / name).stat()
            except OSError:
                return Verdict(False, f"{name} is missing")
        if not stat.S_ISREG(info.st_mode):
            return Verdict(False, f"{name} is not a file")
        if info.st_size != size:
            return Verdict(False, f"{name} has {info.st_size} bytes, its json says {size}")
    return Verdict(True)


def _check_folder(path: Path, count: object, size: int, info: os.stat_result) -> Verdict:
    """A listed folder (a zarr store): a real folder holding ``count`` files of ``size`` bytes."""
    if not stat.S_ISDIR(info.st_mode) or type(count) is not int:
        return Verdict(False, f"{path.name} is not a folder")
    found_size, found_count = folder_size(path)
    if (found_size, found_count) != (size, count):
        return Verdict(
            False,
            f"{path.name} has {found_count} files of {found_size} bytes, "
            f"its json says {count} of {size}",
        )
    return Verdict(True)


def folder_size(path: Path) -> tuple[int, int]:
    """``(bytes, files)`` of the regular files under a folder, at any depth (links not followed)."""
    total = count = 0
    for root, _, files in os.walk(path):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
                count += 1
    return total, count


def _is_plain_name(name: str) -> bool:
    """A file name without folders (a json cannot point the check elsewhere)."""
    return (
        bool(name) and name not in (".", "..") and PurePath(name).name == name and "\\" not in name
    )
