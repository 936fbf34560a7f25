"""Class names from a labels file: one name per line, a JSON list, or a JSON ``{index: name}``.

A text file holds one name per line (UTF-8, a byte-order mark tolerated, trailing blank lines
ignored). A JSON file holds a list of names, or an object mapping every index ``0..K-1`` to a
name; torchvision's ``imagenet_class_index.json`` style, ``{"0": ["n01440764", "tench"]}``, gives
the last item of each list. The count must equal the model's number of classes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from heatmap_cli.errors import LabelsFileError

__all__ = ["check_label_count", "read_labels"]


def read_labels(path: Path) -> tuple[str, ...]:
    """Reads class names from a labels file.

    Args:
        path: A ``.txt`` file (one name per line) or a ``.json`` list or object.

    Returns:
        The names, index ``k`` naming class ``k``.

    Raises:
        LabelsFileError: The file cannot be read, is not UTF-8, is malformed, has an empty name
            or does not name every index; the message names the file.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LabelsFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LabelsFileError(
            f"{path}: is not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); "
            "save the labels file as UTF-8"
        ) from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            if path.suffix.lower() == ".json":
                message = f"{error.msg} at line {error.lineno}"
                raise LabelsFileError(f"{path}: is not valid JSON ({message})") from None
        else:
            return _json_names(parsed, path)
    return _line_names(text, path)


def check_label_count(names: tuple[str, ...], num_classes: int, path: Path) -> None:
    """Raises ``LabelsFileError`` unless there is one name per class."""
    if len(names) != num_classes:
        raise LabelsFileError(
            f"{path}: has {len(names)} names, but the model has {num_classes} classes"
        )


def _line_names(text: str, path: Path) -> tuple[str, ...]:
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LabelsFileError(f"{path}: holds no names")
    empty = next((number for number, line in enumerate(lines, 1) if not line), None)
    if empty is not None:
        raise LabelsFileError(f"{path}: line {empty} is empty (one class name per line)")
    return tuple(lines)


def _json_names(parsed: object, path: Path) -> tuple[str, ...]:
    if isinstance(parsed, Mapping):
        try:
            by_index = {int(key): value for key, value in parsed.items()}
        except ValueError:
            raise LabelsFileError(f"{path}: keys must be class indices 0, 1, 2...") from None
        missing = sorted(set(range(len(by_index))) - by_index.keys())
        if missing:
            raise LabelsFileError(f"{path}: has no name for class index {missing[0]}")
        parsed = [by_index[index] for index in range(len(by_index))]
    if not isinstance(parsed, list) or not parsed:
        raise LabelsFileError(f"{path}: must hold a list of names or an object {{index: name}}")
    names = []
    for index, value in enumerate(parsed):
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[-1]  # ["n01440764", "tench"]: the readable name comes last
        if not isinstance(value, str) or not value.strip():
            raise LabelsFileError(f"{path}: the name of class {index} is not a non-empty string")
        names.append(value.strip())
    return tuple(names)
