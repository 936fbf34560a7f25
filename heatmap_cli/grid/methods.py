"""The built-in grid methods, declared without torch and registered in this order.

Each method's code is its own module (:mod:`~heatmap_cli.grid.dense`,
:mod:`~heatmap_cli.grid.stitch`, :mod:`~heatmap_cli.grid.dilate`, :mod:`~heatmap_cli.grid.crops`,
:mod:`~heatmap_cli.grid.refine`); here their functions are named, to be imported on first call
(:class:`~heatmap_cli.grid.registry.DeferredFunction`). So the registry answers which methods exist
and which strides each accepts before torch is imported: the command checks ``--method`` and
``--stride`` against them in a blink, and its ``--help`` lists them. A method added later is one
file plus one ``register_method`` line, with its functions as they are.
"""

from __future__ import annotations

from heatmap_cli.grid.registry import DeferredFunction, GridMethod, register_method

__all__ = ["CROPS", "DENSE", "DILATE", "REFINE", "STITCH"]


def _deferred(method: str, function: str) -> DeferredFunction:
    return DeferredFunction(f"heatmap_cli.grid.{method}", function)


DENSE = register_method(
    GridMethod(
        "dense",
        "one pass of the converted network, at its native stride",
        _deferred("dense", "dense_grid"),
        _deferred("dense", "dense_network"),
        strides="native",
        tileable=True,
        folds_norms=True,
    )
)
STITCH = register_method(
    GridMethod(
        "stitch",
        "a finer stride from f*f passes over the input shifted by the stride, interleaved",
        _deferred("stitch", "stitch_grid"),
        _deferred("stitch", "stitch_network"),
        tileable=True,
        folds_norms=True,
    )
)
DILATE = register_method(
    GridMethod(
        "dilate",
        "a finer stride in one pass of the 'a trous' network (stitches where it cannot)",
        _deferred("dilate", "dilate_grid"),
        _deferred("dilate", "dilate_network"),
        tileable=True,
        folds_norms=True,
    )
)
CROPS = register_method(
    GridMethod(
        "crops",
        "the unmodified model on every window: the exact reference",
        _deferred("crops", "crops_grid"),
        strides="any",
        needs_converted=False,
    )
)
REFINE = register_method(
    GridMethod(
        "refine",
        "dense, then exact windows where its answer is in doubt (at most 25% of the cells)",
        _deferred("refine", "refine_grid"),
        _deferred("refine", "refine_network"),
        tileable=True,
        folds_norms=True,
    )
)
