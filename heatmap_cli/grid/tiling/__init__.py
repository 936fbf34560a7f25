"""Huge images in bounded memory: exact tiled evaluation of a convolutionalized network.

A pathology slide or a satellite scene resized to 8192 x 8192 pixels needs gigabytes of
activations in one pass. The score grid is the same when computed tile by tile, with tiles on
the network's stride lattice, of the image's length modulo the stride, overlapping by each cell's
receptive field, and keeping only the cells whose field lies inside them:

* ``field``: the receptive field of one cell, from the ``torch.fx`` graph (``analysis``) or by
  a NaN probe;
* ``plan``: where the tiles lie and which cells each keeps;
* ``memory``: the activation memory of a pass and the largest tile that fits a budget;
* ``run``: evaluating the tiles into one grid, equal to the untiled one up to float rounding.
"""

from heatmap_cli.grid.tiling.field import ReceptiveField, receptive_field
from heatmap_cli.grid.tiling.memory import (
    CUDA_BUDGET_FRACTION,
    DEFAULT_CPU_BUDGET,
    MEMORY_SAFETY_FACTOR,
    FigureStore,
    choose_tile,
    default_memory_budget,
    estimate_activation_bytes,
    grid_bytes,
)
from heatmap_cli.grid.tiling.plan import Tile, TilePlan, minimum_tile, plan_tiles
from heatmap_cli.grid.tiling.run import tiled_score_grid

__all__ = [
    "CUDA_BUDGET_FRACTION",
    "DEFAULT_CPU_BUDGET",
    "MEMORY_SAFETY_FACTOR",
    "FigureStore",
    "ReceptiveField",
    "Tile",
    "TilePlan",
    "choose_tile",
    "default_memory_budget",
    "estimate_activation_bytes",
    "grid_bytes",
    "minimum_tile",
    "plan_tiles",
    "receptive_field",
    "tiled_score_grid",
]
