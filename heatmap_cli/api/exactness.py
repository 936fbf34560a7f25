"""What a notebook map knows of the classifier's exact answers on its windows.

The command checks every image's map against exact windows (:mod:`heatmap_cli.pipeline.fidelity`):
the peaks of the classes it draws and ``--fidelity`` spread cells. :func:`check_image` runs that
same check on a notebook map, with the classes the command draws by default (the image-level
ranking's top 3, max pooling), so :attr:`ScoreMap.fidelity <heatmap_cli.api.ScoreMap.fidelity>`
holds the figures of the command's json for the same options.

An overlay of another class, or of logits, peaks at a cell the default check may not have
evaluated; the command, asked for that picture (``--class``, ``--scores logits``), checks that
cell. :class:`ExactCells` therefore evaluates such a cell on demand, from the pass pixels the map
keeps, exactly as the check would (the same code), and remembers it: the label then carries the
exact value where the command's does.
"""

from __future__ import annotations

from collections.abc import Sequence

from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.exact import ExactWindows
from heatmap_cli.pipeline.fidelity import Fidelity, check_fidelity, image_fidelity
from heatmap_cli.pipeline.ranking import ImageRanking
from heatmap_cli.pipeline.rendering import OutputOptions, rendered_classes
from heatmap_cli.pipeline.scoring import ImageResult

__all__ = ["Cell", "ExactCells", "check_image", "default_peaks"]

Cell = tuple[int, int]


class ExactCells:
    """The classifier's exact answers at cells of one image's map: checked, or on demand.

    Holds the image's pass pixels (``ImageResult.inputs``) and the engine's exact windows for as
    long as the map lives: at the default ``size=384`` about 0.6 MB per scale for a 4:3 photo
    (less than the overlay copy of the photo the map keeps anyway), 36 MB per scale for a
    12 MP photo at ``size="native"``: what the command holds while it writes that image.

    Args:
        result: The image's map, with its passes' pixels.
        windows: The classifier on chosen windows (``GridEngine.exact``).
        activation: What makes scores of logits (``"softmax"``, ``"sigmoid"``, ``"none"``).
        probabilities: Whether those scores are probabilities.
        checked: The image's fidelity check, whose cells are known already.
    """

    def __init__(
        self,
        result: ImageResult,
        windows: ExactWindows,
        activation: str,
        probabilities: bool,
        checked: Fidelity | None = None,
    ) -> None:
        self._result, self._windows = result, windows
        self._activation, self._probabilities = activation, probabilities
        self._checks: list[Fidelity] = [] if checked is None else [checked]

    def check(self, cells: Sequence[Cell], count: int = 0) -> Fidelity:
        """A fidelity check of ``cells`` plus ``count`` spread cells, as the command's.

        Cells already exact in the map (``crops``, the refined cells of ``refine``) are taken
        as they are, as the command's check takes them.

        Args:
            cells: ``(row, col)`` cells of the map's grid.
            count: Spread cells checked besides ``cells``
                (:func:`~heatmap_cli.pipeline.fidelity.spread_cells`).

        Returns:
            The cells' map and exact logits and the figures over them.

        Raises:
            InvalidOptionError: A cell outside the grid.
        """
        grid = self._result.grid
        rows, cols = grid.geometry.shape
        for row, col in cells:
            if not (0 <= row < rows and 0 <= col < cols):
                raise InvalidOptionError(f"cell ({row}, {col}) is outside the {rows}x{cols} grid")
        check = check_fidelity(
            grid.logits,
            self._result.inputs,
            grid.geometry,
            cells,
            count,
            self._windows,
            activation=self._activation,
            probabilities=self._probabilities,
            known=grid.exact,
        )
        self._checks.append(check)
        return check

    def score(
        self, cell: Cell, index: int, scores: str = "probs", evaluate: bool = True
    ) -> float | None:
        """The exact score of class ``index`` at ``cell``: a probability, or a logit.

        Args:
            cell: ``(row, col)`` of the map's grid.
            index: The class.
            scores: ``"probs"`` (the activation's scores) or ``"logits"``.
            evaluate: Evaluate the window now when it was not (one window per pass); False:
                None for a cell not evaluated yet.
        """
        for check in self._checks:
            value = check.exact_score(cell, index, scores)
            if value is not None:
                return value
        if not evaluate:
            return None
        return self.check([cell]).exact_score(cell, index, scores)


def default_peaks(
    result: ImageResult,
    class_names: Sequence[str],
    ranking: ImageRanking,
    probabilities: bool,
) -> list[Cell]:
    """The peak cells of the classes the command draws with default options.

    The image-level ranking's top 3 (max pooling), each at the peak of its drawn scores:
    probabilities, or logits for a model whose scores are its logits (``activation="none"``,
    which the command draws as logits).

    Args:
        result: The image's map.
        class_names: The ``K`` class names.
        ranking: The image's ranking with max pooling.
        probabilities: Whether the map's scores are probabilities.
    """
    options = OutputOptions(scores="probs" if probabilities else "logits")
    return [c.cell for c in rendered_classes(result, class_names, options, ranking)]


def check_image(
    result: ImageResult, engine: GridEngine, peaks: Sequence[Cell], count: int
) -> tuple[Fidelity | None, ExactCells | None]:
    """The command's fidelity check of one image, and its exact cells for later use.

    Args:
        result: The image's map, with its passes' pixels (``score_images(keep_inputs=True)``).
        engine: The engine that scored it.
        peaks: The drawn classes' peak cells (:func:`default_peaks`).
        count: Spread cells checked besides the peaks; 0 turns the check off.

    Returns:
        ``(check, exact cells)``; ``(None, None)`` when off or when no pixels were kept.

    Raises:
        Exception: Whatever evaluating the windows raised (running out of memory...).
    """
    fidelity = image_fidelity(result, engine, peaks, count)
    if fidelity is None:
        return None, None
    cells = ExactCells(result, engine.exact, engine.activation, engine.probabilities, fidelity)
    return fidelity, cells
