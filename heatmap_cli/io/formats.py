"""What files in and out can be, as plain values (no numpy, no Pillow)."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_FORMATS"]

IMAGE_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
"""The picture formats :func:`~heatmap_cli.io.array_files.write_image` writes, by file extension
(no dot), with Pillow's name for each."""

DEFAULT_MAX_PIXELS: int = 1024 * 1024 * 1024 // 4 // 3
"""Pillow's default ``Image.MAX_IMAGE_PIXELS`` (89,478,485: about 0.25 GiB of RGB)."""
