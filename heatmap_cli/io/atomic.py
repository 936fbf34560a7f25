r"""Writing result files atomically: a file has its old content or its complete new content.

Every output goes through :func:`atomic_writer`, so a file is never half-written, even if the
process is interrupted. That is what makes ``--skip-existing`` safe: an output that exists is
complete.

Stale temporary files:
    Temporary files (and the staging folders of :mod:`~heatmap_cli.io.staging`) are named
    ``.<name>.<pid>-<8 hex>.tmp`` next to their target and are removed on any exception,
    ``KeyboardInterrupt`` included. A process killed with SIGKILL (or a power cut) cannot
    clean up; its temporaries are hidden, never mistaken for outputs or inputs
    (``find_images`` skips hidden files) and are deleted by :func:`remove_stale_temporaries`,
    which the CLI calls on the output folder at start-up: those of a process that no longer
    runs (the pid in the name is gone) whatever their age, and any older than an hour (a pid
    may have been reused). A concurrent run's live temporaries are left alone.

Names that are not valid UTF-8 (``caf\xe9.jpg`` from an old disk) reach Python as strings with
surrogate escapes; files are named with the same bytes, and :func:`write_json` writes such
characters as ``\udcxx`` escapes, which ``json.loads`` reads back to the same string.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePath
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

import numpy as np
from PIL import Image

from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io._oserror import os_reason
from heatmap_cli.io.png import encode_png

__all__ = [
    "IMAGE_FORMATS",
    "atomic_writer",
    "is_temporary_name",
    "make_folders",
    "remove_stale_temporaries",
    "temporary_name",
    "write_image",
    "write_json",
    "write_npz",
    "write_png",
]

_NPY_SLICE = 1 << 20  # bytes of an array deflated at a time into an npz

_TEMP_NAME_RE = re.compile(r"^\..*\.(\d+)-[0-9a-f]{8}\.tmp$", re.DOTALL)
# Keeps temporary names under the usual 255-byte limit even for 4-byte UTF-8 characters.
_TEMP_NAME_CHARS = 50
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def temporary_name(name: str) -> str:
    """A new hidden name for a temporary next to ``name``: ``.<name>.<pid>-<8 hex>.tmp``.

    Args:
        name: The final file's name (cut to 50 characters).

    Returns:
        A name that :func:`is_temporary_name` recognises, unique with high probability.
    """
    return f".{name[:_TEMP_NAME_CHARS]}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_writer`'s temporaries.

    Args:
        name: A file name without folders.

    Returns:
        True for names like ``.photo.json.4242-0123abcd.tmp``.
    """
    return _TEMP_NAME_RE.match(name) is not None


@overload
def atomic_writer(
    path: Path, mode: Literal["wb"] = "wb", *, fsync: bool = True
) -> contextlib.AbstractContextManager[BinaryIO]: ...


@overload
def atomic_writer(
    path: Path, mode: Literal["w"], *, fsync: bool = True
) -> contextlib.AbstractContextManager[TextIO]: ...


def atomic_writer(
    path: Path, mode: Literal["wb", "w"] = "wb", *, fsync: bool = True
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Write a file so that readers see either its old or its complete new content.

    The content goes to a temporary file in the same folder (``.<name>.<pid>-<hex>.tmp``,
    created exclusively, so unique per process and thread), which is flushed, fsync'd and
    then renamed over ``path`` with ``os.replace`` when the ``with`` block ends normally.
    On any exception, ``KeyboardInterrupt`` included, the temporary file is removed and
    ``path`` is left as it was. Missing parent folders are created. The file gets the
    usual permissions (``0o666`` minus the umask).

    Args:
        path: The final file.
        mode: ``"wb"`` for bytes, ``"w"`` for UTF-8 text (no newline translation).
        fsync: Flush the data to disk before the rename; turn off only for scratch
            output where speed matters more than surviving a power cut.

    Returns:
        A context manager yielding the open temporary file.

    Raises:
        OutputWriteError: The folder or file cannot be created, written or renamed
            (permission denied, read-only or full disk, a parent that is a file, a target
            that is a folder). ``OSError`` raised inside the block is wrapped the same way.
        ValueError: ``mode`` is neither ``"wb"`` nor ``"w"``.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    return _atomic_writer(Path(path), mode, fsync)


@contextlib.contextmanager
def _atomic_writer(path: Path, mode: str, fsync: bool) -> Iterator[IO[Any]]:
    """Implement :func:`atomic_writer`."""
    _make_parent(path)
    fd, temporary = _create_temporary(path)
    committed = False
    try:
        text_options = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        try:
            file = os.fdopen(fd, mode, **text_options)
        except BaseException:
            os.close(fd)
            raise
        with file:
            yield file
            file.flush()
            if fsync:
                os.fsync(file.fileno())
        os.replace(temporary, path)
        committed = True
    except OSError as exc:
        raise OutputWriteError(f"cannot write {path}: {os_reason(exc)}") from exc
    finally:
        if not committed:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _make_parent(path: Path) -> None:
    """Create the parent folders of ``path``, raising OutputWriteError on failure."""
    make_folders(path.parent, path)


def make_folders(folder: Path, target: Path) -> None:
    """Create ``folder`` and its parents, to write ``target`` (a file in it, or itself).

    Raises:
        OutputWriteError: Naming ``target``: a parent is a file, or a folder cannot be created.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputWriteError(
            f"cannot write {target}: {folder} or one of its parents is not a folder"
        ) from exc
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write {target}: cannot create folder {folder}: {os_reason(exc)}"
        ) from exc


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create and open a new, uniquely named temporary file next to ``path``.

    Returns:
        The open file descriptor and the temporary path.
    """
    while True:
        temporary = path.with_name(temporary_name(path.name))
        try:
            # Not tempfile.mkstemp: its 0o600 would end up on the final file.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputWriteError(f"cannot write {path}: {os_reason(exc)}") from exc


IMAGE_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
"""The picture formats :func:`write_image` writes, by file extension (no dot)."""

_LOSSY_QUALITY = 90  # JPEG and WebP: no visible artefact on a colour map over a photo


def write_image(
    path: Path,
    image: np.ndarray,
    *,
    image_format: str = "png",
    compress_level: int = 1,
    icc_profile: bytes | None = None,
) -> None:
    """Write an 8-bit RGB array as a PNG, JPEG or WebP file, atomically.

    Args:
        path: The final file (its name is used as given).
        image: uint8 array of shape (H, W, 3), or (H, W, 4) for PNG and WebP.
        image_format: ``"png"`` (lossless), ``"jpg"`` or ``"webp"`` (lossy, quality 90).
        compress_level: PNG's deflate level 0..9 (:func:`~heatmap_cli.io.png.encode_png`).
            The default 1 takes 0.06 s (ISA-L) or 0.25 s (zlib) on a 12-megapixel overlay
            where Pillow's default 6 took 1.98 s, for files about 15% larger; it matters when a
            batch writes several full-resolution overlays per photo.
        icc_profile: An RGB ICC profile to embed, e.g. ``read_image(...).info
            .get("icc_profile")``, so the overlay shows the photo's colours as the source.

    Raises:
        TypeError: ``image`` is not a uint8 array.
        ValueError: ``image`` does not have shape (H, W, 3) or (H, W, 4), or an unknown
            format.
        OutputWriteError: The file cannot be written.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 numpy array, got {_describe(image)}")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise ValueError(f"image must have shape (H, W, 3) or (H, W, 4), got {image.shape}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if image_format == "png":
        encoded = encode_png(image, level=compress_level, icc_profile=icc_profile)
        with atomic_writer(path, "wb") as file:
            file.write(encoded)
        return
    picture = Image.fromarray(np.ascontiguousarray(image))  # RGB or RGBA from the shape
    if image_format == "jpg":
        picture = picture.convert("RGB")
    options: dict[str, Any] = {"quality": _LOSSY_QUALITY}
    if icc_profile:
        options["icc_profile"] = icc_profile
    with atomic_writer(path, "wb") as file:
        picture.save(file, format=IMAGE_FORMATS[image_format], **options)


def write_png(
    path: Path,
    image: np.ndarray,
    *,
    compress_level: int = 1,
    icc_profile: bytes | None = None,
) -> None:
    """Write an 8-bit RGB or RGBA array as a PNG file, atomically (see :func:`write_image`)."""
    write_image(path, image, compress_level=compress_level, icc_profile=icc_profile)


def write_npz(path: Path, **arrays: Any) -> None:
    """Write arrays to a compressed ``.npz`` file, atomically.

    The name is used exactly as given (``np.savez_compressed`` would append ``.npz`` to a
    file name lacking it; here it writes to an open file, so it does not). The file loads
    with ``np.load(path)`` without ``allow_pickle``.

    Args:
        path: The final file, normally ending in ``.npz``.
        **arrays: Name -> array-like (numpy arrays, scalars, lists of numbers or
            strings). Object arrays are refused because they would need pickle.

    Raises:
        TypeError: A value converts to an object array.
        OutputWriteError: The file cannot be written.
    """
    converted = {name: np.asarray(value) for name, value in arrays.items()}
    for name, array in converted.items():
        if array.dtype.hasobject:
            raise TypeError(
                f"array {name!r} has dtype object, which needs pickle to load; "
                "convert it to numbers or str first"
            )
    # The npz of a huge image's grid is hundreds of megabytes: each array is deflated straight
    # into the temporary file from its own memory, a slice at a time (np.savez_compressed holds
    # three 16 MiB copies per slice). A failure removes the temporary file.
    with (
        atomic_writer(path, "wb") as file,
        zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as archive,
    ):
        for name, array in converted.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                _write_npy(member, array)


def _write_npy(file: IO[bytes], array: np.ndarray) -> None:
    """``array`` in the ``.npy`` format (what ``np.save`` writes), in slices of 1 MiB."""
    contiguous = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    np.lib.format.write_array_header_1_0(
        file, np.lib.format.header_data_from_array_1_0(contiguous)
    )
    data = memoryview(contiguous.reshape(-1).view(np.uint8))
    for start in range(0, len(data), _NPY_SLICE):
        file.write(data[start : start + _NPY_SLICE])


def write_json(path: Path, obj: Any) -> None:
    r"""Write an object as UTF-8 JSON (indent 2, non-ASCII kept), atomically.

    numpy scalars and arrays become Python numbers and lists, tuples become lists, paths
    become strings, and mapping keys that are numpy scalars become plain keys. Surrogate
    escapes (file names that are not valid UTF-8) are written as ``\udcxx`` escapes, so the
    file stays valid UTF-8 and ``json.loads`` gives back the same string.

    Args:
        path: The final file.
        obj: JSON-serialisable data, possibly holding numpy values.

    Raises:
        ValueError: ``obj`` holds NaN or infinity (not valid JSON).
        TypeError: ``obj`` holds a value JSON cannot represent.
        OutputWriteError: The file cannot be written.
    """
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
    text = _SURROGATE_RE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
    with atomic_writer(path, "wb") as file:
        file.write((text + "\n").encode("utf-8"))


def _jsonable(value: Any) -> Any:
    """Recursively replace numpy values, tuples and paths by JSON-native values."""
    if isinstance(value, Mapping):
        return {_jsonable(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    return value


def _describe(value: object) -> str:
    """Describe a value's type (and dtype) for error messages."""
    if isinstance(value, np.ndarray):
        return f"array of dtype {value.dtype}"
    return type(value).__name__


def remove_stale_temporaries(folder: Path, *, min_age_s: float = 3600.0) -> list[Path]:
    """Delete temporary files and staging folders left below ``folder`` by a killed writer.

    Only entries named like :func:`atomic_writer`'s temporaries (``.<name>.<pid>-<8 hex>.tmp``)
    are considered. One is removed when the process named by its pid no longer runs, whatever
    its age, or when it was last modified at least ``min_age_s`` seconds ago (the pid may have
    been reused by another program); a younger one of a running process may belong to a
    concurrent run and is kept. Symbolic links to folders are not followed; entries that
    cannot be removed are left alone.

    Args:
        folder: The output folder; a missing folder has nothing to clean.
        min_age_s: Age in seconds after which a temporary is removed even if its pid runs.

    Returns:
        The removed files and folders.
    """
    cutoff = time.time() - min_age_s
    removed: list[Path] = []
    for directory, folders, files in os.walk(folder):
        for name in [*folders, *files]:
            match = _TEMP_NAME_RE.match(name)
            if match is None:
                continue
            candidate = Path(directory) / name
            try:
                info = candidate.lstat()
                if info.st_mtime > cutoff and _process_runs(int(match.group(1))):
                    continue
                if name in folders:
                    folders.remove(name)  # not walked into, whatever happens
                    shutil.rmtree(candidate)
                else:
                    candidate.unlink()
            except OSError:
                continue
            removed.append(candidate)
    return removed


def _process_runs(pid: int) -> bool:
    """Whether a process with this id exists (on this machine); True when it cannot be told."""
    if os.name == "nt" or pid == os.getpid():
        return True  # Windows' os.kill would terminate the process, not probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (ValueError, OverflowError):
        return False  # no process can have this id
    except OSError:
        return True  # it exists, owned by someone else (EPERM), or cannot be probed
    return True
