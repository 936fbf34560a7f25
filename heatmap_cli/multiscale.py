"""Multi-scale and flip averaging, and an image-level ranking, the OverFeat way.

One pass of the converted network sees the photo at one size: objects much larger than the
window are only partly inside any window, small ones are a few pixels. OverFeat (Sermanet et al.,
2014) evaluates the convolutionalized classifier at several scales and on the horizontal mirror
of each, and averages. Here each *pass* is one ``(scale, flip)`` pair:

1. The photo is resized so that its shorter side is ``size * scale`` (``size`` is ``--size``),
   each side snapped to ``window + stride * k`` as in a plain pass (:func:`scaled_planner`).
2. A flip pass mirrors the resized uint8 input, scores it, and mirrors the grid back. No
   resampling is needed for that: with an input width ``w + t*k``, cell ``j`` covers
   ``[t*j, t*j + w)``, whose mirror image ``[W - t*j - w, W - t*j)`` is exactly the window of
   cell ``k - j``. So the mirrored-back grid lies on the same geometry as the unflipped one.
3. Every pass's logits are resampled onto one common grid in original-image pixels, by bilinear
   interpolation between the pass's own cell centres (``GridGeometry.centers``), edge values held
   beyond its outermost centres (:func:`resample_grid`), and the logits are averaged.

The common grid is, by default, the grid of the *first* scale listed (``common="first"``; put
``1`` first and it is the ``--size`` grid). That keeps the output the shape the user chose with
``--size`` whatever ``--scales`` says, and keeps the npz's ``stride``, ``input_size`` and
``window`` describing a pass that really ran. The price: passes finer than the first one are
point-sampled at its centres, so detail finer than its stride is smoothed away. ``"finest"``
instead takes the grid with the most cells (the largest scale): nothing is thrown away and the
coarser passes are only interpolated up, but the grid is larger and ``window`` then describes only
the finest pass's windows.

What is averaged: **logits**, and ``probs`` is the per-cell softmax of the averaged logits. So the
npz contract holds literally (``probs`` is the softmax over ``K`` of ``logits`` in every cell,
summing to 1), ``outputs.write_outputs`` needs no change (it takes logits and computes the same
softmax), and the average is a geometric mean of the passes' probabilities (renormalized), which
rewards classes the passes agree on. OverFeat's averaging of class *scores* (probabilities) is
kept where it matters for its classification result, the image-level ranking:
:func:`rank_image` takes, per class, the spatial maximum of the probability within each pass, on
that pass's own grid, and averages those over passes (``pooling="max"``, the default;
``"mean"`` uses the spatial mean instead).

With one scale and no flip there is nothing to average: the result is the plain single-pass grid,
bit for bit, on the same geometry.

Scoring goes through one seam, a :data:`Scorer` (uint8 ``(N, H, W, 3)`` -> ``(N, K, rows,
cols)`` logits), called once per pass with ``N = 1``. ``GridEngine.score`` is the default, so
every stride and method works; a tiled scorer for huge images plugs in the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from PIL import Image

from heatmap_cli.errors import GeometryError, HeatmapError
from heatmap_cli.geometry import GridGeometry
from heatmap_cli.images import ImageInput, read_image
from heatmap_cli.outputs import softmax
from heatmap_cli.pipeline import GridEngine, ImageResult, display_image
from heatmap_cli.preprocess import plan_geometry, resize_for_grid

__all__ = [
    "CommonGrid",
    "MultiScaleImage",
    "MultiScaleResult",
    "Pass",
    "Planner",
    "Pooling",
    "Scorer",
    "check_scales",
    "format_ranking",
    "image_scores",
    "multiscale_grid",
    "parse_scales",
    "rank_image",
    "resample_grid",
    "scaled_planner",
    "score_images_multiscale",
    "score_multiscale",
]

Scorer = Callable[[np.ndarray], torch.Tensor | np.ndarray]
"""uint8 ``(N, H, W, 3)`` resized images -> float ``(N, K, rows, cols)`` logits."""

Planner = Callable[[tuple[int, int], float], GridGeometry]
"""``(original (H, W), scale)`` -> the geometry of that scale's pass."""

Pooling = Literal["max", "mean"]
CommonGrid = Literal["first", "finest"]

POOLINGS: tuple[str, ...] = ("max", "mean")
COMMON_GRIDS: tuple[str, ...] = ("first", "finest")


@dataclass(frozen=True)
class Pass:
    """One evaluation of the network: one scale, mirrored or not.

    Attributes:
        scale: Factor of ``--size`` the shorter side was resized to (before snapping).
        flip: Whether the input was mirrored (the grid is mirrored back already).
        geometry: The pass's own grid geometry.
        peak: float32 ``(K,)``, per class the spatial maximum of the per-cell softmax.
        mean: float32 ``(K,)``, per class the spatial mean of the per-cell softmax.
        logits: float32 ``(K, rows, cols)`` on ``geometry``, in unmirrored orientation; only
            kept on request (``keep_pass_logits``), else None.
    """

    scale: float
    flip: bool
    geometry: GridGeometry
    peak: np.ndarray
    mean: np.ndarray
    logits: np.ndarray | None = None

    def record(self) -> dict[str, object]:
        """The pass for the json: scale, flip, resized size and grid shape."""
        rows, cols = self.geometry.shape
        height, width = self.geometry.input_size
        return {
            "scale": self.scale,
            "flip": self.flip,
            "input_size": {"width": width, "height": height},
            "grid": {"rows": rows, "cols": cols},
        }


@dataclass(frozen=True)
class MultiScaleResult:
    """Class maps averaged over scales and flips, on one common grid.

    Attributes:
        geometry: The common grid, in original-image pixels (see ``common``).
        logits: float32 ``(K, rows, cols)``, mean of the passes' logits resampled onto
            ``geometry``.
        probs: float32 ``(K, rows, cols)``, per-cell softmax of ``logits`` (sums to 1 over K).
        passes: Every pass that went in, in evaluation order.
        common: Which pass's grid is the common one: ``"first"`` or ``"finest"``.
    """

    geometry: GridGeometry
    logits: np.ndarray
    probs: np.ndarray
    passes: tuple[Pass, ...]
    common: CommonGrid

    def record(self) -> dict[str, object]:
        """Json fields saying which scales and flips went in and how they were combined."""
        return {
            "multiscale": {
                "scales": list(dict.fromkeys(p.scale for p in self.passes)),
                "flip": any(p.flip for p in self.passes),
                "passes": [p.record() for p in self.passes],
                "common_grid": self.common,
                "averaged": "logits",
            }
        }


@dataclass(kw_only=True)
class MultiScaleImage(ImageResult):
    """An ``ImageResult`` whose ``geometry``/``logits`` are the multi-scale average.

    Attributes:
        multiscale: The full result: the passes, their peaks, the averaged probabilities.
    """

    multiscale: MultiScaleResult


def parse_scales(text: str) -> tuple[float, ...]:
    """Parses ``--scales``: comma-separated positive factors of ``--size``.

    Args:
        text: E.g. ``"1,1.5,2"``.

    Returns:
        The factors in the order given, e.g. ``(1.0, 1.5, 2.0)``.

    Raises:
        GeometryError: On an empty list, an empty item, a non-number or a factor that is not a
            finite positive number.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise GeometryError(f"scales must be comma-separated numbers like 1,1.5,2; got {text!r}")
    scales: list[float] = []
    for item in items:
        try:
            scales.append(float(item))
        except ValueError:
            raise GeometryError(f"scale {item!r} is not a number") from None
    check_scales(scales)
    return tuple(scales)


def check_scales(scales: Sequence[float]) -> None:
    """Raises ``GeometryError`` unless ``scales`` is non-empty and every factor finite and > 0."""
    if len(scales) == 0:
        raise GeometryError("at least one scale is needed")
    for scale in scales:
        if not (math.isfinite(scale) and scale > 0):
            raise GeometryError(f"scales must be positive numbers, got {scale!r}")


def scaled_planner(engine: GridEngine) -> Planner:
    """The geometry planner of an engine at other scales of ``--size``.

    Scale 1 is ``engine.plan`` itself, so a single-scale run plans exactly as a plain one.

    Args:
        engine: The converted model; its ``settings.size``, ``window`` and ``stride`` are used.

    Returns:
        ``plan(original_size, scale) -> GridGeometry`` with the shorter side resized to
        ``round(size * scale)`` pixels before snapping.
    """

    def plan(original_size: tuple[int, int], scale: float) -> GridGeometry:
        if scale == 1:
            return engine.plan(original_size)
        return plan_geometry(
            original_size,
            shorter_side=max(1, round(engine.settings.size * scale)),
            window=engine.window,
            stride=engine.stride,
        )

    return plan


def _axis_weights(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Linear-interpolation matrix ``(len(target), len(source))`` along one axis.

    Row ``i`` holds the weights of the two source nodes around ``target[i]``; targets beyond the
    outermost nodes take the edge node's value.
    """
    weights = np.zeros((len(target), len(source)), dtype=np.float64)
    if len(source) == 1:
        weights[:, 0] = 1.0
        return weights
    position = np.clip(target, source[0], source[-1])
    lo = np.clip(np.searchsorted(source, position, side="right") - 1, 0, len(source) - 2)
    t = (position - source[lo]) / (source[lo + 1] - source[lo])
    rows = np.arange(len(target))
    weights[rows, lo] = 1.0 - t
    weights[rows, lo + 1] += t
    return weights


def resample_grid(values: np.ndarray, source: GridGeometry, target: GridGeometry) -> np.ndarray:
    """Moves a class-map grid from one geometry onto another, in original-image pixels.

    Each source value sits at its window's centre in the original image; target cells take the
    bilinear interpolation of the four surrounding source centres, and beyond the outermost
    source centres the edge values are held. Both geometries must describe the same original
    image. Equal geometries return the values unchanged.

    Args:
        values: float ``(K, rows, cols)`` on ``source``.
        source: Where ``values`` lie.
        target: The geometry to resample onto, ``(rows', cols')`` cells.

    Returns:
        float32 ``(K, rows', cols')``.

    Raises:
        GeometryError: If the geometries are of different images, or ``values`` does not have
            ``source``'s grid shape.
    """
    if source.original_size != target.original_size:
        raise GeometryError(
            f"cannot resample between grids of different images ({source.original_size} and "
            f"{target.original_size})"
        )
    if values.ndim != 3 or values.shape[1:] != source.shape:
        raise GeometryError(f"values {values.shape} do not fit a {source.shape} grid")
    if source == target:
        return values.astype(np.float32, copy=False)
    src = source.centers().astype(np.float64)
    dst = target.centers().astype(np.float64)
    along_y = _axis_weights(src[:, 0, 1], dst[:, 0, 1])  # (rows', rows)
    along_x = _axis_weights(src[0, :, 0], dst[0, :, 0])  # (cols', cols)
    resampled = along_y @ values.astype(np.float64) @ along_x.T
    return resampled.astype(np.float32)


def _as_numpy(grid: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(grid, torch.Tensor):
        return grid.detach().float().cpu().numpy()
    return np.asarray(grid, dtype=np.float32)


def _run_pass(
    score: Scorer, pixels: np.ndarray, geometry: GridGeometry, scale: float, flip: bool
) -> tuple[np.ndarray, Pass]:
    """Scores one resized image (mirrored first if ``flip``).

    Returns:
        float32 ``(K, rows, cols)`` logits in unmirrored orientation, and the pass's summary
        (without the logits).
    """
    if flip:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    grids = _as_numpy(score(pixels[None]))
    if grids.ndim != 4 or grids.shape[0] != 1 or grids.shape[2:] != geometry.shape:
        raise GeometryError(
            f"the scorer returned {grids.shape}, expected (1, K, {geometry.shape[0]}, "
            f"{geometry.shape[1]}) for a {geometry.input_size} input"
        )
    logits = grids[0]
    if flip:
        # Column j of the mirrored input's grid is column k - j of the image's own grid.
        logits = np.ascontiguousarray(logits[:, :, ::-1])
    probs = softmax(logits).reshape(logits.shape[0], -1)
    summary = Pass(
        scale=scale,
        flip=flip,
        geometry=geometry,
        peak=probs.max(axis=1),
        mean=probs.mean(axis=1, dtype=np.float64).astype(np.float32),
    )
    return logits, summary


def _common_geometry(geometries: Sequence[GridGeometry], common: CommonGrid) -> GridGeometry:
    if common == "first":
        return geometries[0]
    # max keeps the first of equals, so ties go to the earlier scale.
    return max(geometries, key=lambda g: g.shape[0] * g.shape[1])


def multiscale_grid(
    image: Image.Image,
    *,
    score: Scorer,
    plan: Planner,
    interpolation: str,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    common: CommonGrid = "first",
    keep_pass_logits: bool = False,
) -> MultiScaleResult:
    """Scores a photo at several scales (and mirrored), and averages on one common grid.

    Passes run in the order ``scales`` gives, each scale unmirrored then (with ``flip``)
    mirrored, one call of ``score`` per pass. Each pass is added into the running sum on the
    common grid as soon as it is scored, so memory peaks at the largest single pass, not at the
    sum of all of them (unless ``keep_pass_logits``).

    Args:
        image: Decoded RGB photo in its displayed orientation, ``(H, W)`` original pixels.
        score: The scoring seam: uint8 ``(N, H', W', 3)`` -> ``(N, K, rows, cols)`` logits.
        plan: ``plan(original_size, scale)`` -> that pass's geometry.
        interpolation: Resampling filter for resizing (the model's, e.g. ``"bicubic"``).
        scales: Factors of the base size, e.g. ``(1, 1.5, 2)``.
        flip: Also evaluate the horizontal mirror at every scale.
        common: The grid to average on: ``"first"`` (the first scale's) or ``"finest"`` (the one
            with the most cells). See the module docstring for the trade-off.
        keep_pass_logits: Keep every pass's own grid in ``Pass.logits`` (for inspection and
            tests; ``K * rows * cols`` floats per pass).

    Returns:
        The averaged logits and probabilities on the common grid, and every pass.

    Raises:
        GeometryError: For bad scales, an unknown ``common``, or a scorer whose grid does not
            fit the planned geometry.
    """
    check_scales(scales)
    if common not in COMMON_GRIDS:
        raise GeometryError(f"common grid must be one of {', '.join(COMMON_GRIDS)}, got {common!r}")
    original_size = (image.height, image.width)
    geometries = [plan(original_size, float(scale)) for scale in scales]
    target = _common_geometry(geometries, common)
    flips = (False, True) if flip else (False,)
    passes: list[Pass] = []
    total: np.ndarray | None = None
    logits = np.empty(0, dtype=np.float32)
    for scale, geometry in zip(scales, geometries, strict=True):
        pixels = resize_for_grid(image, geometry.input_size, interpolation)
        for mirrored in flips:
            logits, summary = _run_pass(score, pixels, geometry, float(scale), mirrored)
            passes.append(replace(summary, logits=logits) if keep_pass_logits else summary)
            if len(scales) * len(flips) > 1:
                resampled = resample_grid(logits, geometry, target).astype(np.float64)
                total = resampled if total is None else total + resampled
    if total is not None:
        logits = (total / len(passes)).astype(np.float32)
    # else: one pass, nothing to average: the plain grid, bit for bit.
    return MultiScaleResult(
        geometry=target,
        logits=logits,
        probs=softmax(logits),
        passes=tuple(passes),
        common=common,
    )


def score_multiscale(
    engine: GridEngine,
    image: Image.Image,
    scales: Sequence[float] = (1.0,),
    *,
    flip: bool = False,
    common: CommonGrid = "first",
    score: Scorer | None = None,
    keep_pass_logits: bool = False,
) -> MultiScaleResult:
    """:func:`multiscale_grid` with an engine's planner, resampling filter and scorer.

    Args:
        engine: The converted model (any stride and method).
        image: Decoded RGB photo.
        scales: Factors of ``engine.settings.size``.
        flip: Also evaluate the horizontal mirror at every scale.
        common: ``"first"`` or ``"finest"`` (see :func:`multiscale_grid`).
        score: Replaces ``engine.score`` (e.g. a tiled scorer); same contract.
        keep_pass_logits: Keep every pass's own grid in ``Pass.logits``.

    Returns:
        The averaged maps and the passes.
    """
    return multiscale_grid(
        image,
        score=score if score is not None else engine.score,
        plan=scaled_planner(engine),
        interpolation=engine.loaded.interpolation,
        scales=scales,
        flip=flip,
        common=common,
        keep_pass_logits=keep_pass_logits,
    )


def image_scores(result: MultiScaleResult, pooling: Pooling = "max") -> np.ndarray:
    """Image-level class scores: each pass's spatial pooling of its probabilities, averaged.

    Args:
        result: A multi-scale result.
        pooling: ``"max"`` (default, OverFeat: the best window of each pass) or ``"mean"``
            (the average over all windows of each pass).

    Returns:
        float32 ``(K,)`` scores in ``[0, 1]``.

    Raises:
        GeometryError: For an unknown pooling.
    """
    if pooling not in POOLINGS:
        raise GeometryError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    per_pass = np.stack([p.peak if pooling == "max" else p.mean for p in result.passes])
    return per_pass.mean(axis=0, dtype=np.float64).astype(np.float32)


def rank_image(
    result: MultiScaleResult, top_k: int = 5, pooling: Pooling = "max"
) -> list[tuple[int, float]]:
    """The image-level ranking for the json ``top_k``: best classes by :func:`image_scores`.

    With one pass and ``pooling="max"`` this is the plain ranking by peak probability.

    Args:
        result: A multi-scale result.
        top_k: How many classes (at most ``K``).
        pooling: ``"max"`` (default) or ``"mean"``.

    Returns:
        ``[(class index, score), ...]``, best first, ties broken by the lower index.
    """
    scores = image_scores(result, pooling)
    order = np.argsort(-scores, kind="stable")[: max(0, top_k)]
    return [(int(i), float(scores[i])) for i in order]


def _pass_label(p: Pass) -> str:
    return f"{p.scale:g}x" + (" flip" if p.flip else "")


def format_ranking(
    result: MultiScaleResult,
    categories: Sequence[str],
    top_k: int = 5,
    pooling: Pooling = "max",
    *,
    name_width: int = 24,
) -> str:
    """A compact text table of the image-level ranking, with each pass's own score.

    Args:
        result: A multi-scale result.
        categories: The ``K`` class names.
        top_k: Rows to show.
        pooling: ``"max"`` or ``"mean"``.
        name_width: Class names are cut to this many characters.

    Returns:
        A header (``#  index  class  max  1x  1x flip ...``) and one line per class, holding
        the rank, index, name, pooled score and each pass's own score; no trailing newline.
    """
    ranking = rank_image(result, top_k, pooling)
    labels = [_pass_label(p) for p in result.passes]
    widths = [max(6, len(label)) for label in labels]
    header = f"{'#':>4}  {'index':>5}  {'class':<{name_width}}  {pooling:>6}"
    header += "".join(f"  {label:>{w}}" for label, w in zip(labels, widths, strict=True))
    lines = [header]
    for rank, (index, score) in enumerate(ranking, start=1):
        row = f"{rank:>4}  {index:>5}  {categories[index][:name_width]:<{name_width}}  {score:6.3f}"
        for p, w in zip(result.passes, widths, strict=True):
            value = p.peak[index] if pooling == "max" else p.mean[index]
            row += f"  {value:>{w}.3f}"
        lines.append(row)
    return "\n".join(lines)


def score_images_multiscale(
    items: Iterable[ImageInput],
    engine: GridEngine,
    scales: Sequence[float] = (1.0,),
    *,
    flip: bool = False,
    common: CommonGrid = "first",
    score: Scorer | None = None,
    workers: int = 2,
) -> Iterator[tuple[ImageInput, MultiScaleImage | HeatmapError]]:
    """The multi-scale counterpart of ``pipeline.score_images``, one image at a time.

    Images are read in ``workers`` threads ahead of the network (a few held at once); each is
    then scored pass by pass (passes of different images have different sizes, so they are not
    stacked). Results come in input order.

    Args:
        items: Images to score.
        engine: The converted model.
        scales: Factors of ``engine.settings.size``.
        flip: Also evaluate the horizontal mirror at every scale.
        common: ``"first"`` or ``"finest"``.
        score: Replaces ``engine.score`` (e.g. a tiled scorer).
        workers: Loader threads.

    Yields:
        ``(item, result)`` or ``(item, error)`` for every input, exactly once.
    """
    check_scales(scales)
    ahead = max(1, workers) + 1

    def load(item: ImageInput) -> tuple[Image.Image, np.ndarray]:
        image = read_image(item.path, max_pixels=engine.settings.max_pixels)
        return image, display_image(image, engine.settings.max_display_side)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="heatmap-ms") as pool:
        iterator = iter(items)
        futures: list[tuple[ImageInput, Future[tuple[Image.Image, np.ndarray]]]] = []
        while True:
            while len(futures) < ahead and (item := next(iterator, None)) is not None:
                futures.append((item, pool.submit(load, item)))
            if not futures:
                return
            item, future = futures.pop(0)
            try:
                image, display = future.result()
                result = score_multiscale(
                    engine, image, scales, flip=flip, common=common, score=score
                )
            except HeatmapError as error:
                yield item, error
                continue
            yield (
                item,
                MultiScaleImage(
                    item=item,
                    geometry=result.geometry,
                    logits=result.logits,
                    display=display,
                    multiscale=result,
                ),
            )
