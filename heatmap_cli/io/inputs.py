"""Finding inputs: files and folders to images, and output stems that mirror the folders.

:func:`find_images` expands files and folders into ``(path, stem)`` pairs whose stems mirror the
input folder structure and never collide; :func:`output_path` joins an output folder, a stem and
a suffix. Hidden files and folders are skipped, so the writers' temporaries
(``.<name>.<pid>-<8 hex>.tmp``) are never mistaken for inputs.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path, PurePath
from typing import NamedTuple

from heatmap_cli.errors import ImageReadError
from heatmap_cli.io._oserror import os_reason

__all__ = [
    "IMAGE_EXTENSIONS",
    "ErrorHandler",
    "ImageInput",
    "find_images",
    "output_path",
    "slug",
]

ErrorHandler = Callable[[ImageReadError], None]
"""Called with each input or folder entry that cannot be read (see :func:`find_images`)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {"jpg", "jpeg", "jpe", "jfif", "png", "apng", "gif", "bmp", "tif", "tiff", "webp"}
    | {"ppm", "pgm", "pbm", "pnm"}  # Netpbm
    | {"svs", "ndpi", "scn", "bif", "qptiff", "mrxs", "vms", "vmu", "svslide", "btf"}  # slides
)
"""Lower-case extensions (no dot) that folder expansion picks up."""


class ImageInput(NamedTuple):
    """One image to process; unpacks as ``path, stem``.

    Attributes:
        path: The file to read, as given or joined below a given folder (not resolved).
        stem: Relative output stem without extension, e.g. ``a/x`` for ``photos/a/x.jpg``
            when ``photos`` was given; join it with :func:`output_path`.
    """

    path: Path
    stem: Path


def find_images(
    inputs: Sequence[Path],
    *,
    exclude: Sequence[Path] = (),
    on_error: ErrorHandler | None = None,
) -> list[ImageInput]:
    """Expand files and folders into images and unique output stems.

    Folders are searched recursively for files whose extension is in
    :data:`IMAGE_EXTENSIONS` (case-insensitive); hidden files and folders (name starting
    with ``"."``) are skipped and symbolic links are followed (each real folder once). A
    file given explicitly is always included, whatever its name. Stems mirror the folder
    structure below each folder input (``photos/a/x.jpg`` -> ``a/x``); a file input gets
    its bare stem (``x.jpg`` -> ``x``).

    Order is deterministic: inputs in the order given, each folder's images sorted by
    relative path. A file reached twice (a folder and a file inside it, or two links to
    it) is kept once, at its first position.

    Output stems never collide, compared case-insensitively and after Unicode NFC
    normalisation (macOS and Windows file systems would merge them):

    1. Stems that collide keep their file extension, all of them: ``x.jpg`` and ``x.png``
       in one folder become stems ``x.jpg`` and ``x.png`` (never ``x``, which would be
       ambiguous).
    2. Stems still colliding (the same name from two folders given as files, or from two
       folder inputs) get ``~2``, ``~3``... in order; the first keeps its name:
       ``a/x.jpg b/x.jpg`` -> ``x.jpg``, ``x.jpg~2``.

    Args:
        inputs: Files and folders, in command-line order.
        exclude: Folders not to descend into (e.g. the output folder when it lies inside
            an input folder, so overlays are not read back as inputs). A folder given in
            ``inputs`` is searched even if excluded.
        on_error: Called with an ``ImageReadError`` for every input or folder entry that
            cannot be read (a symbolic link loop, a folder that cannot be listed, an entry
            whose type cannot be read), which is then left out and the search goes on, as
            ``os.walk``'s ``onerror``. Without it, the first such error is raised.

    Returns:
        ``ImageInput(path, stem)`` pairs; empty if the folders hold no images.

    Raises:
        ImageReadError: An input does not exist; without ``on_error``, also an input or
            entry that cannot be read. Raised before any image is read, so the caller can
            stop with a clear message.
    """
    report = on_error or _raise
    excluded = {os.path.realpath(folder) for folder in exclude}
    visited_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    found: list[tuple[Path, Path, Path]] = []  # (path, stem, stem with extension)
    for given in map(Path, inputs):
        for real, path, stem, full in _expand(given, excluded, visited_dirs, report):
            if real not in seen_files:
                seen_files.add(real)
                found.append((path, stem, full))
    stems = _unique_stems([(stem, full) for _, stem, full in found])
    return [ImageInput(path, stem) for (path, _, _), stem in zip(found, stems, strict=True)]


def _raise(error: ImageReadError) -> None:
    raise error


def _unreadable(path: Path, reason: str, cause: OSError) -> ImageReadError:
    error = ImageReadError(path, reason)
    error.__cause__ = cause
    return error


def _expand(
    given: Path, excluded: set[str], visited_dirs: set[tuple[int, int]], report: ErrorHandler
) -> list[tuple[str, Path, Path, Path]]:
    """One input's images as ``(real path, path, stem, stem with extension)``, in order.

    Raises:
        ImageReadError: The input does not exist.
    """
    # os.stat rather than Path.is_dir/exists, which hide permission errors as "absent".
    try:
        is_folder = stat.S_ISDIR(given.stat().st_mode)
    except FileNotFoundError as exc:
        if not given.is_symlink():
            raise ImageReadError(given, "no such file or directory") from exc
        is_folder = False
    except OSError as exc:  # a link loop, a folder on the way that cannot be searched
        report(_unreadable(given, os_reason(exc), exc))
        return []
    if not is_folder:
        # Files given explicitly are taken whatever their name; a broken link too, so that
        # reading it reports the problem.
        name = Path(given.name)
        return [(os.path.realpath(given), given, Path(name.stem) if name.suffix else name, name)]
    images = []
    for relative, real in _walk(given, excluded, visited_dirs, report):
        extension_length = len(relative.name.rsplit(".", 1)[1]) + 1
        stem = relative.with_name(relative.name[:-extension_length])
        images.append((real, given / relative, stem, relative))
    return images


def _walk(
    root: Path, excluded: set[str], visited: set[tuple[int, int]], report: ErrorHandler
) -> list[tuple[Path, str]]:
    """List image files below ``root``, sorted by relative path.

    Args:
        root: A folder.
        excluded: Real paths of folders to skip below ``root``.
        visited: ``(device, inode)`` of folders already searched; updated.
        report: Receives every folder or entry that cannot be read; the walk goes on.

    Returns:
        ``(path relative to root, real path)`` per file.
    """
    found: list[tuple[Path, str]] = []
    try:
        info = root.stat()
    except OSError as exc:
        report(_unreadable(root, os_reason(exc), exc))
        return found
    if (info.st_dev, info.st_ino) in visited:
        return found
    visited.add((info.st_dev, info.st_ino))
    pending: list[Path] = [Path()]
    while pending:
        relative_dir = pending.pop()
        folder = root / relative_dir
        # One realpath per folder, not per file: 10,000 photos would cost a second.
        real_folder = os.path.realpath(folder)
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    relative = relative_dir / entry.name
                    try:
                        kind = _kind(entry, excluded, visited)
                    except OSError as exc:  # a link loop, an entry that cannot be examined
                        report(_unreadable(root / relative, os_reason(exc), exc))
                        continue
                    if kind == "folder":
                        pending.append(relative)
                    elif kind == "link":
                        found.append((relative, os.path.realpath(entry.path)))
                    elif kind == "file":
                        found.append((relative, os.path.join(real_folder, entry.name)))
        except OSError as exc:
            report(_unreadable(folder, f"cannot list folder: {os_reason(exc)}", exc))
    found.sort(key=lambda item: item[0].parts)
    return found


def _kind(entry: os.DirEntry[str], excluded: set[str], visited: set[tuple[int, int]]) -> str:
    """``"folder"`` to search (marked visited), ``"file"`` or ``"link"`` to read, or ``""``.

    Raises:
        OSError: The entry cannot be examined (a symbolic link loop, no permission).
    """
    if entry.is_dir():
        info = entry.stat()
        key = (info.st_dev, info.st_ino)
        if key in visited or os.path.realpath(entry.path) in excluded:
            return ""
        visited.add(key)
        return "folder"
    if not _has_image_extension(entry.name):
        return ""
    if entry.is_symlink():  # a broken link is kept so that reading it reports the problem
        return "link"
    return "file" if entry.is_file() else ""


def _has_image_extension(name: str) -> bool:
    """Whether ``name`` ends with one of :data:`IMAGE_EXTENSIONS`."""
    _, dot, extension = name.rpartition(".")
    return bool(dot) and extension.lower() in IMAGE_EXTENSIONS


def _collision_key(stem: PurePath) -> str:
    """Key under which two stems would name the same file on any common file system."""
    return unicodedata.normalize("NFC", stem.as_posix()).casefold()


def _unique_stems(candidates: Sequence[tuple[Path, Path]]) -> list[Path]:
    """Apply the collision policy of :func:`find_images`.

    Args:
        candidates: ``(stem, stem with extension)`` per image, in output order.

    Returns:
        One unique stem per candidate.
    """
    counts = Counter(_collision_key(stem) for stem, _ in candidates)
    stems = [full if counts[_collision_key(stem)] > 1 else stem for stem, full in candidates]
    reserved = {_collision_key(stem) for stem in stems}
    taken: set[str] = set()
    unique: list[Path] = []
    for stem in stems:
        key = _collision_key(stem)
        if key in taken:
            number = 2
            while True:
                candidate = stem.with_name(f"{stem.name}~{number}")
                key = _collision_key(candidate)
                if key not in reserved and key not in taken:
                    stem = candidate
                    break
                number += 1
        taken.add(key)
        unique.append(stem)
    return unique


def output_path(out_dir: Path, stem: PurePath, suffix: str) -> Path:
    """Join an output folder, a stem and a suffix.

    Use this rather than ``Path.with_suffix``: stems may contain dots (``photo.v2``, or
    ``x.jpg`` after disambiguation) that ``with_suffix`` would replace.

    Args:
        out_dir: The output folder.
        stem: A relative stem from :func:`find_images`.
        suffix: Appended verbatim, e.g. ``".npz"`` or ``"_cat.png"``.

    Returns:
        ``out_dir / stem.parent / (stem.name + suffix)``.
    """
    return Path(out_dir) / stem.parent / f"{stem.name}{suffix}"


def slug(name: str, max_length: int = 40) -> str:
    """A file-name-safe form of a class name: ``"tiger cat"`` -> ``"tiger_cat"``."""
    kept = "".join(c if c.isalnum() else "_" for c in name.casefold())
    collapsed = "_".join(part for part in kept.split("_") if part)
    return collapsed[:max_length] or "class"
