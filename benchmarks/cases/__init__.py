"""The benchmark cases, one module each.

Each runs alone (``python -m benchmarks.cases.<name>``) or with the others through
``python -m benchmarks.run``, which lists them.
"""
