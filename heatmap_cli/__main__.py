"""``python -m heatmap_cli``: the same as the ``heatmap`` command."""

from heatmap_cli.cli.options import run

run()
