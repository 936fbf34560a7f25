"""Which grid method runs: ``--method``'s choices, and what ``auto`` picks.

The grid methods themselves are in :mod:`heatmap_cli.grid` (one registry); ``auto`` is the
command's own choice among them.
"""

from __future__ import annotations

from heatmap_cli.grid import method_names

__all__ = ["method_choices"]


def method_choices() -> tuple[str, ...]:
    """``--method`` values: ``auto`` (dense, or dilate for a finer stride) and every method.

    ``heatmap_cli.grid.registry.register_method`` adds one.
    """
    return ("auto", *method_names())
