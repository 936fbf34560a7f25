"""Choosing classes: resolving ``--class`` specs and ranking classes by their peak score."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from heatmap_cli.errors import UnknownClassError

__all__ = ["image_ranking", "rank_by_peak", "resolve_class", "resolve_classes", "slug"]

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
        raise UnknownClassError(f"no class named {spec!r}; use an index 0..{count - 1} or a name")
    shown = ", ".join(f"{categories[i]} ({i})" for i in partial[:_MAX_CANDIDATES_SHOWN])
    more = len(partial) - _MAX_CANDIDATES_SHOWN
    suffix = f", and {more} more" if more > 0 else ""
    raise UnknownClassError(f"class name {spec!r} is ambiguous: {shown}{suffix}")


def resolve_classes(specs: Sequence[str], categories: Sequence[str]) -> list[int]:
    """Resolves several specs, keeping the first occurrence of each class, in order."""
    indices: list[int] = []
    for spec in specs:
        index = resolve_class(spec, categories)
        if index not in indices:
            indices.append(index)
    return indices


def rank_by_peak(probs: np.ndarray, top_k: int) -> list[int]:
    """Classes with the highest spatial maximum, best first.

    Args:
        probs: ``(K, rows, cols)`` per-cell scores.
        top_k: How many classes to return (at most ``K``).

    Returns:
        Class indices, ties broken by the lower index.
    """
    peaks = probs.reshape(probs.shape[0], -1).max(axis=1)
    order = np.argsort(-peaks, kind="stable")
    return [int(i) for i in order[: max(0, top_k)]]


def image_ranking(probs: np.ndarray, top_k: int, pooling: str = "max") -> list[tuple[int, float]]:
    """The image-level ranking: classes by the spatial max (or mean) of their probability.

    Args:
        probs: ``(K, rows, cols)`` per-cell probabilities.
        top_k: How many classes to return.
        pooling: ``"max"`` (where the class is strongest) or ``"mean"`` (how much of the image).

    Returns:
        ``[(class index, score), ...]``, best first, ties broken by the lower index.
    """
    flat = probs.reshape(probs.shape[0], -1)
    if pooling == "max":
        scores = flat.max(axis=1)
    elif pooling == "mean":
        scores = flat.mean(axis=1)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; choose max or mean")
    order = np.argsort(-scores, kind="stable")[: max(0, top_k)]
    return [(int(i), float(scores[i])) for i in order]


def slug(name: str, max_length: int = 40) -> str:
    """A file-name-safe form of a class name: ``"tiger cat"`` -> ``"tiger_cat"``."""
    kept = "".join(c if c.isalnum() else "_" for c in name.casefold())
    collapsed = "_".join(part for part in kept.split("_") if part)
    return collapsed[:max_length] or "class"
