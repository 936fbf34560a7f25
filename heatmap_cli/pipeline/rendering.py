"""What an image's overlays show: the classes drawn, their peaks and scales, each overlay drawn.

One truth for every file of an image: the classes drawn without ``OutputOptions.classes`` are the
image-level ranking's top ``top_k`` (the json's ``top_k`` and the stdout table), and each drawn
class's peak, its location, its label and its map come from the scores that are drawn
(probabilities or logits, averaged over the passes), on the colour scale
(:mod:`heatmap_cli.render.scale`) that its label and the json name. The ranking and the drawn
classes are derived once per image (:func:`summarize_image`) and carried to every output. The
command's writers (:mod:`heatmap_cli.cli.writers`) and the notebook API (:mod:`heatmap_cli.api`)
draw overlays with :func:`render_overlay`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from heatmap_cli.io import slug
from heatmap_cli.pipeline.fidelity import LABEL_TOLERANCE, Fidelity
from heatmap_cli.pipeline.multiscale import MultiScaleResult
from heatmap_cli.pipeline.ranking import ImageRanking, rank_passes
from heatmap_cli.pipeline.scoring import ImageResult
from heatmap_cli.pipeline.settings import (
    LABELS,
    NPZ_DTYPES,
    OUTPUTS,
    OutputOptions,
    parse_npz_classes,
    parse_outputs,
)
from heatmap_cli.render import (
    ColourScale,
    colour_scales,
    is_diverging,
    peak_cell,
    peak_location,
    render_class_overlay,
)

__all__ = [
    "LABELS",
    "NPZ_DTYPES",
    "OUTPUTS",
    "ImageSummary",
    "OutputOptions",
    "RankedClass",
    "RenderedClass",
    "drawn_scores",
    "overlay_label",
    "parse_npz_classes",
    "parse_outputs",
    "render_overlay",
    "rendered_classes",
    "summarize_image",
    "with_exact_peaks",
]

@dataclass(frozen=True)
class RenderedClass:
    """One class drawn for an image: where its drawn map peaks, and its overlay's file name.

    Attributes:
        index: Class index.
        name: Class name.
        peak: The highest cell of the drawn scores (a probability or a logit, as ``scores``).
        x: Centre of that cell's window, in original-image pixels.
        y: Likewise, vertically.
        overlay: File name of its overlay picture, next to the json; None when not written.
        scale: The colour scale its map is drawn on.
        row: The peak cell's row in the grid.
        col: Its column.
        exact_peak: The exact window's score at the peak cell, in the units of ``peak``
            (``heatmap_cli.pipeline.fidelity``); None when not checked.
    """

    index: int
    name: str
    peak: float
    x: float
    y: float
    overlay: str | None
    scale: ColourScale
    row: int = 0
    col: int = 0
    exact_peak: float | None = None

    @property
    def cell(self) -> tuple[int, int]:
        """``(row, col)`` of the peak cell."""
        return (self.row, self.col)


@dataclass(frozen=True)
class RankedClass:
    """One entry of the image-level ranking: a class and its pooled score in ``[0, 1]``."""

    index: int
    name: str
    score: float


def drawn_scores(grid: MultiScaleResult, options: OutputOptions) -> np.ndarray:
    """float32 ``(K, rows, cols)``: what the maps show, probabilities or logits."""
    return grid.probs if options.probabilities else grid.logits


@dataclass(frozen=True)
class ImageSummary:
    """What an image's outputs say about its grid, derived once and carried to every output.

    The overlays, the npz's ``topK`` classes, the json record, the manifest row and the stdout
    line of an image all read this one summary (:func:`summarize_image`), so none of them ranks
    the classes again.

    Attributes:
        ranking: The image-level ranking of every class (``OutputOptions.pooling``).
        top_k: Its first ``OutputOptions.top_k`` classes, named: the json's ``top_k``.
        classes: The classes drawn, in drawing order (:func:`rendered_classes`).
    """

    ranking: ImageRanking
    top_k: tuple[RankedClass, ...]
    classes: tuple[RenderedClass, ...]


def summarize_image(
    result: ImageResult, categories: Sequence[str], options: OutputOptions
) -> ImageSummary:
    """Ranks an image's classes and chooses the ones drawn: once, for all its outputs.

    Args:
        result: The image's grid and passes.
        categories: The ``K`` class names.
        options: The ranking's length and pooling, the classes asked for, what is drawn.
    """
    ranking = rank_passes(result.grid.passes, options.pooling)
    top_k = tuple(RankedClass(i, categories[i], score) for i, score in ranking.top(options.top_k))
    return ImageSummary(ranking, top_k, rendered_classes(result, categories, options, ranking))


def rendered_classes(
    result: ImageResult,
    categories: Sequence[str],
    options: OutputOptions,
    ranking: ImageRanking | None = None,
) -> tuple[RenderedClass, ...]:
    """The classes to draw for an image, where each drawn map peaks, and its colour scale.

    Args:
        result: The image's grid.
        categories: The ``K`` class names.
        options: ``classes``, or else the image-level ranking's ``top_k``; what is drawn.
        ranking: The image's ranking, when it was computed already (by ``options.pooling``).

    Returns:
        One entry per class, in drawing order.
    """
    values, centers = drawn_scores(result.grid, options), result.grid.geometry.centers()
    chosen = list(options.classes)
    if not chosen:
        ranking = rank_passes(result.grid.passes, options.pooling) if ranking is None else ranking
        chosen = [index for index, _ in ranking.top(options.top_k)]
    scales = colour_scales(
        [values[index] for index in chosen],
        scale=options.scale,
        probabilities=options.probabilities,
        diverging=is_diverging(options.cmap),
        vmin=options.vmin,
        vmax=options.vmax,
    )
    suffix = f".{options.image_format}"
    classes = []
    for index, scale in zip(chosen, scales, strict=True):
        name = categories[index]
        peak, x, y = peak_location(values[index], centers)
        row, col = peak_cell(values[index])
        picture = f"{result.item.stem.name}_{index}_{slug(name)}{suffix}"
        overlay = picture if "png" in options.outputs else None
        classes.append(RenderedClass(index, name, peak, x, y, overlay, scale, row, col))
    return tuple(classes)


def with_exact_peaks(
    classes: Sequence[RenderedClass], fidelity: Fidelity | None, options: OutputOptions
) -> tuple[RenderedClass, ...]:
    """The rendered classes with their exact peak values from a fidelity check.

    Args:
        classes: The rendered classes (:func:`rendered_classes`).
        fidelity: The image's check (its cells include every class's peak cell); None: off.
        options: What is drawn (probabilities or logits: the exact value's units).
    """
    if fidelity is None:
        return tuple(classes)
    return tuple(
        dataclasses.replace(c, exact_peak=fidelity.exact_score(c.cell, c.index, options.scores))
        for c in classes
    )


def overlay_label(rendered: RenderedClass, options: OutputOptions) -> str | None:
    """An overlay's label: the class, its drawn peak and the colour scale; None for none."""
    if options.label == "none":
        return None
    value = f"p={rendered.peak:.2f}" if options.probabilities else f"logit={rendered.peak:.2f}"
    exact = rendered.exact_peak
    if exact is not None and abs(exact - rendered.peak) > LABEL_TOLERANCE:
        value += f" (exact {exact:.2f})"
    return f"{rendered.name}  {value}  [{rendered.scale.describe()}]"


def render_overlay(
    result: ImageResult, rendered: RenderedClass, options: OutputOptions
) -> np.ndarray:
    """One class's overlay on the image's display copy: uint8 ``(h, w[+bar], 3)``."""
    grid, display = result.grid, result.display
    height, width = grid.geometry.original_size
    to_display = np.array([display.shape[1] / width, display.shape[0] / height], np.float32)
    return draw_class(
        display,
        drawn_scores(grid, options)[rendered.index],
        grid.geometry.centers() * to_display,
        rendered,
        options,
    )


def draw_class(
    picture: np.ndarray,
    values: np.ndarray,
    centers: np.ndarray,
    rendered: RenderedClass,
    options: OutputOptions,
) -> np.ndarray:
    """One class's drawn values over a picture, with the label and colour scale it was given.

    Args:
        picture: uint8 ``(H, W, 3)``, the photo's display copy or a slide's thumbnail.
        values: float ``(h, w)`` drawn scores of ``rendered``'s class.
        centers: float32 ``(h, w, 2)`` window centres as (x, y) in ``picture``'s pixels.
        rendered: The class, its peak and its colour scale.
        options: The look (colour map, opacity, colour bar, label).

    Returns:
        uint8 ``(H, W[+bar], 3)``.
    """
    return render_class_overlay(
        picture,
        values,
        centers,
        label=overlay_label(rendered, options),
        label_corner="top-left" if options.label == "corner" else "auto",
        cmap=options.cmap,
        alpha=options.alpha,
        vmin=rendered.scale.low,
        vmax=rendered.scale.high,
        colorbar=options.colorbar,
        colorbar_label="probability" if options.probabilities else "logit",
    )
