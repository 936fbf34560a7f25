"""The one answer to an unknown model name: what it could have meant, from every source."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from heatmap_cli.models.base import ModelSource

__all__ = ["unknown_model_message"]

_MAX_SUGGESTIONS = 3
_MIN_SIMILARITY = 0.6


def unknown_model_message(name: str, sources: Sequence[ModelSource]) -> str:
    """Says that no source knows ``name`` and suggests the closest known names.

    A prefixed name (``timm/resnt18``) is compared with the names of the sources of that
    prefix, a bare one with the bare names of all other sources; a bare name that some source
    knows under its prefix (``convnext_nano`` -> ``timm/convnext_nano``) is suggested first.

    Args:
        name: The unknown name, stripped.
        sources: The registered sources, in registry order.

    Returns:
        One sentence for ``UnknownModelError``.
    """
    prefixed = [s for s in sources if s.prefix and name.startswith(s.prefix)]
    pool = prefixed or [s for s in sources if not s.prefix]
    candidates = [candidate for source in pool for candidate in source.names()]
    matches = difflib.get_close_matches(
        name.lower(), candidates, n=_MAX_SUGGESTIONS, cutoff=_MIN_SIMILARITY
    )
    aliases = [alias for source in sources for alias in source.aliases(name)]
    suggestions = [*aliases, *(m for m in matches if m not in aliases)]
    hint = f" Did you mean {', '.join(suggestions)}?" if suggestions else ""
    notes = "".join(f"; {source.hint}" for source in sources if source.hint)
    return f"Unknown model {name!r}.{hint} Run `heatmap --list-models` for the names{notes}."
