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
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Literal

from heatmap_cli.io import atomic_writer, output_path

__all__ = ["MANIFEST_NAME", "Manifest", "ManifestRow", "Status", "read_manifest"]

MANIFEST_NAME = "manifest.jsonl"

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

    def write(self) -> Path:
        """Writes the manifest atomically: the rows already there, this run's replacing theirs.

        Returns:
            The manifest's path.

        Raises:
            OutputWriteError: It cannot be written.
        """
        merged = {row.key: row for row in read_manifest(self.path)}
        merged.update(self.rows)
        with atomic_writer(self.path, "w") as file:
            for key in sorted(merged):
                file.write(json.dumps(merged[key].to_json(), allow_nan=False) + "\n")
        return self.path


def read_manifest(path: Path) -> list[ManifestRow]:
    """The rows of a manifest file; none when it is missing, lines that are not rows left out."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
            rows.append(ManifestRow.from_json(row))
        except (ValueError, AttributeError):  # a torn or foreign line: not a row
            continue
    return rows
