"""Writes the shipped model catalog from the installed libraries.

``python -m heatmap_cli.models.catalog_writer``: run it after upgrading torchvision, timm or the
default model's package (``tests/models/test_catalog.py`` fails until then); it imports them all
and converts the default model once.
"""

from __future__ import annotations

import json

from heatmap_cli.models.catalog import (
    CATALOG_FILE,
    CATEGORIES_FILE,
    build_catalog,
    imagenet_categories,
)

__all__ = ["write_catalog"]


def write_catalog() -> None:
    """Writes ``data/catalog.json`` and ``data/imagenet_categories.txt`` from the libraries."""
    import torchvision

    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    names = [str(name) for name in weights.meta["categories"]]
    CATEGORIES_FILE.parent.mkdir(exist_ok=True)
    CATEGORIES_FILE.write_text("\n".join(names) + "\n", encoding="utf-8")
    imagenet_categories.cache_clear()
    text = json.dumps(build_catalog(), indent=1, ensure_ascii=False)
    CATALOG_FILE.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover
    write_catalog()
    print(f"wrote {CATALOG_FILE} and {CATEGORIES_FILE}")
