"""What the cases and studies share.

Timing, FLOP counting, the matmul peak and process memory (``common``), the case harness
(``harness``), the report tables (``report``), the grid cases (``grid_case``) and the memory
probe run in a fresh process (``memory_probe``).
"""
