r"""Class names from a labels file: one name per line, a JSON list, or a JSON ``{index: name}``.

A text file holds one name per line (UTF-8, a byte-order mark tolerated, lines ended by LF, CRLF
or CR, trailing blank lines ignored). A JSON file holds a list of names, or an object mapping
every index ``0..K-1`` to a name, each index once and written plainly (``"1"``, not ``"01"``,
``"+1"`` or ``" 1"``, which would name a class a second time); torchvision's
``imagenet_class_index.json`` style, ``{"0": ["n01440764", "tench"]}``, gives the last item of
each list. The count must equal the model's number of classes.

A name is one line of text: one that holds a line break of any kind (a JSON ``"\n"``, a
vertical tab, U+2028...) is refused with the file and line named, as it could be neither drawn
on an overlay nor printed as one line. The file must be a regular file of at most
:data:`MAX_LABELS_BYTES` (``/dev/zero`` or a FIFO is refused at once, not read forever).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from heatmap_cli.errors import LabelsFileError
from heatmap_cli.io import FileTooLargeError, NotAFileError, read_regular_file

__all__ = ["LINE_BREAKS", "MAX_LABELS_BYTES", "check_label_count", "read_labels"]

MAX_LABELS_BYTES = 64 * 2**20
"""The largest labels file read (ImageNet-21k's 21,843 names take under 1 MiB)."""

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
"""Every character Python's ``str.splitlines`` ends a line at: none may be part of a name."""

_INDEX_KEY = re.compile(r"0|[1-9][0-9]*")
_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


def read_labels(path: Path) -> tuple[str, ...]:
    """Reads class names from a labels file.

    Args:
        path: A ``.txt`` file (one name per line) or a ``.json`` list or object.

    Returns:
        The names, index ``k`` naming class ``k``.

    Raises:
        LabelsFileError: The file is not a regular file, cannot be read, is too large, is not
            UTF-8, is malformed (a JSON index twice or not written plainly), has an empty name
            or one with a line break, or does not name every index; the message names the file.
    """
    text = _read_text(path)
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            parsed = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKeyError as error:
            raise LabelsFileError(f"{path}: names the key {error.key!r} twice") from None
        except json.JSONDecodeError as error:
            if path.suffix.lower() == ".json":
                message = f"{error.msg} at line {error.lineno}"
                raise LabelsFileError(f"{path}: is not valid JSON ({message})") from None
        else:
            return _json_names(parsed, path, text)
    return _line_names(text, path)


def _read_text(path: Path) -> str:
    try:
        data = read_regular_file(path, max_bytes=MAX_LABELS_BYTES)
    except NotAFileError as error:
        raise LabelsFileError(str(error)) from None
    except FileTooLargeError:
        raise LabelsFileError(
            f"{path}: too large for a labels file (more than {MAX_LABELS_BYTES // 2**20} MiB)"
        ) from None
    except OSError as error:
        raise LabelsFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LabelsFileError(
            f"{path}: is not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); "
            "save the labels file as UTF-8"
        ) from None


class _DuplicateKeyError(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object's pairs as a dict; a key given twice raises (``json`` keeps the last)."""
    repeated = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
    if repeated:
        raise _DuplicateKeyError(repeated[0])
    return dict(pairs)


def check_label_count(names: tuple[str, ...], num_classes: int, path: Path) -> None:
    """Raises ``LabelsFileError`` unless there is one name per class."""
    if len(names) != num_classes:
        raise LabelsFileError(
            f"{path}: has {len(names)} names, but the model has {num_classes} classes"
        )


def _line_names(text: str, path: Path) -> tuple[str, ...]:
    lines = [line.strip() for line in re.split(r"\r\n|\r|\n", text)]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LabelsFileError(f"{path}: holds no names")
    for number, line in enumerate(lines, 1):
        if not line:
            raise LabelsFileError(f"{path}: line {number} is empty (one class name per line)")
        if _has_line_break(line):
            raise LabelsFileError(
                f"{path}: line {number} holds a line break inside its name "
                f"({_break_name(line)}); a class name is one line"
            )
    return tuple(lines)


def _json_names(parsed: object, path: Path, text: str) -> tuple[str, ...]:
    if isinstance(parsed, Mapping):
        parsed = _indexed_names(parsed, path)
    if not isinstance(parsed, list) or not parsed:
        raise LabelsFileError(f"{path}: must hold a list of names or an object {{index: name}}")
    names = []
    for index, value in enumerate(parsed):
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[-1]  # ["n01440764", "tench"]: the readable name comes last
        if not isinstance(value, str) or not value.strip():
            raise LabelsFileError(f"{path}: the name of class {index} is not a non-empty string")
        if _has_line_break(value.strip()):  # around the name, it is blank space, stripped
            line = _json_line(text, value)
            raise LabelsFileError(
                f"{path}: {f'line {line}: ' if line else ''}the name of class {index} holds a "
                f"line break ({_break_name(value)}); a class name is one line"
            )
        names.append(value.strip())
    return tuple(names)


def _indexed_names(parsed: Mapping[str, object], path: Path) -> list[object]:
    """``{"0": name, "1": name...}`` as a list; every index plainly written, none missing."""
    for key in parsed:
        if not _INDEX_KEY.fullmatch(key):
            raise LabelsFileError(
                f"{path}: the key {key!r} is not a class index (0, 1, 2... written plainly, "
                "each once)"
            )
    by_index = {int(key): value for key, value in parsed.items()}
    missing = sorted(set(range(len(by_index))) - by_index.keys())
    if missing:
        raise LabelsFileError(f"{path}: has no name for class index {missing[0]}")
    return [by_index[index] for index in range(len(by_index))]


def _has_line_break(name: str) -> bool:
    return any(character in LINE_BREAKS for character in name)


def _break_name(name: str) -> str:
    """The first line break in a name, as ``U+2028``."""
    character = next(c for c in name if c in LINE_BREAKS)
    return f"U+{ord(character):04X}"


def _json_line(text: str, value: str) -> int | None:
    """The line of a JSON text where the string ``value`` is written, if it can be found.

    JSON strings cannot span lines (a raw line feed inside one is invalid), so each line's
    string literals are decoded and compared.
    """
    for number, line in enumerate(text.split("\n"), 1):
        for literal in _JSON_STRING.findall(line):
            try:
                if json.loads(literal) == value:
                    return number
            except ValueError:
                continue
    return None
