"""Where the benchmarks find the repository and its sample photos (no heavy imports)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["ROOT", "SAMPLES"]

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: ``benchmarks/support/paths.py`` is two folders below it."""

SAMPLES = ROOT / "sample_images"
"""The sample photos (scikit-image's CC0 ``chelsea`` and ``coffee``)."""
