r"""``OUT/manifest.jsonl``: one row per input, what became of it, for pipelines.

Every run writes it, plain and ``--ray`` alike: one json object per line, sorted by output stem,

``{"path", "stem", "status", "error", "top_k", "files"}``

* ``path``: the input as found (the json's ``image``); ``stem``: its output stem under ``OUT``
  (``a/x`` for ``photos/a/x.jpg``), null for an entry that could not even be listed;
* ``status``: ``"done"`` (written by this run), ``"skipped"`` (already complete,
  ``--skip-existing``) or ``"failed"``; ``error``: the one-line reason of a failure, else null;
* ``top_k``: the image-level ranking of its json (``[{"index", "name", "score"}]``), null when
  failed;
* ``files``: the files it has under ``OUT`` (relative paths, the json last), empty when failed.

The file is JSON Lines (no dependency; ``pandas.read_json(path, lines=True)`` and
``ray.data.read_json`` read it) and pure ASCII: names that are not valid UTF-8 are kept as
``\udcxx`` escapes, which ``json.loads`` turns back into the same string. It is written once
at the end of a run (also after Ctrl-C) by one atomic rename, merged with the manifest already
there: rows of this run replace those of the same stem, other rows are kept, so a resumed run or
a run over another subfolder extends one manifest.

Concurrent runs into one folder (two terminals, a script's parallel jobs) each read, merge and
rename under an exclusive lock on ``OUT`` (``heatmap_cli.io.locked``: the folder itself, or
``OUT/.manifest.jsonl.lock`` where folders cannot be locked, as on NFS), so no run's rows are
lost to another's rename. Lines that are not rows (torn, edited by hand, or
holding ``NaN`` or ``Infinity``, which JSON does not allow) are left out when the manifest is
rewritten, and the run says how many (:attr:`ManifestWrite.dropped`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Literal

from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io import (
    NotAFileError,
    atomic_writer,
    loads_strict,
    locked,
    output_path,
    read_regular_file,
)

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "Manifest",
    "ManifestRow",
    "ManifestWrite",
    "Status",
    "read_manifest",
    "read_manifest_lines",
]

MANIFEST_NAME = "manifest.jsonl"
LOCK_NAME = ".manifest.jsonl.lock"
"""The lock file of the manifest's read-merge-write where the folder itself cannot be locked."""

_NO_LIMIT = 1 << 40  # the manifest is the tool's own file: any size it grew to is read

Status = Literal["done", "failed", "skipped"]


@dataclass(frozen=True)
class ManifestRow:
    """What became of one input.

    Attributes:
        path: The input file as found.
        stem: Its output stem (``ImageInput.stem``) as a string; None for an entry that could
            not be listed.
        status: ``"done"``, ``"failed"`` or ``"skipped"``.
        error: Why it failed (one line); None otherwise.
        top_k: The image-level ranking, ``{"index", "name", "score"}`` each; None when failed.
        files: Its files under the output folder (relative, the json last).
    """

    path: str
    stem: str | None
    status: Status
    error: str | None = None
    top_k: tuple[Mapping[str, object], ...] | None = None
    files: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """What identifies the row in a manifest: its stem, else its path."""
        return self.stem if self.stem is not None else self.path

    def to_json(self) -> dict[str, object]:
        """The row as its manifest line holds it."""
        row = asdict(self)
        row["top_k"] = None if self.top_k is None else [dict(entry) for entry in self.top_k]
        row["files"] = list(self.files)
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, object]) -> ManifestRow:
        """A row read back from a manifest line; raises ValueError if it is not one."""
        status = row.get("status")
        path, stem = row.get("path"), row.get("stem")
        if status not in ("done", "failed", "skipped") or not isinstance(path, str):
            raise ValueError("not a manifest row")
        top_k, files = row.get("top_k"), row.get("files") or []
        if isinstance(top_k, list) and not all(isinstance(entry, dict) for entry in top_k):
            raise ValueError("a manifest row's top_k holds something that is not an object")
        return cls(
            path=path,
            stem=stem if isinstance(stem, str) else None,
            status=status,  # type: ignore[arg-type]
            error=row.get("error") if isinstance(row.get("error"), str) else None,  # type: ignore[arg-type]
            top_k=tuple(top_k) if isinstance(top_k, list) else None,
            files=tuple(str(name) for name in files) if isinstance(files, list) else (),
        )

    @classmethod
    def finished(
        cls,
        path: PurePath,
        stem: PurePath,
        status: Status,
        top_k: Sequence[Mapping[str, object]],
        files: Iterable[PurePath],
    ) -> ManifestRow:
        """The row of an image with complete outputs (``files``: their paths under ``OUT``)."""
        return cls(str(path), str(stem), status, None, tuple(top_k), tuple(map(str, files)))

    @classmethod
    def skipped(cls, path: PurePath, stem: PurePath, record: Mapping[str, object]) -> ManifestRow:
        """The row of an image left out as complete, from its json ``record``."""
        listed = record.get("files")
        entries = listed if isinstance(listed, list) else []
        names = [entry["name"] for entry in entries if isinstance(entry, dict)]
        json_name = output_path(Path(), stem, ".json")
        files = [json_name.parent / str(name) for name in names] + [json_name]
        top_k = record.get("top_k")
        return cls.finished(path, stem, "skipped", top_k if isinstance(top_k, list) else [], files)

    @classmethod
    def failed(cls, path: PurePath, stem: PurePath | None, error: str) -> ManifestRow:
        """The row of an input that failed, with its one-line reason."""
        return cls(str(path), None if stem is None else str(stem), "failed", error)


@dataclass(frozen=True)
class ManifestWrite:
    """What writing the manifest did.

    Attributes:
        path: The manifest file.
        dropped: The line numbers (from 1) of the lines of the manifest found there that were
            not rows and were left out: torn, edited by hand, or holding NaN or Infinity.
    """

    path: Path
    dropped: tuple[int, ...] = ()

    def note(self) -> str | None:
        """One line about the lines left out, or None when there were none."""
        if not self.dropped:
            return None
        count = len(self.dropped)
        lines = ", ".join(map(str, self.dropped[:5])) + (", ..." if count > 5 else "")
        return (
            f"{self.path}: left out {count} line{'s' if count > 1 else ''} that "
            f"{'are' if count > 1 else 'is'} not a valid row (line {lines}: torn, edited, or "
            "holding NaN or Infinity, which JSON does not allow)"
        )


@dataclass
class Manifest:
    """The rows of one run, written into ``OUT/manifest.jsonl`` merged with the rows there.

    Attributes:
        out: The output folder.
        rows: This run's rows, by key (a later row of the same input replaces an earlier one).
    """

    out: Path
    rows: dict[str, ManifestRow] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The manifest file."""
        return self.out / MANIFEST_NAME

    def add(self, row: ManifestRow) -> None:
        """Records what became of one input."""
        self.rows[row.key] = row

    def write(self) -> ManifestWrite:
        """Writes the manifest atomically: the rows already there, this run's replacing theirs.

        The read, the merge and the rename happen under the folder's manifest lock, so a
        concurrent run's rows are never lost.

        Returns:
            The manifest's path, and the lines of the old one that were left out.

        Raises:
            OutputWriteError: It cannot be written (or locked).
        """
        with contextlib.suppress(OSError):  # else the lock or the write says why
            self.out.mkdir(parents=True, exist_ok=True)
        with locked(self.out, LOCK_NAME):
            rows, dropped = read_manifest_lines(self.path)
            merged = {row.key: row for row in rows}
            merged.update(self.rows)
            with atomic_writer(self.path, "w") as file:
                for key in sorted(merged):
                    file.write(json.dumps(merged[key].to_json(), allow_nan=False) + "\n")
        return ManifestWrite(self.path, tuple(dropped))


def read_manifest(path: Path) -> list[ManifestRow]:
    """The rows of a manifest file; none when it is missing, lines that are not rows left out."""
    return read_manifest_lines(path)[0]


def read_manifest_lines(path: Path) -> tuple[list[ManifestRow], list[int]]:
    """The rows of a manifest file, and the numbers of its non-empty lines that are not rows.

    A line is a row only when it is strict JSON (no ``NaN`` or ``Infinity``: the manifest must
    stay readable by every JSON reader, and writable again) holding a manifest row.

    Returns:
        The rows (none when the file is missing, or is not a file: a FIFO there is never
        opened for a blocking read), and the line numbers (from 1) left out.

    Raises:
        OutputWriteError: The file is there but cannot be read (rewriting it would lose its
            rows).
    """
    try:
        data = read_regular_file(path, max_bytes=_NO_LIMIT)
    except (FileNotFoundError, NotAFileError):
        return [], []
    except OSError as error:
        raise OutputWriteError(
            f"{path} cannot be read ({error.strerror or error}); its rows would be lost"
        ) from error
    lines = data.decode("utf-8", errors="replace").splitlines()
    rows, dropped = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(ManifestRow.from_json(loads_strict(line)))
        except (ValueError, AttributeError, TypeError):  # a torn, foreign or untrusted line
            dropped.append(number)
    return rows, dropped
