"""Writes the shipped colormap names and palettes: ``python -m heatmap_cli.render.colormap_writer``.

Run it after upgrading matplotlib (``tests/render/test_colormaps.py`` fails until then).
"""

from __future__ import annotations

import json

from heatmap_cli.render.colormaps import NAMES_FILE, PALETTES_FILE, live_colormaps
from heatmap_cli.render.colour import matplotlib_palette

__all__ = ["write_colormaps"]


def write_colormaps() -> None:
    """Writes ``data/colormaps.json`` and ``data/palettes.bin`` from the installed matplotlib."""
    names = live_colormaps()
    NAMES_FILE.parent.mkdir(exist_ok=True)
    NAMES_FILE.write_text(json.dumps(names, indent=0) + "\n", encoding="utf-8")
    palettes = b"".join(matplotlib_palette(name).tobytes() for name in names["names"])
    PALETTES_FILE.write_bytes(palettes)


if __name__ == "__main__":  # pragma: no cover
    write_colormaps()
    print(f"wrote {NAMES_FILE} and {PALETTES_FILE}")
