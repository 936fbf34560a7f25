"""One image's class maps in a notebook: the numbers of the command's npz, and its pictures.

A :class:`ScoreMap` holds what the command's loader made of one image
(:class:`~heatmap_cli.pipeline.scoring.ImageResult`): the averaged grid and every pass, and the
photo's display copy. Its arrays are the npz's, its ranking is the json's ``top_k``
(:func:`~heatmap_cli.pipeline.ranking.rank_passes`), and :meth:`ScoreMap.overlay` draws with the
command's own code (:func:`~heatmap_cli.pipeline.rendering.rendered_classes` and
:func:`~heatmap_cli.pipeline.rendering.render_overlay`), so it is the picture the command writes
for the same options. Its fidelity check (:attr:`ScoreMap.fidelity`) is the command's, and its
overlay labels carry the exact value at the peak where the command's do
(:mod:`heatmap_cli.api.exactness`).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from heatmap_cli.api.exactness import Cell, ExactCells
from heatmap_cli.errors import InvalidOptionError, UnknownClassError, setting
from heatmap_cli.pipeline.fidelity import Fidelity
from heatmap_cli.pipeline.multiscale import Pass
from heatmap_cli.pipeline.ranking import ImageRanking, rank_passes, resolve_class
from heatmap_cli.pipeline.rendering import (
    OutputOptions,
    RenderedClass,
    render_overlay,
    rendered_classes,
)
from heatmap_cli.pipeline.scoring import ImageResult
from heatmap_cli.render import DEFAULT_SCALE, peak_cell, peak_location

__all__ = ["ClassSpec", "ScoreMap"]

ClassSpec = int | str | tuple[int, str, float]
"""A class: its index, its name (exact, else a unique part of it; any case), or an entry of
:meth:`ScoreMap.top`."""


@dataclass(frozen=True, eq=False)
class ScoreMap:
    """The class maps of one image: probabilities and logits per window, and where they are.

    Cell ``(i, j)`` is the classifier's answer on one window of the photo; ``centers[i, j]`` is
    that window's centre in the photo's own pixels (after its EXIF orientation, for a file).

    Attributes:
        result: What the command's loader made of the image (grid, passes, display copy).
        class_names: The ``K`` class names.
        probabilities: Whether :attr:`probs` are probabilities (else the logits themselves:
            ``activation="none"`` on a model that returns logits); pictures then show logits.
        fidelity: The map checked against exact windows as the command checks it (the json's
            ``fidelity``: ``cells``, ``top1_agreement``, ``max_abs_diff``, ``mean_abs_diff``,
            and ``to_json()``); None when the check is off (``HeatmapModel(fidelity=0)``) or
            failed (:attr:`notes` says why).
        exact_cells: The exact answers known at cells of the map, and the means to evaluate
            more (the pass pixels); None without a check.
        remarks: The command's remark on the map: the fidelity note, or a check that failed.
    """

    result: ImageResult
    class_names: tuple[str, ...]
    probabilities: bool = True
    fidelity: Fidelity | None = None
    exact_cells: ExactCells | None = field(default=None, repr=False)
    remarks: tuple[str, ...] = ()
    _rankings: dict[str, ImageRanking] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        """The image's file as given, or ``<image N>`` for one given in memory."""
        return str(self.result.item.path)

    @property
    def probs(self) -> np.ndarray:
        """float32 ``(K, h, w)``: per cell, the activation of :attr:`logits` (softmax over K)."""
        return self.result.grid.probs

    @property
    def logits(self) -> np.ndarray:
        """float32 ``(K, h, w)``: per cell, the logits (averaged over the passes)."""
        return self.result.grid.logits

    @functools.cached_property
    def centers(self) -> np.ndarray:
        """float32 ``(h, w, 2)``: the ``(x, y)`` centre of each cell's window, original pixels."""
        return self.result.grid.geometry.centers()

    @property
    def window(self) -> np.ndarray:
        """float32 ``(2,)``: a window's ``(width, height)`` in original pixels."""
        return self.result.grid.geometry.window_in_original()

    @property
    def stride(self) -> int:
        """Output stride in the network input's pixels (see :attr:`input_size`)."""
        return self.result.grid.geometry.stride

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the network input: the photo resized (first scale's, if several)."""
        return self.result.grid.geometry.input_size

    @property
    def original_size(self) -> tuple[int, int]:
        """``(H, W)`` of the photo in its own pixels."""
        return self.result.grid.geometry.original_size

    @property
    def photo(self) -> np.ndarray:
        """uint8 ``(h, w, 3)``: the photo the overlays are drawn on (shrunk if very large)."""
        return self.result.display

    @property
    def passes(self) -> tuple[Pass, ...]:
        """Every pass that went in (one per scale and flip; one for a plain run)."""
        return self.result.grid.passes

    @property
    def notes(self) -> tuple[str, ...]:
        """Warnings about this image, and the command's remark on its map's fidelity.

        An image upscaled from below the window, a damaged EXIF block...; a map that departs
        from the classifier's answers on its windows (:attr:`fidelity`), or a check that failed.
        """
        return self.result.notes + self.remarks

    def index(self, cls: ClassSpec) -> int:
        """The index of a class given by index or name.

        Raises:
            UnknownClassError: An index out of range, or a name that matches no class or
                several (the message lists them).
        """
        if isinstance(cls, tuple) and cls and isinstance(cls[0], (int, np.integer)):
            cls = cls[0]  # an entry of top(): (index, name, score)
        if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
            return resolve_class(str(int(cls)), self.class_names)
        if isinstance(cls, str):
            return resolve_class(cls, self.class_names)
        raise UnknownClassError(f"a class is an index or a name, got {cls!r}")

    def ranking(self, pooling: str = "max") -> ImageRanking:
        """The image-level ranking of every class, computed once per pooling.

        Args:
            pooling: ``"max"`` (each class's best window, OverFeat's) or ``"mean"``.
        """
        if pooling not in self._rankings:
            self._rankings[pooling] = rank_passes(self.passes, pooling)
        return self._rankings[pooling]

    def top(self, k: int = 5, pooling: str = "max") -> list[tuple[int, str, float]]:
        """The image's ``k`` best classes, as the json's ``top_k`` ranks them.

        Args:
            k: How many (at most ``K``).
            pooling: ``"max"`` or ``"mean"`` of each class map, averaged over the passes.

        Returns:
            ``[(index, name, score), ...]``, best first; scores in ``[0, 1]``.
        """
        return [(i, self.class_names[i], s) for i, s in self.ranking(pooling).top(k)]

    def peak(self, cls: ClassSpec, scores: str = "probs") -> tuple[float, float, float]:
        """Where a class's map is highest: ``(value, x, y)``, ``x, y`` in original pixels.

        Args:
            cls: The class, by index or name.
            scores: ``"probs"`` or ``"logits"``.
        """
        if scores not in ("probs", "logits"):
            raise InvalidOptionError(f"scores must be probs or logits, got {scores!r}")
        values = self.probs if scores == "probs" else self.logits
        return peak_location(values[self.index(cls)], self.centers)

    def exact_peak(
        self, cls: ClassSpec, scores: str = "probs", *, evaluate: bool = True
    ) -> float | None:
        """The classifier's exact answer at a class's peak cell: the json's ``exact_peak``.

        The peak is that of the drawn scores (:meth:`peak`); the exact value is what
        ``method="crops"`` gives there with the same options, in the same units. The default
        check holds it for the peaks of the 3 best classes; for another class (or the logits'
        peak) the one window is evaluated now, from the pixels the map keeps, and remembered:
        the value the command checks when asked to draw that class.

        Args:
            cls: The class, by index or name.
            scores: ``"probs"`` or ``"logits"`` (logits where :attr:`probabilities` is False).
            evaluate: False: None unless that cell was evaluated already.

        Returns:
            A probability (or logit); None when the map has no check (``fidelity=0``).
        """
        if scores not in ("probs", "logits"):
            raise InvalidOptionError(f"scores must be probs or logits, got {scores!r}")
        scores = scores if self.probabilities else "logits"
        if self.exact_cells is None:
            return None
        index = self.index(cls)
        values = self.probs if scores == "probs" else self.logits
        return self.exact_cells.score(peak_cell(values[index]), index, scores, evaluate)

    def check(self, cells: Sequence[Cell] = (), count: int = 0) -> Fidelity:
        """Checks more of the map against exact windows: chosen cells and spread ones.

        The figures are the command's (``Fidelity.to_json()``), over these cells; the map's own
        check (:attr:`fidelity`) stays as it is.

        Args:
            cells: ``(row, col)`` cells of the grid, e.g. from ``np.argwhere``.
            count: More cells spread evenly over the grid (all cells at most).

        Returns:
            The check of ``cells`` and the spread ones; cells already exact in the map
            (``crops``, refined cells) are taken as they are.

        Raises:
            InvalidOptionError: A cell outside the grid, or a map without its pixels
                (``HeatmapModel(fidelity=0)``).
        """
        if self.exact_cells is None:
            raise InvalidOptionError(
                f"this map kept no pixels to evaluate windows on: it was made with "
                f"{setting('fidelity')}=0, or its check failed"
            )
        chosen = [(int(r), int(c)) for r, c in cells]
        return self.exact_cells.check(chosen, count)

    def overlay(
        self,
        cls: ClassSpec,
        *,
        classes: Sequence[ClassSpec] | None = None,
        scores: str = "probs",
        cmap: str = "inferno",
        alpha: float = 0.5,
        scale: str = DEFAULT_SCALE,
        vmin: float | None = None,
        vmax: float | None = None,
        label: str = "auto",
        colorbar: bool = False,
    ) -> Image.Image:
        """One class's map over the photo: the picture the command writes for these options.

        Args:
            cls: The class drawn, by index or name.
            classes: The classes drawn for the image, which the ``"shared"`` colour scale
                spans (``cls`` is added if missing); default ``cls`` alone, as ``--class cls``.
                As a run without ``--class`` (``--top-k 3``): ``classes=s.top(3)``.
            scores: ``"probs"`` or ``"logits"`` (logits where :attr:`probabilities` is False).
            cmap: A matplotlib colormap; a diverging one is centred on 0.
            alpha: Opacity of the map at full score, 0..1.
            scale: ``"shared"``, ``"absolute"`` or ``"per-class"``.
            vmin: A fixed score at the colormap's bottom.
            vmax: A fixed score at its top.
            label: ``"auto"`` (the corner hiding least), ``"corner"`` (top-left) or ``"none"``.
                It adds "(exact 0.xx)" where :meth:`exact_peak` differs by over 0.01, as the
                command's does.
            colorbar: Append a colour bar.

        Returns:
            An RGB image the size of :attr:`photo` (wider by the colour bar), carrying the
            photo's colour profile in ``info["icc_profile"]`` when it has one.

        Raises:
            UnknownClassError: A class that does not exist.
            InvalidOptionError: Options that cannot be drawn (an unknown colormap, inverted
                ends, ``absolute`` logits without both ends...).
        """
        index = self.index(cls)
        drawn = list(dict.fromkeys(self.index(c) for c in (classes or ())))
        drawn += [] if index in drawn else [index]
        options = OutputOptions(
            classes=tuple(drawn),
            top_k=len(drawn),
            scores=scores if self.probabilities else "logits",
            cmap=cmap,
            alpha=alpha,
            colorbar=colorbar,
            scale=scale,
            vmin=vmin,
            vmax=vmax,
            label=label,
        )
        picture = Image.fromarray(render_overlay(self.result, self._drawn(index, options), options))
        if self.result.icc_profile:
            picture.info["icc_profile"] = self.result.icc_profile
        return picture

    def _drawn(self, index: int, options: OutputOptions) -> RenderedClass:
        """Class ``index`` as the command draws it: its peak, scale and exact peak value.

        The exact value is evaluated now where the map's check did not reach the peak; if that
        fails, the class is drawn without it (a warning says why), as the command draws a map
        whose check failed.
        """
        entries = rendered_classes(self.result, self.class_names, options)
        (entry,) = (e for e in entries if e.index == index)
        if self.exact_cells is None:
            return entry
        try:
            exact = self.exact_cells.score(entry.cell, index, options.scores)
        except Exception as error:  # the picture is good work: drawn without the exact value
            note = f"{self.name}: the exact value at {entry.name}'s peak failed: {error}"
            warnings.warn(note, UserWarning, stacklevel=3)
            return entry
        return dataclasses.replace(entry, exact_peak=exact)

    def __repr__(self) -> str:
        rows, cols = self.result.grid.geometry.shape
        best = ", ".join(f"{name} {score:.2f}" for _, name, score in self.top(3))
        checked = ""
        if self.fidelity is not None:
            same = round(self.fidelity.top1_agreement * len(self.fidelity.cells))
            checked = (
                f"; exact windows: top class the same on {same} of {len(self.fidelity.cells)}, "
                f"largest difference {self.fidelity.max_abs_diff:.2f}"
            )
        return (
            f"ScoreMap({self.name}: {len(self.class_names)} classes on a {rows}x{cols} grid, "
            f"stride {self.stride}; top: {best}{checked})"
        )
