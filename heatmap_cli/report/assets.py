"""The files the report keeps per image: a thumbnail, a display photo and the grid's data.

Each image gets, in ``index_files/``:

* ``<key>.t.jpg``: the gallery thumbnail (longest side ``THUMB_SIDE``);
* ``<key>.p.jpg``: the photo the map is drawn over (longest side ``PHOTO_SIDE``);
* ``<key>.d.js``: the grid data (see :mod:`heatmap_cli.report.encoding`) as a script that
  calls ``heatmapReport.receive(key, data)``: pages opened from ``file://`` may not
  ``fetch()`` local files, but they may load scripts;
* ``labels-<hash>.js``: the model's class names, shared by every image of that model.

An image whose photo or ``.npz`` cannot be read still gets an entry, with notes saying why
(the page then shows the rendered PNG overlays and the ranking).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path, PurePosixPath
from urllib.parse import quote

from PIL import Image

from heatmap_cli.errors import ImageReadError, first_line
from heatmap_cli.io import atomic_writer, read_image, read_photo
from heatmap_cli.io.inputs import slug
from heatmap_cli.io.reading import display_size
from heatmap_cli.report.encoding import (
    GridDataError,
    encode_grid,
    read_score_file,
    read_score_store,
)
from heatmap_cli.report.records import ASSETS_DIR_NAME, ImageRecord

__all__ = [
    "ASSET_SUFFIXES",
    "PHOTO_SIDE",
    "THUMB_SIDE",
    "asset_key",
    "build_entry",
    "entry_files",
]

THUMB_SIDE = 240
PHOTO_SIDE = 1280
ASSET_SUFFIXES = (".t.jpg", ".p.jpg", ".d.js")
_THUMB_QUALITY = 80
_PHOTO_QUALITY = 85
_KEY_NAME_LENGTH = 48


MAX_HOVER_CELLS = 1_000_000
"""Largest grid whose values the page carries for hovering (a slide's can hold millions)."""


def asset_key(stem: PurePosixPath) -> str:
    """A file-name-safe key, unique per stem: a readable slug and a short hash.

    Args:
        stem: The image's stem relative to the output folder.

    Returns:
        E.g. ``"trip_photo-1a2b3c4d"`` for ``trip/photo``.
    """
    # The name's own bytes: the same as UTF-8 for every valid name, and defined for the others.
    digest = hashlib.sha1(str(stem).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug(str(stem), _KEY_NAME_LENGTH)}-{digest}"


def entry_files(out_dir: Path, entry: dict[str, object]) -> list[Path]:
    """The report's files an entry refers to (to check that a cached entry is still whole).

    Args:
        out_dir: The output folder.
        entry: An entry made by :func:`build_entry`.

    Returns:
        The thumbnail, photo, data and labels files the entry names.
    """
    names = [entry.get(field) for field in ("thumb", "photo", "data", "labels")]
    return [out_dir / name for name in names if isinstance(name, str)]


def build_entry(record: ImageRecord, out_dir: Path) -> dict[str, object]:
    """Writes one image's report files and returns its gallery entry.

    Args:
        record: The finished image.
        out_dir: The output folder (holding ``index_files/``).

    Returns:
        A JSON-ready dict: ``key``, ``name`` (stem), ``image`` (source), ``size``
        ``[width, height]`` or ``None``, ``model``, ``method``, ``stride``, ``activation``,
        ``top`` ``[[index, name, score], ...]``, ``rendered`` ``[[index, name, peak, overlay
        url or None, exact peak or None], ...]``, ``fidelity`` (the fidelity check's figures
        and number of cells, or ``None``), ``range`` (the ``[low, high]`` probabilities the overlays
        share, or ``None``: each class to its own peak), the relative URLs ``thumb``,
        ``photo``, ``data``, ``labels`` (each ``None`` when not made), ``photo_size`` and
        ``notes`` (why something is missing).

    Raises:
        OutputWriteError: A report file cannot be written.
    """
    key = asset_key(record.stem)
    assets = out_dir / ASSETS_DIR_NAME
    folder = PurePosixPath(*record.stem.parts[:-1])
    notes: list[str] = []
    thumb = shown = shown_size = None
    photo = _read_photo(_picture_of(record, out_dir / folder), notes)
    if photo is not None:
        thumb, _ = _write_jpeg(photo, THUMB_SIDE, _THUMB_QUALITY, assets / f"{key}.t.jpg")
        shown, shown_size = _write_jpeg(photo, PHOTO_SIDE, _PHOTO_QUALITY, assets / f"{key}.p.jpg")
    else:  # an overlay shows the photo too, under its map: good for a thumbnail only
        overlays = (out_dir / folder / c.overlay for c in record.rendered if c.overlay)
        stand_in = next((p for p in map(_read_or_none, overlays) if p is not None), None)
        if stand_in is not None:
            thumb, _ = _write_jpeg(stand_in, THUMB_SIDE, _THUMB_QUALITY, assets / f"{key}.t.jpg")
            notes.append("the thumbnail shows a rendered overlay")
    size = record.original_size or (photo.size if photo is not None else None)
    data, labels = _write_data(record, out_dir, key, notes)
    return {
        "key": key,
        "name": str(record.stem),
        "image": record.image,
        "size": list(size) if size else None,
        "model": record.text("model"),
        "method": record.text("method"),
        "stride": record.text("stride"),
        "activation": record.activation,
        "top": [[c.index, c.name, c.score] for c in record.ranking],
        "rendered": [
            [c.index, c.name, c.score, _url(folder / c.overlay) if c.overlay else None, c.exact]
            for c in record.rendered
        ],
        "fidelity": record.fidelity,
        "range": list(record.colour_range) if record.colour_range else None,
        "thumb": thumb,
        "photo": shown,
        "photo_size": list(shown_size) if shown_size else None,
        "data": data,
        "labels": labels,
        "notes": notes,
    }


def _picture_of(record: ImageRecord, folder: Path) -> Path:
    """What the gallery shows of an input: the photo, or a slide's thumbnail.

    Never the slide itself, which may be gigapixels that no single decode should hold.
    """
    thumbnail = record.fields.get("thumbnail")
    if record.fields.get("kind") == "slide" and isinstance(thumbnail, str):
        return folder / thumbnail
    return Path(record.image)


def _read_photo(source: Path, notes: list[str]) -> Image.Image | None:
    """The source photo (relative paths from the working folder, as the run named them)."""
    try:
        # The run read this file already, with whatever limit it was given. The report shows
        # pictures, not scores, so a large JPEG may be decoded reduced (draft).
        largest_needed = functools.partial(display_size, max_side=PHOTO_SIDE)
        return read_photo(source, max_pixels=None, needed=largest_needed).image
    except ImageReadError as error:
        notes.append(f"photo {source} not readable ({error.reason})")
        return None


def _read_or_none(path: Path) -> Image.Image | None:
    try:
        return read_image(path, max_pixels=None)
    except ImageReadError:
        return None


def _write_jpeg(
    photo: Image.Image, side: int, quality: int, path: Path
) -> tuple[str, tuple[int, int]]:
    """Writes ``photo`` shrunk to fit ``side``; returns its relative URL and its size."""
    picture = photo.copy()
    picture.thumbnail((side, side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    with atomic_writer(path, "wb", fsync=False) as file:  # rebuilt from the outputs if lost
        file.write(buffer.getbuffer())
    return _url(PurePosixPath(ASSETS_DIR_NAME, path.name)), picture.size


def _write_data(
    record: ImageRecord, out_dir: Path, key: str, notes: list[str]
) -> tuple[str | None, str | None]:
    """Writes the grid data and class names; returns their URLs, or notes why there are none."""
    npz = _grid_file(record, out_dir)
    if not npz.exists():
        notes.append(f"no {npz.name}: the run wrote no grid, so only rendered overlays are shown")
        return None, None
    rows, cols = record.grid or (0, 0)
    if rows * cols > MAX_HOVER_CELLS:  # known from the json: the grid is not even read
        notes.append(
            f"{npz.name} has {rows * cols} cells, too many to hover in a page; it holds them"
        )
        return None, None
    try:
        grid = read_score_store(npz) if npz.suffix == ".zarr" else read_score_file(npz)
        cells = grid.scores.shape[1] * grid.scores.shape[2]
        if cells > MAX_HOVER_CELLS:
            notes.append(
                f"{npz.name} has {cells} cells, too many to hover in a page; it holds them"
            )
            return None, None
        keep = [c.index for c in (*record.rendered, *record.ranking)]
        data = encode_grid(grid, keep)
    except GridDataError as error:
        notes.append(f"{npz.name} cannot be drawn: {first_line(error)}")
        return None, None
    indices = sorted(grid.names)
    table = {
        "indices": None if indices == list(range(len(indices))) else indices,
        "names": [grid.names[i] for i in indices],
    }
    table_text = json.dumps(table, ensure_ascii=True, separators=(",", ":"))
    labels_hash = hashlib.sha1(table_text.encode("ascii")).hexdigest()[:12]
    labels_path = out_dir / ASSETS_DIR_NAME / f"labels-{labels_hash}.js"
    if not labels_path.is_file():
        _write_script(labels_path, "receiveLabels", labels_hash, table_text)
    data["labels"] = labels_hash
    data["value"] = "score" if record.activation == "sigmoid" else "probability"
    data_path = out_dir / ASSETS_DIR_NAME / f"{key}.d.js"
    _write_script(data_path, "receive", key, json.dumps(data, separators=(",", ":")))
    return (
        _url(PurePosixPath(ASSETS_DIR_NAME, data_path.name)),
        _url(PurePosixPath(ASSETS_DIR_NAME, labels_path.name)),
    )


def _grid_file(record: ImageRecord, out_dir: Path) -> Path:
    """The image's grid file: the one its json names (a slide's ``.zarr``), else its ``.npz``."""
    grid = record.fields.get("grid")
    name = grid.get("file") if isinstance(grid, dict) else None
    if isinstance(name, str) and name == PurePosixPath(name).name and name not in ("", ".", ".."):
        return out_dir / record.stem.parent / name
    return out_dir / f"{record.stem}.npz"


def _write_script(path: Path, method: str, key: str, payload: str) -> None:
    text = f"heatmapReport.{method}({json.dumps(key)}, {payload});\n"
    with atomic_writer(path, "w", fsync=False) as file:
        file.write(text)


def _url(path: PurePosixPath) -> str:
    """A relative URL for a relative path (spaces, ``#`` and ``?`` escaped).

    The name's own bytes are escaped: UTF-8 for every valid name, and a name that is not valid
    UTF-8 (``caf%E9.png``) still points at its file.
    """
    return quote(str(path).encode("utf-8", "surrogateescape"), safe="/")
