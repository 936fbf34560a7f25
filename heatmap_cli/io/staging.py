"""Writing a set of files privately, then moving them into place: a run removes only its own files.

One image's outputs (overlays, sheet, npz, json) are written into a private folder next to their
destination, hidden and named like every temporary (``.<name>.<pid>-<8 hex>.tmp``), and
:meth:`Staging.commit` then moves them into the destination one by one with ``os.replace``, in
the order given: the completion marker (the json) last. Whatever happens, leaving
:func:`staged_files` removes the private folder and whatever is still in it, and nothing else.

So nothing is ever deleted by name in the destination. Two runs writing the same image into one
output folder (an accidental double start, or two workers) each keep their files private until
they move them, and an interrupted run cannot delete a file another run moved into place: with
equal settings both produce the same files, so whichever moves last, the image is complete.
A run killed with SIGKILL leaves its private folder behind; the next run removes it at start
(:func:`~heatmap_cli.io.atomic.remove_stale_temporaries`: its pid is gone).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io._oserror import os_reason
from heatmap_cli.io.atomic import make_folders, temporary_name

__all__ = ["Staging", "staged_files"]


class Staging:
    """A private folder whose files are moved into a destination folder by :meth:`commit`.

    Attributes:
        folder: The private folder: write the files here, under their final names.
        destination: Where :meth:`commit` moves them.
    """

    def __init__(self, folder: Path, destination: Path) -> None:
        self.folder = folder
        self.destination = destination

    def commit(self, names: Sequence[str]) -> list[Path]:
        """Moves files from the private folder into the destination, in order.

        Each move is one atomic rename, which replaces a file of the same name. A folder (a
        zarr store) replaces a folder of the same name in two renames: the old one is moved
        aside first, so for a moment neither is in place. Put the file whose presence says the
        set is complete last.

        Args:
            names: File names in the private folder.

        Returns:
            The files' paths in the destination, in order.

        Raises:
            OutputWriteError: A file cannot be moved (e.g. a folder has its name); the files
                moved before it stay, the others stay private and are removed.
        """
        moved = []
        for name in names:
            target = self.destination / name
            try:
                if (self.folder / name).is_dir() and target.is_dir() and not target.is_symlink():
                    # a folder (a zarr store) cannot replace a folder: the old one is moved
                    # aside into the private folder, removed with it
                    os.replace(target, self.folder / temporary_name(name))
                os.replace(self.folder / name, target)
            except OSError as exc:
                raise OutputWriteError(f"cannot write {target}: {os_reason(exc)}") from exc
            moved.append(target)
        return moved


@contextlib.contextmanager
def staged_files(destination: Path, label: str) -> Iterator[Staging]:
    """A private folder next to ``destination``'s files, removed with its content on exit.

    Args:
        destination: The folder the files belong in (created if missing).
        label: Part of the private folder's name, for whoever finds one (e.g. the image's stem).

    Yields:
        The staging area; files written in ``staging.folder`` and not committed are removed
        when the block ends, normally or by any exception (``KeyboardInterrupt`` included).

    Raises:
        OutputWriteError: The destination or the private folder cannot be created.
    """
    folder = _make_private_folder(Path(destination), label)
    try:
        yield Staging(folder, Path(destination))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _make_private_folder(destination: Path, label: str) -> Path:
    make_folders(destination, destination)
    while True:
        folder = destination / temporary_name(label)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputWriteError(f"cannot write into {destination}: {os_reason(exc)}") from exc
