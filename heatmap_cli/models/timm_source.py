"""Any timm model as ``timm/NAME`` or ``timm/NAME.TAG``, with weights from the Hugging Face Hub.

Class names, mean/std, interpolation and the input size come from the model's
``pretrained_cfg``. A local file may have any number of classes: the model is created with
``num_classes=K`` (:mod:`~heatmap_cli.models.fitting`). Before downloading, the Hub is probed
once, so an offline machine fails at once with a message that says which file to fetch and where
to put it. timm is imported where it is first needed (importing it takes seconds), not with
this module.

The ``pretrained_cfg`` keys read here (:data:`TIMM_CONFIG_KEYS`) are required, not defaulted: a
timm release that renamed one would otherwise give every model ImageNet's mean or a 224 window
without a word. ``tests/convert/test_timm_coupling.py`` pins them with the rest of timm's names.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import nn

from heatmap_cli.errors import (
    TimmCouplingError,
    UnknownModelError,
    WeightsMismatchError,
    WeightsUnavailableError,
)
from heatmap_cli.models.base import (
    LoadedModel,
    LoadRequest,
    ModelEntry,
    ModelSource,
    as_interpolation,
    as_triple,
    numbered_classes,
    short_reason,
)
from heatmap_cli.models.categories import imagenet_categories
from heatmap_cli.models.fitting import build_for_checkpoint
from heatmap_cli.models.weights import read_checkpoint, torch_hub_cache_path

__all__ = [
    "TIMM_CONFIG_KEYS",
    "TIMM_PREFIX",
    "TimmSource",
    "timm_builder",
    "timm_loaded_model",
]

TIMM_PREFIX = "timm/"
"""Prefix that selects a timm model: ``timm/NAME`` or ``timm/NAME.TAG``."""

TIMM_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation")
"""The keys of a timm model's ``pretrained_cfg`` that every timm model has and that are read."""


class TimmSource(ModelSource):
    """Every timm architecture, with its pretrained weights or a local file."""

    family = "timm"
    prefix = TIMM_PREFIX
    hint = f"any timm model is {TIMM_PREFIX}NAME"

    def claims(self, name: str) -> bool:
        """Whether ``name`` is ``timm/NAME[.TAG]`` for an architecture timm knows."""
        if not name.startswith(TIMM_PREFIX):
            return False
        import timm

        return timm.is_model(_arch(name))

    def names(self) -> Iterable[str]:
        """Every timm architecture, prefixed."""
        import timm

        return [TIMM_PREFIX + name for name in timm.list_models()]

    def aliases(self, name: str) -> list[str]:
        """``timm/NAME`` for a bare ``NAME`` that timm knows."""
        import timm

        if name.startswith(TIMM_PREFIX) or not timm.is_model(name.partition(".")[0]):
            return []
        return [TIMM_PREFIX + name]

    def entries(self, pattern: str | None = None) -> list[ModelEntry]:
        """The pretrained timm models matching ``pattern`` (none without one)."""
        import timm.models

        if pattern is None:
            return []
        entries = []
        for timm_name in timm.list_models(pattern, pretrained=True):
            cfg = timm.models.get_pretrained_cfg(timm_name)
            cached_file = _cached_file(cfg) if cfg is not None else None
            entries.append(
                ModelEntry(
                    name=TIMM_PREFIX + timm_name,
                    family=self.family,
                    weights=_weights_label(cfg) if cfg is not None else "none",
                    cached=cached_file is not None,
                    location=cached_file,
                )
            )
        return entries

    def load(self, name: str, request: LoadRequest) -> LoadedModel:
        """Builds ``timm/NAME[.TAG]`` with its pretrained weights or a local file."""
        import timm

        timm_name = name[len(TIMM_PREFIX) :]
        cfg = _pretrained_cfg(timm_name)
        if request.weights is not None:
            checkpoint = read_checkpoint(request.weights, allow_pickle=request.allow_pickle)
            fitted = build_for_checkpoint(timm_builder(timm_name), checkpoint, name)
            window, notes = fitted.window(timm_window(fitted.model), request.input_size, name)
            return timm_loaded_model(name, fitted.model, str(request.weights), notes, window)
        download = request.download
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise WeightsUnavailableError(
                f"timm has no pretrained weights for {timm_name}; pass --weights FILE."
            )
        cached_file = _cached_file(cfg)
        if cached_file is None:
            _check_downloadable(timm_name, cfg, download)
        try:
            model = timm.create_model(timm_name, pretrained=True)
        except Exception as err:
            # Hub and HTTP clients raise a zoo of types (httpx, huggingface_hub, urllib); any of
            # them here means the weights could not be fetched or read.
            if cached_file is not None:
                raise WeightsMismatchError(
                    f"{cached_file}: cached weights for {name} cannot be loaded "
                    f"({short_reason(err)}); delete the file to download it again, "
                    "or pass --weights FILE."
                ) from err
            raise WeightsUnavailableError(
                f"{_missing_message(timm_name, cfg)} (download failed: {short_reason(err)})."
            ) from err
        return timm_loaded_model(name, model, f"timm {_weights_label(cfg)}")


def timm_builder(timm_name: str) -> Callable[[int | None], nn.Module]:
    """``build(num_classes)`` for a timm model without pretrained weights (None: its default)."""

    def build(num_classes: int | None) -> nn.Module:
        import timm

        classes = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(timm_name, pretrained=False, **classes)

    return build


def timm_window(model: nn.Module) -> tuple[int, int]:
    """``(H, W)`` a timm model's ``pretrained_cfg`` says it was trained at (224 if it says none)."""
    cfg: Mapping[str, Any] = model.pretrained_cfg  # type: ignore[assignment]
    height, width = cfg.get("input_size", (3, 224, 224))[-2:]
    return int(height), int(width)


def timm_loaded_model(
    name: str,
    model: nn.Module,
    source: str,
    notes: tuple[str, ...] = (),
    window: tuple[int, int] | None = None,
) -> LoadedModel:
    """Wraps a timm model with the preprocessing and class names from its ``pretrained_cfg``.

    Args:
        name: The model's name for the user.
        model: A timm model (it has ``pretrained_cfg`` and ``num_classes``).
        source: Where its weights came from, for the user.
        notes: How its weights were found in a file (:class:`LoadedModel` ``notes``).
        window: ``(H, W)`` it was trained at, when not its ``pretrained_cfg``'s (a checkpoint
            fine-tuned at another size, :meth:`~heatmap_cli.models.fitting.FittedModel.window`).

    Returns:
        The model with its class names, mean/std, input size and interpolation.
    """
    cfg: Mapping[str, Any] = model.pretrained_cfg  # type: ignore[assignment]
    _check_config(name, cfg)
    height, width = window or timm_window(model)
    return LoadedModel(
        name=name,
        model=model,
        categories=_categories(int(model.num_classes), cfg),  # type: ignore[arg-type]
        mean=as_triple(cfg.get("mean") or _imagenet_default("MEAN")),
        std=as_triple(cfg.get("std") or _imagenet_default("STD")),
        input_size=(height, width),
        interpolation=as_interpolation(cfg.get("interpolation") or "bilinear"),
        source=source,
        notes=notes,
    )


def _check_config(name: str, cfg: Mapping[str, Any]) -> None:
    """Raises ``TimmCouplingError`` unless ``cfg`` has every key of :data:`TIMM_CONFIG_KEYS`."""
    missing = [key for key in TIMM_CONFIG_KEYS if key not in cfg]
    if missing:
        import timm

        raise TimmCouplingError(
            f"the pretrained_cfg of {name} has no {', '.join(map(repr, missing))} (timm "
            f"{timm.__version__}: renamed?); heatmap-cli reads the window and the normalization "
            "from it and will not guess them"
        )


def _imagenet_default(statistic: str) -> tuple[float, float, float]:
    """Timm's ``IMAGENET_DEFAULT_MEAN`` or ``_STD``, for a config that records none."""
    import timm.data

    return as_triple(getattr(timm.data, f"IMAGENET_DEFAULT_{statistic}"))


def _arch(name: str) -> str:
    """``timm/NAME.TAG`` -> ``NAME``."""
    return name[len(TIMM_PREFIX) :].partition(".")[0]


def _categories(num_classes: int, cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """Class names for a timm model's ``num_classes`` outputs.

    ImageNet-1k models get torchvision's short names (so that every model in the tool names
    classes alike); other ImageNet subsets get the first WordNet lemma of each synset; models
    that record their own label names use them; anything else is ``"class N"``.
    """
    offset = int(cfg.get("label_offset") or 0)
    background = ("background",) * offset  # e.g. TF ports with 1001 outputs, index 0 unused
    if num_classes - offset == 1000:
        return background + imagenet_categories()
    import timm.data

    subset = timm.data.infer_imagenet_subset({"num_classes": num_classes - offset})
    if subset is not None:
        descriptions = timm.data.ImageNetInfo(subset).label_descriptions()
        return background + tuple(text.split(",")[0].strip() for text in descriptions)
    names = cfg.get("label_descriptions") or cfg.get("label_names")
    if names is not None and len(names) == num_classes:
        return tuple(str(label) for label in names)
    return numbered_classes(num_classes)


def _pretrained_cfg(timm_name: str) -> Any:
    """Returns timm's ``PretrainedCfg`` for ``NAME[.TAG]`` (``None`` if it has none).

    Raises:
        UnknownModelError: timm has no such tag for the architecture.
    """
    import timm.models

    try:
        return timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError:  # a known architecture with an unknown tag
        arch = timm_name.partition(".")[0]
        tags = timm.list_models(f"{arch}.*", pretrained=True)
        hint = f" Its tags: {', '.join(TIMM_PREFIX + t for t in tags)}." if tags else ""
        raise UnknownModelError(
            f"timm has no weights tagged {timm_name!r}.{hint} "
            "See `heatmap --list-models` for the available names."
        ) from None


def _weights_label(cfg: Any) -> str:
    """Short name of a timm ``PretrainedCfg``'s weights: the Hub repo, or else the URL."""
    return cfg.hf_hub_id or cfg.url or cfg.file or "no pretrained weights"


def _hub_files(cfg: Any) -> tuple[str, str | None, list[str]]:
    """Hub repo, revision and candidate file names timm would fetch for ``cfg``."""
    repo, _, revision = cfg.hf_hub_id.partition("@")
    # timm prefers the safetensors file and falls back to the pickle one.
    default_names = ["model.safetensors", "pytorch_model.bin"]
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else default_names
    return repo, revision or None, names


def _cached_file(cfg: Any) -> Path | None:
    """The local file timm would load ``cfg``'s weights from without downloading, if any."""
    if cfg.file:
        return Path(cfg.file) if Path(cfg.file).is_file() else None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, revision, names = _hub_files(cfg)
        for filename in names:
            found = try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.url:
        path = torch_hub_cache_path(cfg.url)
        return path if path.is_file() else None
    return None


def _check_downloadable(timm_name: str, cfg: Any, download: bool) -> None:
    """Raises ``WeightsUnavailableError`` if missing weights may not or cannot be fetched."""
    if not download:
        raise WeightsUnavailableError(f"{_missing_message(timm_name, cfg)}.")
    unreachable = _hub_unreachable_reason() if cfg.hf_hub_id else None
    if unreachable is not None:
        raise WeightsUnavailableError(
            f"{_missing_message(timm_name, cfg)} (cannot reach the Hub: {unreachable})."
        )


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
        return short_reason(err)


def _missing_message(timm_name: str, cfg: Any) -> str:
    """The 'weights are not here, this is how to get them' sentence for a timm model."""
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        repo, _, names = _hub_files(cfg)
        return (
            f"Weights for timm/{timm_name} (Hugging Face Hub repo {repo}, file {names[0]}) are "
            f"not in the Hugging Face cache {constants.HF_HUB_CACHE}; on a connected machine run "
            f"`hf download {repo}` and copy the cache folder models--{repo.replace('/', '--')} "
            f"there (or set HF_HOME), or pass --weights FILE with the downloaded {names[0]}"
        )
    path = torch_hub_cache_path(cfg.url)
    return (
        f"Weights for timm/{timm_name} are not cached ({path} is missing); download {cfg.url} "
        f"on a connected machine and put it at {path}, or pass --weights FILE"
    )
