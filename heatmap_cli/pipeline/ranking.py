"""Choosing and ranking classes: ``--class`` resolution, rankings, the stdout table.

Two rankings answer two questions. *Which classes to draw* (without ``--class``): the classes
whose averaged probability map peaks highest (:func:`rank_by_peak`). *What the image shows* (the
json's ``top_k`` and the stdout table): OverFeat's image-level score, per class the spatial
pooling (``max`` or ``mean``) of its probability within each pass, averaged over the passes
(:func:`rank_image`); a plain run is one pass, so this is its map's spatial max or mean.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from heatmap_cli.errors import InvalidOptionError, UnknownClassError

__all__ = [
    "POOLINGS",
    "ImageRanking",
    "PassScores",
    "Pooling",
    "check_pooling",
    "describe_ranking",
    "format_ranking",
    "image_scores",
    "pooled_scores",
    "rank_by_peak",
    "rank_image",
    "rank_passes",
    "rank_scores",
    "resolve_class",
    "resolve_classes",
]

Pooling = Literal["max", "mean"]
POOLINGS: tuple[str, ...] = ("max", "mean")
"""The spatial poolings of an image-level score: where a class is strongest, or how much of it."""

_MAX_CANDIDATES_SHOWN = 8


class PassScores(Protocol):
    """One pass's image-level class scores (``multiscale.Pass`` is one).

    Attributes:
        scale: Factor of ``--size`` the pass ran at.
        flip: Whether the pass saw the mirrored image.
        peak: float32 ``(K,)``, per class the spatial maximum of the pass's probabilities.
        mean: float32 ``(K,)``, per class their spatial mean.
    """

    scale: float
    flip: bool
    peak: np.ndarray
    mean: np.ndarray


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


def check_pooling(pooling: str) -> None:
    """Raises ``InvalidOptionError`` unless ``pooling`` is one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise InvalidOptionError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


def pooled_scores(probs: np.ndarray, pooling: str) -> np.ndarray:
    """Each class's spatial maximum or mean of one grid of probabilities.

    Args:
        probs: ``(K, rows, cols)`` per-cell probabilities.
        pooling: ``"max"`` or ``"mean"``.

    Returns:
        float32 ``(K,)`` in ``[0, 1]``.

    Raises:
        InvalidOptionError: For an unknown pooling.
    """
    check_pooling(pooling)
    flat = probs.reshape(probs.shape[0], -1)
    if pooling == "max":
        return flat.max(axis=1).astype(np.float32, copy=False)
    return flat.mean(axis=1, dtype=np.float64).astype(np.float32)


def rank_scores(scores: np.ndarray, top_k: int) -> list[tuple[int, float]]:
    """The ``top_k`` best classes of a ``(K,)`` score vector, ties broken by the lower index."""
    order = np.argsort(-scores, kind="stable")[: max(0, top_k)]
    return [(int(i), float(scores[i])) for i in order]


def rank_by_peak(probs: np.ndarray, top_k: int) -> list[int]:
    """Classes with the highest spatial maximum, best first (the classes drawn by default).

    Args:
        probs: ``(K, rows, cols)`` per-cell scores.
        top_k: How many classes to return (at most ``K``).

    Returns:
        Class indices, ties broken by the lower index.
    """
    return [index for index, _ in rank_scores(pooled_scores(probs, "max"), top_k)]


def image_scores(passes: Sequence[PassScores], pooling: str = "max") -> np.ndarray:
    """Image-level class scores: each pass's spatial pooling of its probabilities, averaged.

    Args:
        passes: Every pass of one image (one for a plain run).
        pooling: ``"max"`` (default, OverFeat: the best window of each pass) or ``"mean"``
            (the average over all windows of each pass).

    Returns:
        float32 ``(K,)`` scores in ``[0, 1]``.

    Raises:
        InvalidOptionError: For an unknown pooling.
    """
    check_pooling(pooling)
    per_pass = np.stack([p.peak if pooling == "max" else p.mean for p in passes])
    return per_pass.mean(axis=0, dtype=np.float64).astype(np.float32)


@dataclass(frozen=True)
class ImageRanking:
    """One image's ranking of every class, computed once and read by everything it decides.

    The classes drawn by default, the npz's ``topK`` classes, the json's and the manifest's
    ``top_k`` and the stdout table all take a prefix of :attr:`order`.

    Attributes:
        scores: float32 ``(K,)``, each class's image-level score (:func:`image_scores`).
        order: int64 ``(K,)`` class indices, best first, ties broken by the lower index.
        pooling: The spatial pooling of the scores: ``"max"`` or ``"mean"``.
    """

    scores: np.ndarray
    order: np.ndarray
    pooling: str

    def top(self, k: int) -> list[tuple[int, float]]:
        """``[(class index, score), ...]``: the ``k`` best classes (at most ``K``), best first."""
        return [(int(i), float(self.scores[i])) for i in self.order[: max(0, k)]]


def rank_passes(passes: Sequence[PassScores], pooling: str = "max") -> ImageRanking:
    """Ranks every class of one image by :func:`image_scores`: the ranking to carry forward.

    Args:
        passes: Every pass of one image (one for a plain run).
        pooling: ``"max"`` (default) or ``"mean"``.

    Raises:
        InvalidOptionError: For an unknown pooling.
    """
    scores = image_scores(passes, pooling)
    return ImageRanking(scores, np.argsort(-scores, kind="stable"), pooling)


def rank_image(
    passes: Sequence[PassScores], top_k: int = 5, pooling: str = "max"
) -> list[tuple[int, float]]:
    """The image-level ranking's ``top_k`` best classes (:func:`rank_passes`'s prefix).

    With one pass this is the ranking by the spatial max (or mean) of its probabilities.

    Args:
        passes: Every pass of one image.
        top_k: How many classes (at most ``K``).
        pooling: ``"max"`` (default) or ``"mean"``.

    Returns:
        ``[(class index, score), ...]``, best first, ties broken by the lower index.
    """
    return rank_passes(passes, pooling).top(top_k)


def _pass_label(p: PassScores) -> str:
    return f"{p.scale:g}x" + (" flip" if p.flip else "")


def format_ranking(
    passes: Sequence[PassScores],
    categories: Sequence[str],
    top_k: int = 5,
    pooling: str = "max",
    *,
    name_width: int = 24,
    ranking: ImageRanking | None = None,
) -> str:
    """A compact text table of the image-level ranking, with each pass's own score.

    Args:
        passes: Every pass of one image.
        categories: The ``K`` class names.
        top_k: Rows to show.
        pooling: ``"max"`` or ``"mean"``.
        name_width: Class names are cut to this many characters.
        ranking: The image's ranking when it was computed already (by ``pooling``).

    Returns:
        A header (``#  index  class  max  1x  1x flip ...``) and one line per class, holding
        the rank, index, name, pooled score and each pass's own score; no trailing newline.
    """
    ranked = (rank_passes(passes, pooling) if ranking is None else ranking).top(top_k)
    labels = [_pass_label(p) for p in passes]
    widths = [max(6, len(label)) for label in labels]
    header = f"{'#':>4}  {'index':>5}  {'class':<{name_width}}  {pooling:>6}"
    header += "".join(f"  {label:>{w}}" for label, w in zip(labels, widths, strict=True))
    lines = [header]
    for rank, (index, score) in enumerate(ranked, start=1):
        row = f"{rank:>4}  {index:>5}  {categories[index][:name_width]:<{name_width}}  {score:6.3f}"
        for p, w in zip(passes, widths, strict=True):
            value = p.peak[index] if pooling == "max" else p.mean[index]
            row += f"  {value:>{w}.3f}"
        lines.append(row)
    return "\n".join(lines)


def describe_ranking(
    passes: Sequence[PassScores],
    categories: Sequence[str],
    top_k: int,
    pooling: str = "max",
    *,
    ranking: ImageRanking | None = None,
) -> str:
    """What the command prints for one image: one line for one pass, else the table.

    Args:
        passes: Every pass of one image.
        categories: The ``K`` class names.
        top_k: Classes to show.
        pooling: ``"max"`` or ``"mean"``.
        ranking: The image's ranking when it was computed already (by ``pooling``).

    Returns:
        ``"tabby 0.61, tiger cat 0.22, ..."`` for a single pass; :func:`format_ranking`'s table
        (several lines) when there is more than one pass to compare.
    """
    ranking = rank_passes(passes, pooling) if ranking is None else ranking
    if len(passes) > 1:
        return format_ranking(passes, categories, top_k, pooling, ranking=ranking)
    return ", ".join(f"{categories[index]} {score:.2f}" for index, score in ranking.top(top_k))
