"""The finished images of an output folder: their ``.json`` records, read with fallbacks.

An image is finished when its ``<stem>.json`` exists (it is written last). The report reads
only the keys of the output contract (``image``, ``model``, ``method``, ``stride``,
``original_size``, ``grid``, ``scores``, ``classes`` and their ``scale``, ``top_k``,
``activation``) and tolerates any of them
missing or malformed: a record from an older or newer version of the tool still shows up, with
whatever it has.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from heatmap_cli.io import loads_strict, read_regular_file

__all__ = [
    "ASSETS_DIR_NAME",
    "ImageRecord",
    "RankedClass",
    "find_records",
]

_MAX_RECORD_BYTES = 64 * 2**20  # an image's json is a few kilobytes

ASSETS_DIR_NAME = "index_files"
"""The report's own folder inside the output folder (named as browsers name saved pages')."""


@dataclass(frozen=True)
class RankedClass:
    """One class of an image-level ranking or of the rendered classes.

    Attributes:
        index: Class index in the model's output.
        name: Class name.
        score: The ranking's score (``top_k``) or the peak probability (rendered classes).
        overlay: File name of the rendered PNG next to the json, or ``None``.
        exact: The exact window's score at a rendered class's peak (the fidelity check), or
            ``None`` when not checked.
    """

    index: int
    name: str
    score: float
    overlay: str | None = None
    exact: float | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One finished image of an output folder.

    Attributes:
        stem: Where the image's outputs lie, relative to the output folder, without suffix
            (``"trip/photo"`` for ``trip/photo.json``).
        json_path: The ``.json`` file.
        stamp: ``(mtime_ns, size)`` of the json: a different stamp means the image was redone.
        fields: The parsed json object.
    """

    stem: PurePosixPath
    json_path: Path
    stamp: tuple[int, int]
    fields: dict[str, Any]

    @property
    def image(self) -> str:
        """The source photo as the run named it (relative to the run's working folder)."""
        return str(self.fields["image"])

    @property
    def original_size(self) -> tuple[int, int] | None:
        """``(width, height)`` of the source photo in pixels, if recorded."""
        return _size(self.fields.get("original_size"))

    @property
    def grid(self) -> tuple[int, int] | None:
        """``(rows, cols)`` of the score grid, if recorded."""
        grid = self.fields.get("grid")
        if isinstance(grid, dict):
            rows, cols = _integer(grid.get("rows")), _integer(grid.get("cols"))
            if rows and cols:
                return rows, cols
        return None

    @property
    def ranking(self) -> list[RankedClass]:
        """The image-level ranking (``top_k``), best first; empty if not recorded."""
        return _classes(self.fields.get("top_k"), "score")

    @property
    def rendered(self) -> list[RankedClass]:
        """The classes rendered as PNG overlays, with their peak and overlay file name."""
        return _classes(self.fields.get("classes"), "peak")

    @property
    def colour_range(self) -> tuple[float, float] | None:
        """The probability range the overlays share (``shared``/``absolute`` scale), if any.

        None for a per-class scale, for logit maps and for records without scales: the page
        then draws each class from 0 to its own peak.
        """
        classes = self.fields.get("classes")
        if self.fields.get("scores") != "probs" or not isinstance(classes, list) or not classes:
            return None
        scale = classes[0].get("scale") if isinstance(classes[0], dict) else None
        if not isinstance(scale, dict) or scale.get("name") not in ("shared", "absolute"):
            return None
        low, high = _number(scale.get("low")), _number(scale.get("high"))
        return (low, high) if low is not None and high is not None and low < high else None

    @property
    def activation(self) -> str:
        """How the json's scores were made from logits: ``"softmax"`` unless recorded."""
        value = self.fields.get("activation")
        return value if isinstance(value, str) and value else "softmax"

    @property
    def fidelity(self) -> dict[str, float] | None:
        """The fidelity check's figures, and ``cells``: how many cells it checked.

        Returns:
            ``top1_agreement``, ``max_abs_diff``, ``mean_abs_diff`` and ``cells``; None when the
            json has no fidelity check.
        """
        found = self.fields.get("fidelity")
        if not isinstance(found, dict) or not isinstance(found.get("cells"), list):
            return None
        figures = {k: _number(found.get(k)) for k in ("top1_agreement", "max_abs_diff")}
        figures["mean_abs_diff"] = _number(found.get("mean_abs_diff"))
        if any(value is None for value in figures.values()):
            return None
        return {**figures, "cells": float(len(found["cells"]))}  # type: ignore[dict-item]

    def text(self, key: str) -> str | None:
        """A scalar field (``model``, ``method``, ``stride``...) as text, or ``None``."""
        value = self.fields.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        return None


def find_records(out_dir: Path, damaged: list[Path] | None = None) -> list[ImageRecord]:
    """Every finished image below an output folder, sorted by stem.

    A ``.json`` counts when it holds an object with an ``"image"`` string and a ``"model"``;
    other json files (a manifest, the report's own files in ``index_files/``) are passed over,
    and so are those that cannot be trusted: not a regular file, unreadable, not strict JSON
    (truncated, or holding ``NaN`` or ``Infinity``, which no run writes).

    Args:
        out_dir: The output folder of one or more runs.
        damaged: If given, the json files passed over as untrustworthy are appended to it.

    Returns:
        The records, sorted by their stem's path.
    """
    out_dir = Path(out_dir)
    records = []
    for path in _json_files(out_dir):
        try:
            fields = loads_strict(read_regular_file(path, max_bytes=_MAX_RECORD_BYTES))
            info = path.stat()
        except (OSError, ValueError):  # UnicodeDecodeError and NonFiniteJsonError included
            if damaged is not None:
                damaged.append(path)
            continue
        if not (isinstance(fields, dict) and isinstance(fields.get("image"), str)):
            continue
        if "model" not in fields:
            continue
        stem = PurePosixPath(path.relative_to(out_dir).as_posix()).with_suffix("")
        records.append(ImageRecord(stem, path, (info.st_mtime_ns, info.st_size), fields))
    return sorted(records, key=lambda record: record.stem.parts)


def _json_files(out_dir: Path) -> Iterator[Path]:
    for folder, subfolders, files in os.walk(out_dir):
        if Path(folder) == out_dir and ASSETS_DIR_NAME in subfolders:
            subfolders.remove(ASSETS_DIR_NAME)
        # Hidden folders hold a concurrent run's files before they are moved into place.
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in files:
            if name.endswith(".json") and not name.startswith("."):
                yield Path(folder) / name


def _classes(entries: object, score_key: str) -> list[RankedClass]:
    if not isinstance(entries, list):
        return []
    found = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        index = _integer(entry.get("index"))
        score = _number(entry.get(score_key))
        if index is None or score is None:
            continue
        name = entry.get("name")
        overlay = entry.get("overlay")
        found.append(
            RankedClass(
                index=index,
                name=name if isinstance(name, str) else f"class {index}",
                score=score,
                overlay=overlay if isinstance(overlay, str) and overlay else None,
                exact=_number(entry.get("exact_peak")),
            )
        )
    return found


def _size(value: object) -> tuple[int, int] | None:
    if isinstance(value, dict):
        width, height = _integer(value.get("width")), _integer(value.get("height"))
        if width and height:
            return width, height
    return None


def _integer(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
