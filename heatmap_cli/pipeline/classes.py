"""``--class`` values to class indices: by index, exact name, or unique part of a name."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from heatmap_cli.errors import UnknownClassError

__all__ = ["resolve_class", "resolve_classes"]

_MAX_CANDIDATES_SHOWN = 8


def resolve_class(spec: str, categories: Sequence[str]) -> int:
    """Turns one ``--class`` value into a class index.

    An integer is an index. Otherwise the name is matched case-insensitively: an exact name
    wins, else a unique substring.

    Args:
        spec: ``"281"``, ``"tabby"``, ``"Tabby Cat"``...
        categories: The model's ``K`` class names.

    Returns:
        The class index in ``0..K-1``.

    Raises:
        UnknownClassError: An index out of range, a name that matches nothing, or a substring
            that matches several classes (the message lists them).
    """
    text = spec.strip()
    count = len(categories)
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < count:
            raise UnknownClassError(f"class index {index} is out of range 0..{count - 1}")
        return index
    wanted = text.casefold()
    if not wanted:
        raise UnknownClassError("empty class name")
    exact = [i for i, name in enumerate(categories) if name.casefold() == wanted]
    if len(exact) == 1:
        return exact[0]
    partial = exact or [i for i, name in enumerate(categories) if wanted in name.casefold()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise UnknownClassError(
            f"no class named {spec!r}; {_close_names(wanted, categories)}use an index "
            f"0..{count - 1} or a name"
        )
    shown = ", ".join(f"{categories[i]} ({i})" for i in partial[:_MAX_CANDIDATES_SHOWN])
    more = len(partial) - _MAX_CANDIDATES_SHOWN
    suffix = f", and {more} more" if more > 0 else ""
    raise UnknownClassError(f"class name {spec!r} is ambiguous: {shown}{suffix}")


def _close_names(wanted: str, categories: Sequence[str]) -> str:
    """``"did you mean espresso (967)? "`` for a misspelt name, or nothing."""
    folded = {name.casefold(): i for i, name in enumerate(categories)}
    close = difflib.get_close_matches(wanted, list(folded), n=3, cutoff=0.75)
    if not close:
        return ""
    return f"did you mean {', '.join(f'{categories[folded[c]]} ({folded[c]})' for c in close)}? "


def resolve_classes(specs: Sequence[str], categories: Sequence[str]) -> list[int]:
    """Resolves several specs, keeping the first occurrence of each class, in order."""
    indices: list[int] = []
    for spec in specs:
        index = resolve_class(spec, categories)
        if index not in indices:
            indices.append(index)
    return indices
