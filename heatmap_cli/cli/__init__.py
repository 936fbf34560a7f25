"""The ``heatmap`` command: a thin click layer that parses, calls the library and reports.

* :mod:`~heatmap_cli.cli.options`: the click command, its options, and the exit status;
* :mod:`~heatmap_cli.cli.params`: click parameter types and callbacks;
* :mod:`~heatmap_cli.cli.command`: one run, from checked options to the summary line;
* :mod:`~heatmap_cli.cli.batch`: the per-image path (resume check, score, write) and its tally;
* :mod:`~heatmap_cli.cli.console`: stdout and stderr that never fail a batch;
* :mod:`~heatmap_cli.cli.ray_runner`: the same per-image path on a Ray actor pool;
* :mod:`~heatmap_cli.cli.manifest`: ``OUT/manifest.jsonl``;
* :mod:`~heatmap_cli.cli.records`: the json record of an image;
* :mod:`~heatmap_cli.cli.writers`: an image's files from its record;
* :mod:`~heatmap_cli.cli.resume`: ``--skip-existing``: is an image complete, and if not why.
"""
