"""Weights files: reading a state dict, unwrapping checkpoints, loading it strictly.

Every source that accepts ``--weights FILE`` goes through :func:`read_state_dict` and
:func:`load_strict`, so a file is read the same way (tensors only, no code), a training
checkpoint is unwrapped the same way, and a mismatch is explained the same way whatever the
architecture. :func:`torch_hub_cache_path` says where torch hub keeps a downloaded file.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from heatmap_cli.errors import WeightsMismatchError
from heatmap_cli.models.base import short_reason

__all__ = ["load_strict", "read_state_dict", "torch_hub_cache_path"]

_CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


def torch_hub_cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (or would keep) ``url``'s file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a state dict from a ``torch.save`` or safetensors file.

    Only tensors are loaded (``torch.load(weights_only=True)``): a file cannot run code.

    Args:
        path: The weights file.

    Returns:
        ``{parameter or buffer name: tensor}``, unwrapped from a training checkpoint and with a
        ``"module."`` (DataParallel) or ``"_orig_mod."`` (torch.compile) prefix removed.

    Raises:
        WeightsMismatchError: The file is missing, unreadable or holds no state dict.
    """
    if not path.exists():
        raise WeightsMismatchError(f"{path}: no such file.")
    if not path.is_file():
        raise WeightsMismatchError(f"{path}: not a file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # Parsers of arbitrary files fail in arbitrary ways (pickle, zip, safetensors' Rust
        # errors, EOF); all of them mean "this file cannot be read".
        raise WeightsMismatchError(f"{path}: cannot be read ({_read_failure(err)}).") from err

    state_dict = _unwrap_checkpoint(loaded)
    if state_dict is None:
        raise WeightsMismatchError(
            f"{path}: holds no state dict (expected a mapping of names to tensors, optionally "
            f"under one of the keys {', '.join(map(repr, _CHECKPOINT_WRAPPER_KEYS))})."
        )
    return state_dict


def _unwrap_checkpoint(loaded: Any) -> dict[str, torch.Tensor] | None:
    """Finds the state dict in what ``torch.load`` returned, or ``None`` if there is none."""
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}} at worst
        if not isinstance(loaded, Mapping):
            return None
        inner = next(
            (loaded[k] for k in _CHECKPOINT_WRAPPER_KEYS if isinstance(loaded.get(k), Mapping)),
            None,
        )
        if inner is None:
            break
        loaded = inner
    if not loaded or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        return None
    state_dict = dict(loaded)
    for prefix in _KEY_PREFIXES:
        if all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, arch: str
) -> None:
    """Loads every parameter and buffer of ``model`` from ``state_dict``, or explains why not.

    Args:
        model: The architecture, built without pretrained weights.
        state_dict: From :func:`read_state_dict`.
        path: The file it came from (named in the message).
        arch: The architecture's name for the message, e.g. ``"resnet34"``.

    Raises:
        WeightsMismatchError: Keys are missing or unexpected, or shapes differ; the message
            names ``path`` and summarises the first few offenders of each kind with counts.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    problems = [
        _summarise(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches (file vs model)", mismatched),
        )
        if items
    ]
    if problems:
        raise WeightsMismatchError(
            f"{path}: does not fit {arch} ({len(state_dict)} tensors in the file, "
            f"{len(expected)} in the model): {'; '.join(problems)}."
        )
    model.load_state_dict(state_dict, strict=True)


def _summarise(label: str, items: list[str], shown: int = 3) -> str:
    """``"5 missing keys: a, b, c, ..."``."""
    more = ", ..." if len(items) > shown else ""
    return f"{len(items)} {label}: {', '.join(items[:shown])}{more}"


def _read_failure(err: Exception) -> str:
    """Explains why ``torch.load``/safetensors could not read a file, in a few words."""
    message = str(err)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if unsupported:
        return (
            f"it holds Python objects besides tensors ({unsupported.group(1)}); only plain state "
            "dicts are loaded: re-save it with torch.save(model.state_dict(), FILE)"
        )
    if isinstance(err, pickle.UnpicklingError | EOFError | zipfile.BadZipFile):
        reason = short_reason(err)
        return f"not a PyTorch or safetensors weights file, or a truncated one ({reason})"
    return short_reason(err)
