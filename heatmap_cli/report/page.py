"""The report's ``index.html``: one self-contained file with the style, script and gallery list.

The page's code (``static/report.js``, ``static/report.css``) is inlined into
``static/index.html`` together with a JSON object holding every image's gallery entry, this
run's failures, and the colour map as a lookup table, so the page needs nothing but the files
it names in ``index_files/``: no server, no network.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Sequence
from dataclasses import asdict
from importlib import resources

import numpy as np

from heatmap_cli.render.colour import colormap_lut
from heatmap_cli.report.encoding import DISPLAY_FLOOR, STORE_THRESHOLD
from heatmap_cli.report.failures import Failure
from heatmap_cli.report.records import ASSETS_DIR_NAME

__all__ = ["colormap_table", "render_page"]

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def colormap_table(name: str) -> np.ndarray:
    """A matplotlib colour map's lookup table, as the PNG overlays index it.

    Args:
        name: A matplotlib colour map name (``"inferno"``).

    Returns:
        uint8 ``(N, 3)`` RGB (``N`` = 256 for ``inferno``); value ``v`` in ``[0, 1]`` takes
        row ``min(floor(v * N), N - 1)``.

    Raises:
        RenderError: On an unknown name.
    """
    return np.rint(colormap_lut(name)).astype(np.uint8)


def render_page(
    entries: Sequence[dict[str, object]],
    failures: Sequence[Failure],
    *,
    title: str,
    cmap: str,
    alpha: float,
) -> str:
    """The report's HTML.

    Args:
        entries: One gallery entry per image (see :func:`heatmap_cli.report.assets.build_entry`).
        failures: The inputs to list as failed.
        title: The page title (the output folder's name).
        cmap: The overlays' matplotlib colour map.
        alpha: Initial opacity of the map at full score, in ``[0, 1]``.

    Returns:
        The complete ``index.html`` text.
    """
    table = colormap_table(cmap)
    data = {
        "version": 1,
        "title": title,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "assets": ASSETS_DIR_NAME,
        "cmap": cmap,
        "lut": base64.b64encode(table.tobytes()).decode("ascii"),
        "alpha": alpha,
        "floor": DISPLAY_FLOOR,
        "threshold": STORE_THRESHOLD,
        "images": list(entries),
        "failures": [asdict(failure) for failure in failures],
    }
    # ASCII only and no "<" inside the script element, so no text can end it early.
    embedded = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")
    parts = {
        "title": html.escape(title),
        "style": _static("report.css"),
        "script": _static("report.js"),
        "data": embedded,
    }
    return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], _static("index.html"))


def _static(name: str) -> str:
    return resources.files("heatmap_cli.report").joinpath("static", name).read_text("utf-8")
