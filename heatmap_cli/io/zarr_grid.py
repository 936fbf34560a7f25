"""A grid too large for memory, written as a zarr directory store in chunks.

A slide's grid at a fine stride passes what a process should hold (156 million cells at stride 8
on a 100k x 100k slide: 1.25 GB per float32 map); a ``.npz`` is one zip of whole arrays, so it
cannot be written without them. A zarr store is a folder of chunks, written a band of rows at a
time, and read by zarr (2 and 3), xarray, dask and tensorstore without loading it whole.

The store is written in **Zarr format 2** (``.zarray``/``.zattrs``, consolidated metadata in
``.zmetadata``): the format both zarr-python 2 (as WSInfer's environment pins it) and 3 read.
Writing and reading take zarr-python 2 (2.11 or later) or 3 (the ``slides`` extra brings it:
``pip install "heatmap-cli[slides]"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io._oserror import os_reason

__all__ = ["ZARR_CHUNK", "ZarrGridWriter", "read_zarr_arrays", "zarr_module"]

ZARR_CHUNK = 512
"""Cells per chunk side, along rows and columns (1 MiB of float32 per class and chunk)."""

_INSTALL = 'pip install "heatmap-cli[slides]"'


def zarr_module() -> ModuleType:
    """The zarr package (zarr-python 2.11 or later, or 3), imported.

    Raises:
        OutputWriteError: zarr is missing or too old (the message says how to install it).
    """
    try:
        import zarr
    except ImportError:
        raise OutputWriteError(f"zarr is not installed: {_INSTALL}") from None
    if _major(zarr) < 2:
        raise OutputWriteError(f"zarr {zarr.__version__} is too old (2.11 or later): {_INSTALL}")
    return zarr


def _major(zarr: ModuleType) -> int:
    major = str(getattr(zarr, "__version__", "0")).split(".", 1)[0]
    return int(major) if major.isdigit() else 0


class ZarrGridWriter:
    """Writes named arrays into a new zarr store (format 2) block by block.

    Args:
        path: The store's folder (must not exist yet, or is replaced).
        arrays: ``name -> (shape, dtype, chunks, fill value)``.
        attributes: The group's attributes (JSON values: the grid's scalars).

    Raises:
        OutputWriteError: zarr is missing, or the store cannot be created.
    """

    def __init__(
        self,
        path: Path,
        arrays: Mapping[str, tuple[tuple[int, ...], Any, tuple[int, ...], Any]],
        attributes: Mapping[str, object],
    ) -> None:
        self._zarr = zarr_module()
        self.path = Path(path)
        # zarr-python 3 writes format 3 unless told; 2 writes only format 2, its own way
        self._format = {"zarr_format": 2} if _major(self._zarr) >= 3 else {}
        try:
            self._group = self._zarr.open_group(store=str(path), mode="w", **self._format)
            create = self._group.create_array if self._format else self._group.create_dataset
            self._arrays = {
                name: create(name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill)
                for name, (shape, dtype, chunks, fill) in arrays.items()
            }
            self._group.attrs.update(json.loads(json.dumps(dict(attributes))))
        except OSError as error:
            raise OutputWriteError(f"cannot write {path}: {os_reason(error)}") from error

    def write(self, name: str, index: tuple[slice, ...], values: np.ndarray) -> None:
        """Writes ``values`` into ``name[index]`` (bands aligned on chunks write each once)."""
        try:
            self._arrays[name][index] = values
        except OSError as error:
            raise OutputWriteError(f"cannot write {self.path}: {os_reason(error)}") from error

    def close(self) -> None:
        """Writes the consolidated metadata (readers open the store with one read)."""
        try:
            self._zarr.consolidate_metadata(str(self.path), **self._format)
        except OSError as error:
            raise OutputWriteError(f"cannot write {self.path}: {os_reason(error)}") from error


def read_zarr_arrays(
    path: Path, names: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Reads whole arrays (those of ``names`` present) and the attributes of a zarr store.

    Raises:
        OutputWriteError: zarr is missing.
        OSError, ValueError, KeyError: The store cannot be read.
    """
    zarr = zarr_module()
    group = zarr.open_group(store=str(path), mode="r")
    present = set(group.array_keys())
    arrays = {name: np.asarray(group[name][...]) for name in names if name in present}
    return arrays, dict(group.attrs)
