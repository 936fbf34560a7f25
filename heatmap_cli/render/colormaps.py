"""Colormap names, checked without importing matplotlib where the answer is known.

Importing matplotlib costs more than everything else the command does before it loads a model,
so the names of matplotlib's built-in colormaps ship with the package (``data/colormaps.json``)
with the matplotlib version they came from, and so do the overlay palettes drawn from them
(``data/palettes.bin``; both written by ``python -m heatmap_cli.render.colormap_writer`` and
checked against matplotlib by a test). :func:`check_cmap` accepts a listed name at once and
refuses any other with the close names, as matplotlib would; once matplotlib is imported (where a
program may have registered colormaps of its own), or for another matplotlib version, it asks
matplotlib itself.
"""

from __future__ import annotations

import difflib
import json
import sys
from functools import cache
from pathlib import Path

from heatmap_cli.errors import UnknownColormapError
from heatmap_cli.versions import installed_version

__all__ = [
    "DEFAULT_CMAP",
    "PALETTES_FILE",
    "PERCEPTUAL_CMAPS",
    "builtin_colormaps",
    "check_cmap",
    "is_diverging",
    "shipped_palette",
]

DEFAULT_CMAP = "inferno"
"""Perceptually uniform, lightness rises monotonically (reads correctly in greyscale and for
colour-blind viewers) and its bright yellow end reads as "hot" at a glance."""

PERCEPTUAL_CMAPS = ("inferno", "magma", "viridis", "plasma", "cividis")
"""The perceptually uniform colormaps, suggested after an unknown name."""

# matplotlib's diverging colormaps (its "Diverging" gallery); it has no flag for them.
_DIVERGING_CMAPS = frozenset(
    (
        "PiYG", "PRGn", "BrBG", "PuOr", "RdGy", "RdBu", "RdYlBu", "RdYlGn", "Spectral",
        "coolwarm", "bwr", "seismic", "berlin", "managua", "vanimo",
    )
)  # fmt: skip

NAMES_FILE = Path(__file__).with_name("data") / "colormaps.json"
PALETTES_FILE = Path(__file__).with_name("data") / "palettes.bin"
"""Each built-in colormap's overlay palette (``colour.colormap_palette``): 256 RGB bytes per
colormap, in the order of ``NAMES_FILE``."""
PALETTE_BYTES = 256 * 3


def is_diverging(name: str) -> bool:
    """Whether a colormap is diverging (``RdBu_r``, ``coolwarm``...): two hues about a centre."""
    return name.removesuffix("_r") in _DIVERGING_CMAPS


@cache
def builtin_colormaps() -> tuple[str, ...]:
    """The installed matplotlib's built-in colormap names, in its order, as shipped.

    Empty for another matplotlib version than the one the list came from.
    """
    try:
        shipped = json.loads(NAMES_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if shipped.get("matplotlib") != installed_version("matplotlib"):
        return ()
    return tuple(shipped["names"])


@cache
def _palettes() -> bytes:
    try:
        data = PALETTES_FILE.read_bytes()
    except OSError:
        return b""
    return data if len(data) == PALETTE_BYTES * len(builtin_colormaps()) else b""


def shipped_palette(name: str) -> bytes | None:
    """A built-in colormap's 256 overlay colours as RGB bytes, as shipped; None if not shipped.

    Matplotlib refuses to register another colormap under a built-in name, so the shipped
    colours of the installed matplotlib version are the ones it would give.
    """
    names = builtin_colormaps()
    palettes = _palettes()
    if not palettes or name not in names:
        return None
    start = names.index(name) * PALETTE_BYTES
    return palettes[start : start + PALETTE_BYTES]


def check_cmap(name: str) -> None:
    """Checks a colormap name up front (e.g. before a long batch), as drawing would.

    Args:
        name: Name of a matplotlib colormap.

    Raises:
        UnknownColormapError: If matplotlib does not know the name; the message lists close
            names and the perceptually uniform choices.
    """
    if isinstance(name, str) and name in builtin_colormaps():
        return
    if "matplotlib" in sys.modules or not builtin_colormaps():
        # a program may have registered colormaps of its own: matplotlib knows them
        import matplotlib

        known = list(matplotlib.colormaps)
    else:  # nothing can have been registered yet: the built-in ones are all there are
        known = list(builtin_colormaps())
    if not isinstance(name, str) or name not in known:
        close = difflib.get_close_matches(str(name), known, n=5, cutoff=0.5)
        close += [c for c in known if c.lower() == str(name).lower() and c not in close]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownColormapError(
            f"unknown colormap {name!r}; {hint}"
            f"perceptually uniform choices: {', '.join(PERCEPTUAL_CMAPS)}"
        )


def live_colormaps() -> dict[str, object]:
    """What ``data/colormaps.json`` holds, from the installed matplotlib (imports it)."""
    import matplotlib

    return {"matplotlib": matplotlib.__version__, "names": list(matplotlib.colormaps)}
