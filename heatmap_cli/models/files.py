"""Files by content and place, without torch: a file's digest, torch hub's cache folder.

:func:`torch_hub_cache_path` says where torch hub keeps (or would keep) a downloaded file, as
``torch.hub.get_dir()`` does (``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else
``~/.cache/torch/hub``), so that ``--list-models`` can say what is cached without importing
torch; once torch is imported (where a program may have called ``torch.hub.set_dir``), torch
hub itself answers. :func:`file_sha256` identifies a file by its content;
:func:`check_weights_file` refuses a ``--weights`` that is not there before anything is loaded.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

from heatmap_cli.errors import WeightsMismatchError

__all__ = ["check_weights_file", "file_sha256", "torch_hub_cache_path", "torch_hub_dir"]


def torch_hub_dir() -> Path:
    """The folder of torch hub (``torch.hub.get_dir()``), without importing torch."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache, "torch")))
    return Path(home) / "hub"


def torch_hub_cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (or would keep) ``url``'s file."""
    return torch_hub_dir() / "checkpoints" / Path(urlparse(url).path).name


def file_sha256(path: Path) -> str:
    """Hex SHA-256 digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_file(path: Path) -> None:
    """Raises ``WeightsMismatchError`` unless ``path`` is an existing file."""
    if not path.exists():
        raise WeightsMismatchError(f"{path}: no such file.")
    if not path.is_file():
        raise WeightsMismatchError(f"{path}: not a file.")
