"""Class names shared by the sources: the ImageNet-1k categories."""

from __future__ import annotations

from functools import cache

import torchvision

__all__ = ["imagenet_categories"]


@cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard (sorted WordNet id) order.

    Returns:
        Short names as torchvision's weights metadata gives them, e.g. index 281 ``"tabby"``.
    """
    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
