"""Scored tiles kept on disk, so that a slide that takes an hour resumes where it stopped.

A :class:`GridStore` holds a slide's logits ``(K, rows, cols)`` float32 in a ``.npy`` file that
the tiles write into with positioned writes (no memory map: the grid never counts against the
process's memory, however large), and the list of the tiles already scored in ``state.json``.
:meth:`GridStore.checkpoint` makes both durable: the data is synced first, then the list is
replaced atomically, so a tile listed is always a tile written, whenever the process stops
(Ctrl-C, a kill, a power cut); an unlisted tile is simply scored again.

The state records a *key* (the settings that change the numbers: model, stride, method, mpp,
level, tile plan...). A store whose key or shape differs from the current run's is started
afresh, never mixed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io import atomic_writer
from heatmap_cli.io._oserror import os_reason

__all__ = ["CHECKPOINT_SECONDS", "GridStore"]

CHECKPOINT_SECONDS = 10.0
"""At most this long between checkpoints while tiles are being scored."""

_DATA, _STATE = "logits.npy", "state.json"


class GridStore:
    """A slide's logits, in memory (``folder`` None) or in a resumable folder.

    Args:
        shape: ``(K, rows, cols)``.
        folder: Where the scored tiles are kept across runs; None keeps them in memory.
        key: What the numbers depend on; a folder made under another key is started afresh.

    Attributes:
        done: Indices of the tiles already scored (from an earlier run, or this one).
        resumed: How many of them an earlier run scored.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        folder: Path | None = None,
        key: Mapping[str, object] | None = None,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.folder = folder
        self.key = json.loads(json.dumps(dict(key or {})))
        self.done: set[int] = set()
        self._last_checkpoint = time.monotonic()
        self._array: np.ndarray | None = None
        self._fd: int | None = None
        self._offset = 0
        if folder is None:
            self._array = np.zeros(self.shape, dtype=np.float32)
        else:
            self._open_folder(folder)
        self.resumed = len(self.done)

    def _open_folder(self, folder: Path) -> None:
        data = folder / _DATA
        try:
            folder.mkdir(parents=True, exist_ok=True)
            state = self._read_state(folder)
            if state is None or not data.is_file():
                for stale in (folder / _STATE, data):
                    stale.unlink(missing_ok=True)
                np.lib.format.open_memmap(data, "w+", np.float32, self.shape).flush()
            else:
                self.done = {int(index) for index in state["done"]}
            with data.open("rb") as file:
                np.lib.format.read_magic(file)
                np.lib.format.read_array_header_1_0(file)
                self._offset = file.tell()
            self._fd = os.open(data, os.O_RDWR)
        except OSError as error:
            raise OutputWriteError(
                f"cannot keep scored tiles in {folder}: {os_reason(error)}"
            ) from error

    def _read_state(self, folder: Path) -> dict[str, object] | None:
        try:
            state = json.loads((folder / _STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            return None
        if state.get("shape") != list(self.shape) or not isinstance(state.get("done"), list):
            return None
        return state

    def write(self, rows: slice, cols: slice, values: np.ndarray) -> None:
        """Writes a block of cells: ``values`` float32 ``(K, len(rows), len(cols))``."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        if self._array is not None:
            self._array[:, rows, cols] = values
            return
        assert self._fd is not None
        _, grid_rows, grid_cols = self.shape
        for k in range(values.shape[0]):
            for offset_row in range(values.shape[1]):
                cell = (k * grid_rows + rows.start + offset_row) * grid_cols + cols.start
                os.pwrite(self._fd, values[k, offset_row].tobytes(), self._offset + 4 * cell)

    def mark_done(self, index: int) -> None:
        """Records a tile as scored (durable at the next :meth:`checkpoint`)."""
        self.done.add(int(index))
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Makes the tiles written so far, and their list, durable (data first)."""
        self._last_checkpoint = time.monotonic()
        if self.folder is None or self._fd is None:
            return
        os.fsync(self._fd)
        state = {"key": self.key, "shape": list(self.shape), "done": sorted(self.done)}
        with atomic_writer(self.folder / _STATE, "w") as file:
            file.write(json.dumps(state))

    def logits(self) -> np.ndarray:
        """float32 ``(K, rows, cols)``: the grid (a read-only memory map when kept on disk)."""
        if self._array is not None:
            return self._array
        assert self.folder is not None
        return np.load(self.folder / _DATA, mmap_mode="r")

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """float32 ``(K, stop - start, cols)``: a band of rows, read into memory.

        Read with positioned reads, not a memory map, so that reading a whole grid band by
        band never holds more of it than one band (a map's pages count as resident memory).

        Raises:
            OutputWriteError: The kept file is shorter than the grid (cut by something else).
        """
        if self._array is not None:
            return np.array(self._array[:, start:stop], dtype=np.float32)
        assert self.folder is not None
        count, rows, cols = self.shape
        band = np.empty((count, max(0, stop - start), cols), dtype=np.float32)
        if not band.size:
            return band
        with (self.folder / _DATA).open("rb") as file:
            for k in range(count):
                file.seek(self._offset + 4 * (k * rows + start) * cols)
                if file.readinto(memoryview(band[k]).cast("B")) != band[k].nbytes:
                    raise OutputWriteError(f"the scored tiles in {self.folder} are truncated")
        return band

    def close(self) -> None:
        """Closes the data file (after a last checkpoint)."""
        if self._fd is not None:
            self.checkpoint()
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Closes and removes the folder: the slide's outputs are complete, or it failed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
