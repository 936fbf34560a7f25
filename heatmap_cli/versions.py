"""Installed versions of packages, read without importing them."""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

__all__ = ["installed_version"]

_VERSION_FILES = ("version.py", "_version.py")
_VERSION = re.compile(r"^(?:__version__|version)\s*(?::\s*str\s*)?=\s*['\"]([^'\"]+)['\"]", re.M)


@cache
def installed_version(package: str) -> str | None:
    """The installed version of an importable package, without importing it.

    Importing torch, torchvision or matplotlib takes longer than answering a question that
    needs only their version, so it is read from the package's ``version.py`` (torch,
    torchvision, timm) or ``_version.py`` (matplotlib); else from its distribution's metadata.

    Args:
        package: The import name, e.g. ``"torchvision"``.

    Returns:
        The version string, e.g. ``"0.29.1+cu130"``; None when the package is not installed.
    """
    if package in sys.modules:
        version = getattr(sys.modules[package], "__version__", None)
        if isinstance(version, str):
            return version
    spec = importlib.util.find_spec(package)  # finds a top-level package without importing it
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or ():
        for name in _VERSION_FILES:
            try:
                found = _VERSION.search((Path(folder) / name).read_text(encoding="utf-8"))
            except OSError:
                continue
            if found:
                return found.group(1)
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
