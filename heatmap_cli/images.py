"""Reading input photos and writing result files.

Reading: :func:`read_image` turns any file Pillow can decode into an RGB image in the
orientation a viewer displays it, or raises :class:`~heatmap_cli.errors.ImageReadError`
with a short reason. :func:`find_images` expands files and folders into ``(path, stem)``
pairs whose stems mirror the input folder structure and never collide.

Writing: every output goes through :func:`atomic_writer`, so a file either has its old
content or its complete new content, never a half-written one, even if the process is
interrupted. That is what makes ``--skip-existing`` safe: an output that exists is complete.

Decompression-bomb guard and threads:
    Pillow's guard is the process-wide ``PIL.Image.MAX_IMAGE_PIXELS``, read by
    ``Image.open`` and, for some formats (TIFF, GIF), again while decoding. Changing it
    per call would race with other threads, so :func:`read_image` enforces its own
    ``max_pixels`` on the header size and neutralises Pillow's global only inside
    ``_pillow_guard_lifted``: a module lock is held, the global is set to ``None`` and
    restored before the lock is released. The lock covers ``Image.open`` (header parsing
    only, well under a millisecond for a photo), so decoding, the expensive part, runs in
    parallel. Only images larger than Pillow's own limit (which ``max_pixels`` allowed on
    purpose) are also decoded under the lock; serialising those huge decodes also bounds
    peak memory. Consequences: inside :func:`read_image`, ``max_pixels`` is the only limit
    (Pillow's global is neither tightened nor loosened for other code), and code outside
    this module that calls ``Image.open`` in another thread at the very moment the lock
    is held sees no limit for that call.

Stale temporary files:
    Temporary files are named ``.<name>.<pid>-<8 hex>.tmp`` next to their target and
    are removed on any exception, ``KeyboardInterrupt`` included. A process killed with
    SIGKILL (or a power cut) cannot clean up; its temporaries are hidden, never mistaken
    for outputs (:func:`find_images` skips hidden files, :func:`outputs_exist` checks the
    final names only) and are deleted by :func:`remove_stale_temporaries`, which the CLI
    may call on the output folder at start-up. It only removes files older than a
    minimum age so that it cannot delete the live temporaries of a concurrent run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import stat
import struct
import threading
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path, PurePath
from typing import IO, Any, BinaryIO, Literal, NamedTuple, TextIO, overload

import numpy as np
from PIL import ExifTags, Image, ImageCms, UnidentifiedImageError

from heatmap_cli.errors import ImageReadError, OutputWriteError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageInput",
    "atomic_writer",
    "find_images",
    "output_path",
    "outputs_exist",
    "read_image",
    "remove_stale_temporaries",
    "write_json",
    "write_npz",
    "write_png",
]

DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
"""Pillow's default ``Image.MAX_IMAGE_PIXELS`` (89,478,485: about 0.25 GiB of RGB)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {"jpg", "jpeg", "jpe", "jfif", "png", "apng", "gif", "bmp", "tif", "tiff", "webp"}
    | {"ppm", "pgm", "pbm", "pnm"}  # Netpbm
)
"""Lower-case extensions (no dot) that folder expansion picks up."""

# Exceptions Pillow's decoders raise on malformed input. Broad on purpose: a file that
# makes a plugin fail in any of these ways is a bad input, not a bug in this program.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    zlib.error,
)

# File signatures of the formats above: a file that starts like an image but cannot be
# identified is damaged, not "not an image".
_MAGIC_PREFIXES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)

_EXIF_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

_pillow_guard_lock = threading.Lock()

_TEMP_NAME_RE = re.compile(r"^\..*\.\d+-[0-9a-f]{8}\.tmp$", re.DOTALL)
# Keeps temporary names under the usual 255-byte limit even for 4-byte UTF-8 characters.
_TEMP_NAME_CHARS = 50


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def read_image(path: Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into RGB pixels in their displayed orientation.

    The EXIF (or XMP) orientation is applied, so the result is what a photo viewer shows.
    Every Pillow mode becomes 8-bit RGB: transparency (alpha channels, palette and colour-key
    transparency) is composited over white; 16-bit greyscale is scaled from 0..65535 to
    0..255; 32-bit integer images outside 0..65535 and float images outside 0..1 are
    stretched linearly from their minimum to their maximum; CMYK (including Adobe's
    inverted CMYK) and CIELab go through Pillow's converters. Animated files give their
    first frame. Embedded colour profiles are not applied; an RGB profile is kept in
    ``info["icc_profile"]`` so outputs can carry it (see :func:`write_png`).

    The whole file is decoded here, so truncated or corrupt data fails in this call.

    Args:
        path: The image file.
        max_pixels: Largest accepted ``width * height``, checked on the header before any
            pixel is decoded. Defaults to Pillow's own default limit; ``None`` disables
            the check deliberately (the caller trusts its inputs). Pillow's global
            ``Image.MAX_IMAGE_PIXELS`` does not apply inside this function.

    Returns:
        A new, fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, detached from the file.
        Its ``info`` holds at most ``"icc_profile"``; the EXIF orientation is already
        applied, so ``ImageOps.exif_transpose`` on it is a no-op.

    Raises:
        ImageReadError: The file is missing, not a regular file, unreadable, empty, not an
            image, truncated or corrupt, too large, or in an unsupported mode. ``reason``
            says which in a few words.
        ValueError: ``max_pixels`` is not positive.
    """
    path = Path(path)
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be positive or None, got {max_pixels}")

    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ImageReadError(path, "is a directory")
        # Opening a FIFO or a device would block or read forever.
        if not stat.S_ISREG(mode):
            raise ImageReadError(path, "not a regular file")
        fp = path.open("rb")
    except OSError as exc:
        raise ImageReadError(path, _os_reason(exc)) from exc

    with fp:
        try:
            if os.fstat(fp.fileno()).st_size == 0:
                raise ImageReadError(path, "empty file")
            prefix = fp.read(16)
            fp.seek(0)
        except OSError as exc:
            raise ImageReadError(path, _os_reason(exc)) from exc
        return _decode(path, fp, prefix, max_pixels)


def _decode(path: Path, fp: BinaryIO, prefix: bytes, max_pixels: int | None) -> Image.Image:
    """Open, size-check, load and convert one image; see :func:`read_image`."""
    try:
        with _pillow_guard_lifted() as pillow_limit:
            image = Image.open(fp)
    except UnidentifiedImageError as exc:
        damaged = prefix.startswith(_MAGIC_PREFIXES) or (
            prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP"
        )
        reason = (
            "truncated or corrupt image data" if damaged else "not an image (unrecognized format)"
        )
        raise ImageReadError(path, reason) from exc
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, _read_reason(exc)) from exc

    with image:
        width, height = image.size
        pixels = width * height
        if max_pixels is not None and pixels > max_pixels:
            raise ImageReadError(
                path,
                f"image has {width} x {height} = {pixels} pixels, above the limit of "
                f"{max_pixels}; raise it with --max-pixels",
            )
        # Pillow re-checks its global limit while decoding some formats (TIFF tiles, GIF
        # frames); only images above that limit need it lifted during the decode too.
        huge = pillow_limit is not None and pixels > pillow_limit
        try:
            with _pillow_guard_lifted() if huge else contextlib.nullcontext():
                image.load()
        except MemoryError as exc:
            raise ImageReadError(
                path, f"not enough memory to decode {width} x {height} pixels"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise ImageReadError(path, _read_reason(exc)) from exc

        orientation = _exif_orientation(image)
        try:
            rgb = _to_rgb(image)
        except (ValueError, OSError, ImageCms.PyCMSError) as exc:
            raise ImageReadError(path, f"unsupported image mode {image.mode}") from exc
        except MemoryError as exc:
            raise ImageReadError(
                path, f"not enough memory to convert {width} x {height} pixels"
            ) from exc
        profile = image.info.get("icc_profile")

    transpose = _EXIF_TRANSPOSE.get(orientation)
    if transpose is not None:
        rgb = rgb.transpose(transpose)
    # Clear the copied metadata: it still holds the EXIF orientation we just applied.
    rgb.info = {}
    if isinstance(profile, bytes) and profile[16:20] == b"RGB ":
        rgb.info["icc_profile"] = profile
    return rgb


@contextlib.contextmanager
def _pillow_guard_lifted() -> Iterator[int | None]:
    """Hold the module lock with Pillow's global pixel limit disabled.

    Yields:
        Pillow's limit as it was before, ``None`` if it was already disabled.
    """
    with _pillow_guard_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield saved
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _exif_orientation(image: Image.Image) -> int:
    """Return the EXIF/XMP orientation (1..8), 1 when absent or unreadable."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        # A damaged metadata block should not cost an otherwise good photo.
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded image of any Pillow mode to a new 8-bit RGB image.

    Args:
        image: A loaded image.

    Returns:
        A new image in mode ``"RGB"``, pixel values 0..255.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        return Image.fromarray(_high_depth_to_uint8(image)).convert("RGB")
    if mode == "LAB":
        # Pillow's plain convert() copies the L, a, b bytes into R, G, B.
        return ImageCms.applyTransform(image, _lab_to_srgb())
    if mode == "La":
        # Premultiplied alpha over white: out = c + 255 - alpha (no converter for "La").
        pixels = np.asarray(image, dtype=np.uint16)
        grey = np.minimum(pixels[..., 0] + 255 - pixels[..., 1], 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Map 16/32-bit integer or float pixels to uint8 without clipping the range.

    Args:
        image: A loaded image in one of the ``"I;16*"``, ``"I"`` or ``"F"`` modes.

    Returns:
        uint8 array of shape (H, W), values 0..255.
    """
    values = np.asarray(image)
    if image.mode.startswith("I"):
        if values.dtype.kind == "u" or (
            values.size and values.min() >= 0 and values.max() <= 65535
        ):
            # Exact rounding of v * 255 / 65535; uint32 holds 65535 * 255.
            wide = values.astype(np.uint32)
            return ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return _stretch(values.astype(np.float64))
    floats = values.astype(np.float64)
    finite = floats[np.isfinite(floats)]
    if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
        scaled = np.nan_to_num(floats, nan=0.0, posinf=1.0, neginf=0.0) * 255.0
        return np.rint(scaled).astype(np.uint8)
    return _stretch(floats)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linearly map the finite range of ``values`` to 0..255 (non-finite: 0 or 255).

    Args:
        values: float64 array of shape (H, W).

    Returns:
        uint8 array of shape (H, W).
    """
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = values[finite].min(), values[finite].max()
    span = high - low if high > low else 1.0
    scaled = (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) * (255.0 / span)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


@cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    """Build (once) the CIELab to sRGB transform."""
    return ImageCms.buildTransform(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
    )


def _read_reason(exc: BaseException) -> str:
    """Short reason for a decoding failure."""
    if isinstance(exc, Image.DecompressionBombError):
        return f"image exceeds Pillow's pixel limit ({exc})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return _os_reason(exc)
    return "truncated or corrupt image data"


def _os_reason(exc: OSError) -> str:
    """Short lower-case reason for an operating-system error."""
    by_type: tuple[tuple[type[OSError], str], ...] = (
        (PermissionError, "permission denied"),
        (FileNotFoundError, "no such file or directory"),
        (IsADirectoryError, "is a directory"),
        (NotADirectoryError, "not a directory"),
    )
    for kind, reason in by_type:
        if isinstance(exc, kind):
            return reason
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------------------
# Finding inputs
# --------------------------------------------------------------------------------------


class ImageInput(NamedTuple):
    """One image to process; unpacks as ``path, stem``.

    Attributes:
        path: The file to read, as given or joined below a given folder (not resolved).
        stem: Relative output stem without extension, e.g. ``a/x`` for ``photos/a/x.jpg``
            when ``photos`` was given; join it with :func:`output_path`.
    """

    path: Path
    stem: Path


def find_images(inputs: Sequence[Path], *, exclude: Sequence[Path] = ()) -> list[ImageInput]:
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

    Returns:
        ``ImageInput(path, stem)`` pairs; empty if the folders hold no images.

    Raises:
        ImageReadError: An input does not exist, or a folder cannot be listed. Raised
            before any work starts, so the caller can stop with a clear message.
    """
    excluded = {os.path.realpath(folder) for folder in exclude}
    visited_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    found: list[tuple[Path, Path, Path]] = []  # (path, stem, stem with extension)

    for given in inputs:
        given = Path(given)
        # os.stat rather than Path.is_dir/exists, which hide permission errors as "absent".
        try:
            is_folder = stat.S_ISDIR(given.stat().st_mode)
        except FileNotFoundError as exc:
            if not given.is_symlink():
                raise ImageReadError(given, "no such file or directory") from exc
            is_folder = False
        except OSError as exc:
            raise ImageReadError(given, _os_reason(exc)) from exc
        if is_folder:
            for relative, real in _walk(given, excluded, visited_dirs):
                if real in seen_files:
                    continue
                seen_files.add(real)
                path = given / relative
                extension_length = len(relative.name.rsplit(".", 1)[1]) + 1
                stem = relative.with_name(relative.name[:-extension_length])
                found.append((path, stem, relative))
        else:
            # Files given explicitly are taken whatever their name; a broken link too, so
            # that reading it reports the problem.
            real = os.path.realpath(given)
            if real in seen_files:
                continue
            seen_files.add(real)
            name = Path(given.name)
            found.append((given, Path(name.stem) if name.suffix else name, name))

    stems = _unique_stems([(stem, full) for _, stem, full in found])
    return [ImageInput(path, stem) for (path, _, _), stem in zip(found, stems, strict=True)]


def _walk(root: Path, excluded: set[str], visited: set[tuple[int, int]]) -> list[tuple[Path, str]]:
    """List image files below ``root``, sorted by relative path.

    Args:
        root: A folder.
        excluded: Real paths of folders to skip below ``root``.
        visited: ``(device, inode)`` of folders already searched; updated.

    Returns:
        ``(path relative to root, real path)`` per file.

    Raises:
        ImageReadError: A folder cannot be listed.
    """
    found: list[tuple[Path, str]] = []
    try:
        info = root.stat()
    except OSError as exc:
        raise ImageReadError(root, _os_reason(exc)) from exc
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
                    if entry.is_dir():
                        entry_info = entry.stat()
                        key = (entry_info.st_dev, entry_info.st_ino)
                        if key in visited or os.path.realpath(entry.path) in excluded:
                            continue
                        visited.add(key)
                        pending.append(relative)
                    elif _has_image_extension(entry.name) and (
                        entry.is_file() or entry.is_symlink()
                    ):
                        # A broken link is kept so that reading it reports the problem.
                        real = (
                            os.path.realpath(entry.path)
                            if entry.is_symlink()
                            else os.path.join(real_folder, entry.name)
                        )
                        found.append((relative, real))
        except OSError as exc:
            raise ImageReadError(folder, f"cannot list folder: {_os_reason(exc)}") from exc
    found.sort(key=lambda item: item[0].parts)
    return found


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


def outputs_exist(paths: Iterable[Path]) -> bool:
    """Whether every expected output already exists (for ``--skip-existing``).

    Outputs are written atomically, so an existing file is a complete one.

    Args:
        paths: The output files one image would produce.

    Returns:
        True if ``paths`` is non-empty and each is an existing regular file.
    """
    paths = list(paths)
    return bool(paths) and all(Path(path).is_file() for path in paths)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


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
        raise OutputWriteError(f"cannot write {path}: {_os_reason(exc)}") from exc
    finally:
        if not committed:
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def _make_parent(path: Path) -> None:
    """Create the parent folders of ``path``, raising OutputWriteError on failure."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise OutputWriteError(
            f"cannot write {path}: {parent} or one of its parents is not a folder"
        ) from exc
    except OSError as exc:
        raise OutputWriteError(
            f"cannot write {path}: cannot create folder {parent}: {_os_reason(exc)}"
        ) from exc


def _create_temporary(path: Path) -> tuple[int, Path]:
    """Create and open a new, uniquely named temporary file next to ``path``.

    Returns:
        The open file descriptor and the temporary path.
    """
    name = path.name[:_TEMP_NAME_CHARS]
    while True:
        temporary = path.with_name(f".{name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            # Not tempfile.mkstemp: its 0o600 would end up on the final file.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputWriteError(f"cannot write {path}: {_os_reason(exc)}") from exc


def write_png(
    path: Path,
    image: np.ndarray,
    *,
    compress_level: int = 1,
    icc_profile: bytes | None = None,
) -> None:
    """Write an 8-bit RGB or RGBA array as a PNG file, atomically.

    Args:
        path: The final file (its name is used as given).
        image: uint8 array of shape (H, W, 3) or (H, W, 4), values 0..255.
        compress_level: zlib level 0..9. The default 1 is about 4x faster than Pillow's
            6 on a 12-megapixel overlay for files about 20% larger; it matters when a
            batch writes several full-resolution overlays per photo.
        icc_profile: An RGB ICC profile to embed, e.g. ``read_image(...).info
            .get("icc_profile")``, so the overlay shows the photo's colours as the source.

    Raises:
        TypeError: ``image`` is not a uint8 array.
        ValueError: ``image`` does not have shape (H, W, 3) or (H, W, 4).
        OutputWriteError: The file cannot be written.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 numpy array, got {_describe(image)}")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise ValueError(f"image must have shape (H, W, 3) or (H, W, 4), got {image.shape}")
    picture = Image.fromarray(np.ascontiguousarray(image))  # RGB or RGBA from the shape
    options: dict[str, Any] = {"compress_level": compress_level}
    if icc_profile:
        options["icc_profile"] = icc_profile
    with atomic_writer(path, "wb") as file:
        picture.save(file, format="PNG", **options)


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
    # Compress into memory first: a slow encode then does not keep a temporary file open,
    # and a failure in numpy cannot leave one behind.
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **converted)
    with atomic_writer(path, "wb") as file:
        file.write(buffer.getbuffer())


def write_json(path: Path, obj: Any) -> None:
    """Write an object as UTF-8 JSON (indent 2, non-ASCII kept), atomically.

    numpy scalars and arrays become Python numbers and lists, tuples become lists, paths
    become strings, and mapping keys that are numpy scalars become plain keys.

    Args:
        path: The final file.
        obj: JSON-serialisable data, possibly holding numpy values.

    Raises:
        ValueError: ``obj`` holds NaN or infinity (not valid JSON).
        TypeError: ``obj`` holds a value JSON cannot represent.
        OutputWriteError: The file cannot be written.
    """
    text = json.dumps(_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False)
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
    """Delete temporary files left below ``folder`` by a killed writer.

    Only files named like :func:`atomic_writer`'s temporaries
    (``.<name>.<pid>-<8 hex>.tmp``) and last modified at least ``min_age_s`` seconds ago
    are removed: a younger one may belong to a run still in progress. Symbolic links to
    folders are not followed. Files that cannot be removed are left alone.

    Args:
        folder: The output folder; a missing folder has nothing to clean.
        min_age_s: Minimum age in seconds.

    Returns:
        The removed files.
    """
    cutoff = time.time() - min_age_s
    removed: list[Path] = []
    for directory, _, files in os.walk(folder):
        for name in files:
            if not _TEMP_NAME_RE.match(name):
                continue
            candidate = Path(directory) / name
            try:
                if candidate.lstat().st_mtime > cutoff:
                    continue
                candidate.unlink()
            except OSError:
                continue
            removed.append(candidate)
    return removed
