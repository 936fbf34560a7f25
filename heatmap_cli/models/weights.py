"""Weights files: reading a checkpoint, finding its state dict and key prefix, loading strictly.

Every source that accepts ``--weights FILE`` goes through :func:`read_checkpoint`,
:func:`match_keys` and :func:`load_strict`, so a file is read the same way (tensors only, no code,
unless full pickles are allowed on purpose), a training checkpoint is unwrapped the same way, and
a mismatch is explained the same way whatever the architecture:

* wrappers: ``state_dict``, ``model_state_dict``, ``model``, and the exponential moving average
  (``state_dict_ema``, ``model_ema``, ``ema``), which is preferred where present, as timm's own
  ``load_checkpoint`` does;
* key prefixes: whatever prefix makes the keys fit the architecture is stripped: DataParallel's
  ``module.``, torch.compile's ``_orig_mod.``, a Lightning module's attribute (``model.``,
  ``net.``...), and any combination of them.

:func:`torch_hub_cache_path` says where torch hub keeps a downloaded file; :func:`file_sha256`
identifies a file by its content.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from heatmap_cli.errors import WeightsMismatchError
from heatmap_cli.models.base import short_reason

__all__ = [
    "PICKLE_REFUSAL",
    "Checkpoint",
    "KeyMatch",
    "file_sha256",
    "load_strict",
    "match_keys",
    "read_checkpoint",
    "read_file",
    "recorded_input_size",
    "shape_mismatches",
    "torch_hub_cache_path",
]

# The exponential moving average first: where a checkpoint has both, it is the better model.
_CHECKPOINT_WRAPPER_KEYS = (
    "state_dict_ema",
    "model_ema",
    "ema",
    "state_dict",
    "model_state_dict",
    "model",
)

PICKLE_REFUSAL = (
    "unpickling it runs code stored in the file, which can do anything, so it is not loaded "
    "by default; pass --allow-pickle if you trust the file, or re-save it with "
    "torch.save(model.state_dict(), FILE)"
)
"""Why a full-model pickle is refused, and the two ways on."""


@dataclass(frozen=True)
class Checkpoint:
    """The state dict found in a weights file.

    Attributes:
        path: The file.
        tensors: ``{parameter or buffer name: tensor}`` as stored (prefixes not yet stripped).
        location: Where in the file it was: ``""`` at the top level, else the wrapper keys,
            e.g. ``"state_dict_ema"`` or ``"model"`` (a pickled module's own state dict).
        input_size: ``(H, W)`` the file says its model was trained at, if it says
            (:func:`recorded_input_size`).
        input_size_from: Where the file says so, e.g. ``"hyper_parameters['img_size']"``.
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    location: str = ""
    input_size: tuple[int, int] | None = None
    input_size_from: str = ""


@dataclass(frozen=True)
class KeyMatch:
    """A checkpoint's tensors keyed as an architecture expects them.

    Attributes:
        tensors: The tensors whose keys start with ``prefix``, the prefix stripped.
        prefix: The stripped prefix (``""``: none).
        ignored: Keys outside the prefix, left out (a Lightning module's loss weights...).
    """

    tensors: dict[str, torch.Tensor]
    prefix: str
    ignored: tuple[str, ...]

    def note(self, checkpoint: Checkpoint) -> str | None:
        """One line saying where the weights were found in the file, if not plainly at its top."""
        parts = []
        if checkpoint.location:
            parts.append(f"used the weights under {checkpoint.location!r}")
        if self.prefix:
            parts.append(f"stripped the key prefix {self.prefix!r}")
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} other keys ({_first(self.ignored)})")
        return f"{checkpoint.path}: {', '.join(parts)}" if parts else None


def torch_hub_cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (or would keep) ``url``'s file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def file_sha256(path: Path) -> str:
    """Hex SHA-256 digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_file(path: Path, *, allow_pickle: bool = False) -> Any:
    """What a ``torch.save`` or safetensors file holds.

    Args:
        path: The file.
        allow_pickle: Load any pickled object (``torch.load(weights_only=False)``), which runs
            code stored in the file; otherwise only tensors and plain containers are loaded.

    Returns:
        The loaded object: a dict of tensors for safetensors.

    Raises:
        WeightsMismatchError: The file is missing or cannot be read; a file with Python objects
            (a full-model pickle) without ``allow_pickle`` says why it is refused.
    """
    if not path.exists():
        raise WeightsMismatchError(f"{path}: no such file.")
    if not path.is_file():
        raise WeightsMismatchError(f"{path}: not a file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about weights_only=False
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:
        # Parsers of arbitrary files fail in arbitrary ways (pickle, zip, safetensors' Rust
        # errors, EOF); all of them mean "this file cannot be read".
        raise WeightsMismatchError(f"{path}: cannot be read ({_read_failure(err)}).") from err


def read_checkpoint(path: Path, *, allow_pickle: bool = False) -> Checkpoint:
    """Reads a weights file and finds the state dict in it.

    Args:
        path: A state dict or training checkpoint (``.pth``/``.pt``/``.ckpt``/``.bin`` or
            ``.safetensors``); with ``allow_pickle``, a whole pickled model too.
        allow_pickle: See :func:`read_file`.

    Returns:
        The state dict, where in the file it was, and the training input size the file
        records, if it records one (:func:`recorded_input_size`).

    Raises:
        WeightsMismatchError: The file is missing, unreadable or holds no state dict.
    """
    whole = loaded = read_file(path, allow_pickle=allow_pickle)
    location: list[str] = []
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}} at worst
        if isinstance(loaded, nn.Module):
            loaded = loaded.state_dict()
        if not isinstance(loaded, Mapping):
            break
        key = next((k for k in _CHECKPOINT_WRAPPER_KEYS if _holds_weights(loaded.get(k))), None)
        if key is None:
            break
        location.append(key)
        loaded = loaded[key]
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if not _is_state_dict(loaded):
        raise WeightsMismatchError(
            f"{path}: holds no state dict (expected a mapping of names to tensors, optionally "
            f"under one of the keys {', '.join(map(repr, _CHECKPOINT_WRAPPER_KEYS))})."
        )
    size, where = recorded_input_size(whole) or (None, "")
    return Checkpoint(path, dict(loaded), "/".join(location), size, where)


# Where training code keeps its settings in a checkpoint ("" is the top level): timm's
# pretrained_cfg, Lightning's hyper_parameters (save_hyperparameters), an argparse namespace.
_SETTINGS_HOLDERS = (
    "pretrained_cfg",
    "hyper_parameters",
    "datamodule_hyper_parameters",
    "hparams",
    "config",
    "args",
    "",
)
_SIZE_KEYS = ("input_size", "img_size", "image_size", "crop_size", "resolution")
_LARGEST_SIDE = 1 << 16


def recorded_input_size(content: object) -> tuple[tuple[int, int], str] | None:
    """The training input size a checkpoint records, and where, if it records one.

    Looked for under ``input_size``, ``img_size``, ``image_size``, ``crop_size`` or
    ``resolution`` in timm's ``pretrained_cfg``, Lightning's ``hyper_parameters`` (and
    ``datamodule_hyper_parameters``), ``hparams``, ``config``, ``args`` or the top level. A value
    is one side (a square), ``(H, W)`` or ``(C, H, W)`` with one or three channels.

    Args:
        content: What the file holds (``torch.load``'s result).

    Returns:
        ``((H, W), "hyper_parameters['img_size']")``, or None.
    """
    if not isinstance(content, Mapping):
        return None
    for holder in _SETTINGS_HOLDERS:
        settings = content if not holder else content.get(holder)
        if isinstance(settings, argparse.Namespace):
            settings = vars(settings)
        if not isinstance(settings, Mapping):
            continue
        for key in _SIZE_KEYS:
            size = _window(settings.get(key))
            if size is not None:
                return size, f"{holder}[{key!r}]" if holder else repr(key)
    return None


def _window(value: object) -> tuple[int, int] | None:
    """``(H, W)`` of an input-size setting, or None if it is not one."""
    if isinstance(value, torch.Size):
        value = tuple(value)
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 3 and value[0] in (1, 3):
        value = value[1:]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    height, width = value
    return (height, width) if 0 < height <= _LARGEST_SIDE and 0 < width <= _LARGEST_SIDE else None


def _holds_weights(value: object) -> bool:
    return isinstance(value, nn.Module) or (isinstance(value, Mapping) and len(value) > 0)


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def match_keys(checkpoint: Checkpoint, expected: Collection[str]) -> KeyMatch:
    """Strips the key prefix that makes a checkpoint's keys fit an architecture.

    Every dotted prefix of every key is a candidate; the one under which the most expected keys
    are found wins (on a tie, the one that leaves out the fewest keys), if they are most of the
    architecture's and more than the keys as they are already match; else nothing is stripped.
    Keys outside the winning prefix are left out.

    Args:
        checkpoint: From :func:`read_checkpoint`.
        expected: The keys of the architecture's state dict.

    Returns:
        The tensors keyed as the architecture expects them, as far as any prefix makes them.
    """
    wanted = set(expected)
    found: Counter[str] = Counter()
    for key in checkpoint.tensors:
        for match in re.finditer(r"\.", key):
            if key[match.end() :] in wanted:
                found[key[: match.end()]] += 1
    exact = len(wanted & checkpoint.tensors.keys())
    sizes = Counter(p for key in checkpoint.tensors for p in found if key.startswith(p))
    best = max(found, key=lambda p: (found[p], -sizes[p]), default="")
    # a block's keys under another block's name ("layer4.1." + "bn1.weight") are few
    if not best or found[best] <= max(exact, len(wanted) // 2):
        return KeyMatch(dict(checkpoint.tensors), "", ())
    kept = {k[len(best) :]: v for k, v in checkpoint.tensors.items() if k.startswith(best)}
    ignored = tuple(k for k in checkpoint.tensors if not k.startswith(best))
    return KeyMatch(kept, best, ignored)


def load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, arch: str
) -> None:
    """Loads every parameter and buffer of ``model`` from ``state_dict``, or explains why not.

    Args:
        model: The architecture, built without pretrained weights.
        state_dict: The file's tensors, keyed as the model expects (:func:`match_keys`).
        path: The file it came from (named in the message).
        arch: The architecture's name for the message, e.g. ``"resnet34"``.

    Raises:
        WeightsMismatchError: Keys are missing or unexpected, or shapes differ; the message
            names ``path`` and summarises the first few offenders of each kind with counts.
    """
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    problems = [
        _summarise(label, items)
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches (file vs model)", shape_mismatches(state_dict, expected)),
        )
        if items
    ]
    if problems:
        raise WeightsMismatchError(
            f"{path}: does not fit {arch} ({len(state_dict)} tensors in the file, "
            f"{len(expected)} in the model): {'; '.join(problems)}."
        )
    model.load_state_dict(state_dict, strict=True)


def shape_mismatches(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> list[str]:
    """``"key (file shape) vs (model shape)"`` for every shared key whose shapes differ."""
    return [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]


def _first(items: tuple[str, ...] | list[str], shown: int = 3) -> str:
    return ", ".join(items[:shown]) + (", ..." if len(items) > shown else "")


def _summarise(label: str, items: list[str]) -> str:
    """``"5 missing keys: a, b, c, ..."``."""
    return f"{len(items)} {label}: {_first(items)}"


def _read_failure(err: Exception) -> str:
    """Explains why ``torch.load``/safetensors could not read a file, in a few words."""
    message = str(err)
    unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if unsupported:
        return (
            f"it holds Python objects besides tensors ({unsupported.group(1)}), such as a whole "
            f"pickled model; {PICKLE_REFUSAL}"
        )
    if isinstance(err, pickle.UnpicklingError | EOFError | zipfile.BadZipFile):
        reason = short_reason(err)
        return f"not a PyTorch or safetensors weights file, or a truncated one ({reason})"
    return short_reason(err)
