"""Single studies, one module each.

Each measures one thing and prints its own table (``python -m benchmarks.studies.<name>``).
"""
