"""Per-slide tables that pathology tools read: WSInfer's CSV and a QuPath GeoJSON.

* :func:`write_tile_csv`: one row per tile, ``minx,miny,width,height,prob_<class>...`` in
  level-0 pixels (WSInfer's columns, so its consumers work unchanged);
* :func:`write_tile_geojson`: a GeoJSON ``FeatureCollection`` of square tile polygons with
  their scores as QuPath measurements (``objectType: "tile"``, ``isLocked``), as WSInfer writes
  it; QuPath imports it with File > Import objects.

Both are written atomically, streamed in chunks (a million rows never become one string), and
their numbers carry 7 significant digits.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from heatmap_cli.io.atomic import atomic_writer

__all__ = [
    "probability_columns",
    "write_tile_csv",
    "write_tile_csv_parts",
    "write_tile_geojson",
]

_CHUNK = 65536
_NAMESPACE = uuid.UUID("6f0c3a55-7d51-4bb9-9d5e-2f3e8f6a1c11")  # this tool's tile ids


def probability_columns(names: Sequence[str], prefix: str = "prob_") -> list[str]:
    """``prob_<name>`` per class, as WSInfer names its columns."""
    return [f"{prefix}{name}" for name in names]


def write_tile_csv(path: Path, boxes: np.ndarray, values: np.ndarray, names: Sequence[str]) -> None:
    """Writes a tile table in WSInfer's columns.

    Args:
        path: The ``.csv`` file.
        boxes: int ``(n, 4)``: ``minx, miny, width, height`` in level-0 pixels.
        values: float ``(n, K)``: each tile's score per class.
        names: The ``K`` class names (columns ``prob_<name>``).
    """
    write_tile_csv_parts(path, [(boxes, values)], names)


def write_tile_csv_parts(
    path: Path, parts: Iterable[tuple[np.ndarray, np.ndarray]], names: Sequence[str]
) -> None:
    """Writes a tile table given in parts (e.g. a grid's bands of rows), one after the other.

    Args:
        path: The ``.csv`` file.
        parts: ``(boxes, values)`` pairs as :func:`write_tile_csv` takes them; consumed once,
            so a generator keeps only one part in memory.
        names: The ``K`` class names (columns ``prob_<name>``).
    """
    header = io.StringIO()
    csv.writer(header, lineterminator="\n").writerow(
        ["minx", "miny", "width", "height", *probability_columns(names)]
    )
    row_format = ",".join(["%d"] * 4 + ["%.7g"] * len(names))
    with atomic_writer(path, "w") as file:
        file.write(header.getvalue())
        for boxes, values in parts:
            for start in range(0, len(boxes), _CHUNK):
                stop = start + _CHUNK
                rows = zip(boxes[start:stop].tolist(), values[start:stop].tolist(), strict=True)
                file.write("".join(row_format % (*box, *row) + "\n" for box, row in rows))


def write_tile_geojson(
    path: Path,
    boxes: np.ndarray,
    values: np.ndarray,
    names: Sequence[str],
    *,
    name: str = "",
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Writes tiles as a QuPath-importable GeoJSON ``FeatureCollection``.

    Args:
        path: The ``.geojson`` file.
        boxes: int ``(n, 4)``: ``minx, miny, width, height`` in level-0 pixels.
        values: float ``(n, K)``: scores, written as measurements ``prob_<name>``.
        names: The ``K`` class names.
        name: Seeds the features' ids (stable UUIDs: the same slide gives the same ids).
        extra: More measurements per tile, ``name -> (n,)`` numbers (e.g. cells averaged).
    """
    columns = probability_columns(names)
    extra = extra or {}
    with atomic_writer(path, "w") as file:
        file.write('{"type": "FeatureCollection", "features": [')
        for start in range(0, len(boxes), _CHUNK):
            parts = []
            for offset, (box, row) in enumerate(
                zip(boxes[start : start + _CHUNK], values[start : start + _CHUNK], strict=True)
            ):
                index = start + offset
                measurements = {c: float(f"{v:.7g}") for c, v in zip(columns, row, strict=True)}
                for key, column in extra.items():
                    measurements[key] = float(column[index])
                parts.append(_feature(box, measurements, f"{name}/{index}"))
            file.write(("," if start else "") + ",".join(parts))
        file.write("]}\n")


def _feature(box: np.ndarray, measurements: dict[str, float], seed: str) -> str:
    minx, miny, width, height = (int(v) for v in box)
    maxx, maxy = minx + width, miny + height
    ring = [[maxx, miny], [maxx, maxy], [minx, maxy], [minx, miny], [maxx, miny]]
    return json.dumps(
        {
            "type": "Feature",
            "id": str(uuid.uuid5(_NAMESPACE, seed)),
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"isLocked": True, "measurements": measurements, "objectType": "tile"},
        },
        separators=(",", ":"),
        allow_nan=False,
    )
