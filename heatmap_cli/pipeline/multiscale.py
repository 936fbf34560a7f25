"""Multi-scale and flip averaging, the OverFeat way: passes on one common grid, averaged.

One pass of the converted network sees the photo at one size: objects much larger than the
window are only partly inside any window, small ones are a few pixels. OverFeat (Sermanet et al.,
2014) evaluates the convolutionalized classifier at several scales and on the horizontal mirror
of each, and averages. Here each *pass* is one ``(scale, flip)`` pair, and a plain run is the
one pass ``(1, no flip)``:

1. The photo is resized so that its shorter side is ``size * scale`` (``size`` is ``--size``),
   each side snapped to ``window + stride * k`` as in a plain pass (:func:`plan_passes`).
2. A flip pass mirrors the resized uint8 input, scores it, and mirrors the grid back
   (:func:`finish_pass`). No resampling is needed for that: with an input width ``w + t*k``,
   cell ``j`` covers ``[t*j, t*j + w)``, whose mirror image ``[W - t*j - w, W - t*j)`` is
   exactly the window of cell ``k - j``. So the mirrored-back grid lies on the same geometry as
   the unflipped one.
3. Every pass's logits are resampled onto one common grid in original-image pixels, by bilinear
   interpolation between the pass's own cell centres (``GridGeometry.centers``), edge values held
   beyond its outermost centres (:func:`resample_grid`), and the logits are averaged
   (:class:`PassAverage`).

The common grid is, by default, the grid of the *first* scale listed (``common="first"``; put
``1`` first and it is the ``--size`` grid). That keeps the output the shape the user chose with
``--size`` whatever ``--scales`` says, and keeps the npz's ``stride``, ``input_size`` and
``window`` describing a pass that really ran. The price: passes finer than the first one are
point-sampled at its centres, so detail finer than its stride is smoothed away. ``"finest"``
instead takes the grid with the most cells (the largest scale): nothing is thrown away and the
coarser passes are only interpolated up, but the grid is larger and ``window`` then describes only
the finest pass's windows.

What is averaged: **logits**, and ``probs`` is the activation of the averaged logits (the
per-cell softmax, or a sigmoid, see :mod:`heatmap_cli.pipeline.activations`). So the npz contract
holds literally (``probs`` is that activation of ``logits`` in every cell; a softmax sums to 1), and
the average is a geometric mean of the passes' probabilities (renormalized), which rewards classes
the passes agree on (a model that returns probabilities itself has them averaged as they are).
OverFeat's averaging of class *scores* (probabilities) is kept where it matters for its
classification result, the image-level ranking
(:func:`heatmap_cli.pipeline.ranking.rank_image`): each :class:`Pass` records, per class, the
spatial maximum and mean of its own probabilities.

With one scale and no flip there is nothing to average: the result is the plain single-pass grid,
bit for bit, on the same geometry.

The batched loader (:mod:`heatmap_cli.pipeline.scoring`) runs these steps for every run of the
command; :func:`multiscale_grid` runs them for one photo through any :data:`Scorer` (uint8
``(N, H, W, 3)`` -> ``(N, K, rows, cols)`` logits), one call per pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from heatmap_cli.errors import GeometryError, InvalidOptionError, NonFiniteScoresError
from heatmap_cli.grid.geometry import GridGeometry
from heatmap_cli.pipeline.activations import apply_activation
from heatmap_cli.pipeline.engine import UNTILED, GridEngine, Tiling
from heatmap_cli.pipeline.preprocess import resize_for_grid
from heatmap_cli.pipeline.ranking import pooled_scores
from heatmap_cli.pipeline.settings import check_scales, parse_scales

__all__ = [
    "COMMON_GRIDS",
    "CommonGrid",
    "MultiScaleResult",
    "Pass",
    "PassAverage",
    "PassInput",
    "Planner",
    "Scorer",
    "check_finite",
    "check_scales",
    "exact_on",
    "finish_pass",
    "interpolation_weights",
    "multiscale_grid",
    "parse_scales",
    "plan_passes",
    "resample_grid",
    "score_multiscale",
]

Scorer = Callable[[np.ndarray], torch.Tensor | np.ndarray]
"""uint8 ``(N, H, W, 3)`` resized images -> float ``(N, K, rows, cols)`` logits."""

Planner = Callable[[tuple[int, int], float], GridGeometry]
"""``(original (H, W), scale)`` -> the geometry of that scale's pass (``GridEngine.plan``)."""

CommonGrid = Literal["first", "finest"]
COMMON_GRIDS: tuple[str, ...] = ("first", "finest")


@dataclass(frozen=True)
class PassInput:
    """One network input of a photo: one scale, to be mirrored or not.

    Attributes:
        scale: Factor of ``--size`` the shorter side was resized to (before snapping).
        flip: Whether the network sees the mirror image.
        geometry: The pass's own grid geometry.
        pixels: uint8 ``(H, W, 3)`` resized photo, unmirrored (shared by a scale's two passes).
    """

    scale: float
    flip: bool
    geometry: GridGeometry
    pixels: np.ndarray

    def network_input(self) -> np.ndarray:
        """uint8 ``(H, W, 3)``: the pixels as the network sees them (a mirrored copy if flip)."""
        return np.ascontiguousarray(self.pixels[:, ::-1]) if self.flip else self.pixels


@dataclass(frozen=True)
class Pass:
    """One evaluation of the network: one scale, mirrored or not.

    Attributes:
        scale: Factor of ``--size`` the shorter side was resized to (before snapping).
        flip: Whether the input was mirrored (the grid is mirrored back already).
        geometry: The pass's own grid geometry.
        peak: float32 ``(K,)``, per class the spatial maximum of the pass's scores (the
            activation of its logits: the per-cell softmax by default).
        mean: float32 ``(K,)``, per class their spatial mean.
        tiling: How the network evaluated the pass (one whole pass unless the scorer said
            otherwise, as the engine's batches do).
        logits: float32 ``(K, rows, cols)`` on ``geometry``, in unmirrored orientation; only
            kept on request (``keep_pass_logits``), else None.
        exact: bool ``(rows, cols)`` on ``geometry``, unmirrored: the cells evaluated as crops
            (all of them for ``crops``, the refined ones for ``refine``); None when the scorer
            does not say.
        method: The method that made this pass's grid, where the engine chose it per input
            (``auto``, ``refine``: ``heatmap_cli.pipeline.methods``); None otherwise.
        method_reason: Why, in a few words.
    """

    scale: float
    flip: bool
    geometry: GridGeometry
    peak: np.ndarray
    mean: np.ndarray
    tiling: Tiling = UNTILED
    logits: np.ndarray | None = None
    exact: np.ndarray | None = None
    method: str | None = None
    method_reason: str | None = None


@dataclass(frozen=True)
class MultiScaleResult:
    """Class maps averaged over scales and flips, on one common grid.

    Attributes:
        geometry: The common grid, in original-image pixels (see ``common``).
        logits: float32 ``(K, rows, cols)``, mean of the passes' logits resampled onto
            ``geometry``.
        probs: float32 ``(K, rows, cols)``, the activation of ``logits``: the per-cell softmax
            (sums to 1 over K) by default, else a sigmoid, or the logits themselves.
        passes: Every pass that went in, in evaluation order.
        common: Which pass's grid is the common one: ``"first"`` or ``"finest"``.
        exact: bool ``(rows, cols)``: the cells whose value equals what ``--method crops``
            gives there: in every pass, every cell the value interpolates was evaluated as a
            crop (:func:`exact_on`); None when a pass's scorer did not say.
    """

    geometry: GridGeometry
    logits: np.ndarray
    probs: np.ndarray
    passes: tuple[Pass, ...]
    common: CommonGrid
    exact: np.ndarray | None = None


def plan_passes(
    image: Image.Image,
    plan: Planner,
    interpolation: str,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    *,
    original_size: tuple[int, int] | None = None,
) -> tuple[PassInput, ...]:
    """Resizes a photo for every pass: each scale, unmirrored then (with ``flip``) mirrored.

    Args:
        image: Decoded RGB photo in its displayed orientation, ``(H, W)`` original pixels.
        plan: ``plan(original_size, scale)`` -> that pass's geometry.
        interpolation: Resampling filter for resizing (the model's, e.g. ``"bicubic"``).
        scales: Factors of the base size, e.g. ``(1, 1.5, 2)``.
        flip: Also evaluate the horizontal mirror at every scale.
        original_size: ``(H, W)`` of the photo at full resolution, when ``image`` was decoded
            smaller (``io.read_photo``); default ``image``'s size.

    Returns:
        The passes in evaluation order; a scale's two passes share one resized array.

    Raises:
        InvalidOptionError: For bad scales or an unknown interpolation.
    """
    check_scales(scales)
    original_size = original_size or (image.height, image.width)
    flips = (False, True) if flip else (False,)
    passes: list[PassInput] = []
    for scale in map(float, scales):
        geometry = plan(original_size, scale)
        pixels = resize_for_grid(image, geometry.input_size, interpolation)
        passes.extend(PassInput(scale, mirrored, geometry, pixels) for mirrored in flips)
    return tuple(passes)


def check_finite(logits: np.ndarray, spec: PassInput) -> None:
    """Refuses a pass's scores holding NaN or infinity: nothing can be ranked or drawn of them.

    Args:
        logits: float ``(K, rows, cols)`` scores of the pass, as the model returned them.
        spec: The pass, for the message.

    Raises:
        NonFiniteScoresError: Saying how many values are NaN and how many infinite.
    """
    finite = np.isfinite(logits)
    if finite.all():
        return
    nan = int(np.isnan(logits).sum())
    infinite = logits.size - int(finite.sum()) - nan
    where = "" if spec.scale == 1 and not spec.flip else f" (pass at scale {spec.scale:g}"
    where += ", mirrored)" if spec.flip else (")" if where else "")
    raise NonFiniteScoresError(
        f"the model produced non-finite scores for this image{where}: {nan} NaN and "
        f"{infinite} infinite of {logits.size} values; check the model and its weights"
    )


def finish_pass(
    spec: PassInput,
    grid: np.ndarray,
    tiling: Tiling = UNTILED,
    *,
    keep_logits: bool = False,
    activation: str = "softmax",
    exact: np.ndarray | None = None,
) -> tuple[np.ndarray, Pass]:
    """Turns one pass's scored grid into logits on the pass's geometry and its summary.

    Args:
        spec: The pass that was scored.
        grid: float ``(K, rows, cols)`` logits of ``spec.network_input()``.
        tiling: How the network evaluated it (default: in one pass).
        keep_logits: Keep the logits in the summary too (``Pass.logits``).
        activation: What makes the summary's scores of the logits: ``"softmax"``,
            ``"sigmoid"`` or ``"none"``.
        exact: bool ``(rows, cols)``: the cells of ``grid`` the scorer evaluated as crops
            (orientation of ``grid``); None when it does not say.

    Returns:
        float32 ``(K, rows, cols)`` logits in unmirrored orientation, and the pass's summary.

    Raises:
        GeometryError: If ``grid`` does not have the planned geometry's shape.
        NonFiniteScoresError: If the model returned NaN or infinite scores for the pass.
    """
    logits = np.asarray(grid, dtype=np.float32)
    if logits.ndim != 3 or logits.shape[1:] != spec.geometry.shape:
        rows, cols = spec.geometry.shape
        raise GeometryError(
            f"the scorer returned a {logits.shape} grid, expected (K, {rows}, {cols}) for a "
            f"{spec.geometry.input_size} input"
        )
    check_finite(logits, spec)
    if spec.flip:
        # Column j of the mirrored input's grid is column k - j of the image's own grid.
        logits = np.ascontiguousarray(logits[:, :, ::-1])
        exact = None if exact is None else np.ascontiguousarray(exact[:, ::-1])
    probs = apply_activation(logits, activation)
    summary = Pass(
        scale=spec.scale,
        flip=spec.flip,
        geometry=spec.geometry,
        peak=pooled_scores(probs, "max"),
        mean=pooled_scores(probs, "mean"),
        tiling=tiling,
        logits=logits if keep_logits else None,
        exact=None if exact is None else np.asarray(exact, dtype=bool),
    )
    return logits, summary


class PassAverage:
    """The running mean of one photo's passes on their common grid.

    Each pass is added into a float64 sum on the common grid as soon as it is scored, in any
    order, so memory holds one grid however many passes there are. With a single pass the
    result is that pass's grid, bit for bit.

    Args:
        geometries: The geometry of every pass, in evaluation order.
        common: The grid to average on: ``"first"`` (the first scale's) or ``"finest"`` (the one
            with the most cells). See the module docstring for the trade-off.
        activation: What makes the result's ``probs`` of the averaged logits.

    Raises:
        InvalidOptionError: For an unknown ``common``.
    """

    def __init__(
        self,
        geometries: Sequence[GridGeometry],
        common: CommonGrid = "first",
        activation: str = "softmax",
    ) -> None:
        if common not in COMMON_GRIDS:
            raise InvalidOptionError(
                f"common grid must be one of {', '.join(COMMON_GRIDS)}, got {common!r}"
            )
        # max keeps the first of equals, so ties go to the earlier scale.
        finest = max(geometries, key=lambda g: g.shape[0] * g.shape[1])
        self.geometry = geometries[0] if common == "first" else finest
        self.common: CommonGrid = common
        self.activation = activation
        self._passes: list[Pass | None] = [None] * len(geometries)
        self._sum: np.ndarray | None = None

    @property
    def complete(self) -> bool:
        """Whether every pass has been added."""
        return all(p is not None for p in self._passes)

    def add(self, index: int, logits: np.ndarray, summary: Pass) -> None:
        """Adds pass ``index``: its logits on ``summary.geometry`` and its summary."""
        self._passes[index] = summary
        if len(self._passes) == 1:
            self._sum = logits  # nothing to average: the plain grid, bit for bit
            return
        resampled = resample_grid(logits, summary.geometry, self.geometry).astype(np.float64)
        self._sum = resampled if self._sum is None else self._sum + resampled

    def result(self) -> MultiScaleResult:
        """The averaged logits, their activation and every pass (all must have been added)."""
        passes = tuple(p for p in self._passes if p is not None)
        if self._sum is None or len(passes) != len(self._passes):
            raise ValueError(f"{len(passes)} of {len(self._passes)} passes were added")
        logits = self._sum if len(passes) == 1 else (self._sum / len(passes)).astype(np.float32)
        probs = apply_activation(logits, self.activation)
        exact = exact_on(passes, self.geometry)
        return MultiScaleResult(self.geometry, logits, probs, passes, self.common, exact)


def exact_on(passes: Sequence[Pass], common: GridGeometry) -> np.ndarray | None:
    """The cells of ``common`` whose averaged value is exact in every pass, ``(rows, cols)``.

    A cell's averaged value equals what crops give there when, in every pass, every cell that
    the interpolation onto it weighs (see :func:`interpolation_weights`) was evaluated as a crop.

    Returns:
        The mask; None if a pass does not say which of its cells are exact.
    """
    if any(p.exact is None for p in passes):
        return None
    result = np.ones(common.shape, dtype=bool)
    for p in passes:
        assert p.exact is not None
        along_y, along_x = interpolation_weights(p.geometry, common)
        # a cell is inexact if any weighed source cell is inexact
        inexact = (along_y != 0).astype(np.float64) @ (~p.exact).astype(np.float64)
        inexact = inexact @ (along_x != 0).astype(np.float64).T
        result &= inexact == 0
    return result


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
    along_y, along_x = interpolation_weights(source, target)
    resampled = along_y @ values.astype(np.float64) @ along_x.T
    return resampled.astype(np.float32)


def interpolation_weights(
    source: GridGeometry, target: GridGeometry
) -> tuple[np.ndarray, np.ndarray]:
    """The weights :func:`resample_grid` moves a grid with, one matrix per axis.

    Args:
        source: Where the values lie, ``(rows, cols)`` cells.
        target: Where they go, ``(rows', cols')`` cells (of the same original image).

    Returns:
        float64 ``(rows', rows)`` and ``(cols', cols)``: target cell ``(i, j)`` takes
        ``sum over (a, b) of along_y[i, a] * along_x[j, b] * values[:, a, b]``; identity
        matrices for equal geometries.
    """
    if source == target:
        rows, cols = source.shape
        return np.eye(rows), np.eye(cols)
    src = source.centers().astype(np.float64)
    dst = target.centers().astype(np.float64)
    along_y = _axis_weights(src[:, 0, 1], dst[:, 0, 1])  # (rows', rows)
    along_x = _axis_weights(src[0, :, 0], dst[0, :, 0])  # (cols', cols)
    return along_y, along_x


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
    activation: str = "softmax",
) -> MultiScaleResult:
    """Scores a photo at several scales (and mirrored), and averages on one common grid.

    Passes run in the order ``scales`` gives, each scale unmirrored then (with ``flip``)
    mirrored, one call of ``score`` per pass.

    Args:
        image: Decoded RGB photo in its displayed orientation, ``(H, W)`` original pixels.
        score: The scoring seam: uint8 ``(N, H', W', 3)`` -> ``(N, K, rows, cols)`` logits.
        plan: ``plan(original_size, scale)`` -> that pass's geometry.
        interpolation: Resampling filter for resizing (the model's, e.g. ``"bicubic"``).
        scales: Factors of the base size, e.g. ``(1, 1.5, 2)``.
        flip: Also evaluate the horizontal mirror at every scale.
        common: The grid to average on: ``"first"`` or ``"finest"`` (see :class:`PassAverage`).
        keep_pass_logits: Keep every pass's own grid in ``Pass.logits`` (for inspection and
            tests; ``K * rows * cols`` floats per pass).
        activation: What makes ``probs`` of the logits: ``"softmax"``, ``"sigmoid"``, ``"none"``.

    Returns:
        The averaged logits and probabilities on the common grid, and every pass.

    Raises:
        InvalidOptionError: For bad scales or an unknown ``common``.
        GeometryError: For a scorer whose grid does not fit the planned geometry.
    """
    passes = plan_passes(image, plan, interpolation, scales, flip)
    average = PassAverage([p.geometry for p in passes], common, activation)
    for index, spec in enumerate(passes):
        grids = score(spec.network_input()[None])
        if isinstance(grids, torch.Tensor):
            grids = grids.detach().float().cpu().numpy()
        if grids.ndim != 4 or grids.shape[0] != 1:
            raise GeometryError(f"the scorer returned {grids.shape} for one image")
        finished = finish_pass(spec, grids[0], keep_logits=keep_pass_logits, activation=activation)
        average.add(index, *finished)
    return average.result()


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
    """:func:`multiscale_grid` with an engine's planner, resampling filter, scorer, activation.

    Args:
        engine: The converted model (any stride and method).
        image: Decoded RGB photo.
        scales: Factors of ``engine.settings.size``.
        flip: Also evaluate the horizontal mirror at every scale.
        common: ``"first"`` or ``"finest"`` (see :class:`PassAverage`).
        score: Replaces ``engine.score``; same contract.
        keep_pass_logits: Keep every pass's own grid in ``Pass.logits``.

    Returns:
        The averaged maps and the passes.
    """
    return multiscale_grid(
        image,
        score=score if score is not None else engine.score,
        plan=engine.plan,
        interpolation=engine.loaded.interpolation,
        scales=scales,
        flip=flip,
        common=common,
        keep_pass_logits=keep_pass_logits,
        activation=engine.activation,
    )
