"""Class names shared by the sources: the ImageNet-1k categories."""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path

__all__ = ["imagenet_categories"]

# Where torchvision keeps the list its weights' metadata ("categories") holds.
_META_FILE = ("models", "_meta.py")
_META_NAME = "_IMAGENET_CATEGORIES"


@cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard (sorted WordNet id) order.

    The names are torchvision's. Importing torchvision takes about a second (it imports
    ``torch._dynamo``), most of a small photo's run with the default model, so the list is read
    as a literal from torchvision's source file where it is; torchvision is imported only if
    that file is not where expected.

    Returns:
        Short names as torchvision's weights metadata gives them, e.g. index 281 ``"tabby"``.
    """
    names = _literal_categories()
    if names is not None:
        return names
    import torchvision

    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _literal_categories() -> tuple[str, ...] | None:
    """Torchvision's category list read from its source without importing it; None if absent."""
    spec = importlib.util.find_spec("torchvision")  # finds the package without importing it
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*_META_FILE)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == _META_NAME for target in statement.targets
        ):
            try:
                names = ast.literal_eval(statement.value)
            except ValueError:
                return None
            if isinstance(names, list) and len(names) == 1000:
                return tuple(str(name) for name in names)
    return None
