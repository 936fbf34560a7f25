"""Benchmarks of heatmap-cli, run from the repository root as modules.

``benchmarks.cases``: the timed cases that ``python -m benchmarks.run`` runs together;
``benchmarks.studies``: scripts that each measure one thing; ``benchmarks.support``: what both
share (timing, FLOPs, the matmul peak, memory, the report tables). Results and their histories
are in ``benchmarks/results/``; how to run them in ``benchmarks/README.md``.
"""
