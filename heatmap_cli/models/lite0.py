"""EfficientNet-Lite0 as timm builds ``tf_efficientnet_lite0``, from ``torch.nn`` alone.

The offline default model is timm's ``tf_efficientnet_lite0``; building it through timm means
importing all of timm (about 3 s on a 2-core machine, most of a small photo's run). This module
builds the same network module for module: the same parameter and buffer names (so timm's and the
converted package's state dicts load as they are), the same layer types where the graph walkers
look (TF-"same" convolutions where timm pads dynamically, batch norms with their activation), the
same numbers (tested against the timm-built model on a seeded input).

Architecture (timm's ``_gen_efficientnet_lite``, channel and depth multipliers 1.0): a 3x3
stride-2 stem of 32 channels, seven stages of depthwise-separable (stage 0) and inverted-residual
blocks (expansion 6), a 1x1 head to 1280 channels, global average pooling and a linear
classifier; ReLU6 activations, batch norms with TensorFlow's epsilon 1e-3, TensorFlow "same"
padding (convolutions of stride 1 pad statically, those of stride 2 depend on the input size).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from heatmap_cli.convert.tf_same import BandedSameConv2d, BatchNormAct2d

__all__ = ["LITE0_CONFIG", "STAGES", "Lite0", "Lite0Stage"]

_BN_EPS = 1e-3  # TensorFlow's default batch-norm epsilon, which the ported weights were trained at
_STEM = 32
_FEATURES = 1280
_EXPANSION = 6


class Lite0Stage(NamedTuple):
    """One stage: ``repeats`` blocks of ``kernel``, the first of ``stride``, to ``channels``."""

    repeats: int
    kernel: int
    stride: int
    channels: int


STAGES: tuple[Lite0Stage, ...] = (
    Lite0Stage(1, 3, 1, 16),  # depthwise-separable, no expansion
    Lite0Stage(2, 3, 2, 24),
    Lite0Stage(2, 5, 2, 40),
    Lite0Stage(3, 3, 2, 80),
    Lite0Stage(3, 5, 1, 112),
    Lite0Stage(4, 5, 2, 192),
    Lite0Stage(1, 3, 1, 320),
)
"""timm's ``arch_def`` for the Lite variants (``ds_r1_k3_s1_e1_c16``, ``ir_r2_k3_s2_e6_c24``...)."""

LITE0_CONFIG: dict[str, object] = {
    "input_size": (3, 224, 224),
    "interpolation": "bicubic",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
}
"""The preprocessing of timm's ``pretrained_cfg`` for ``tf_efficientnet_lite0`` (tested equal)."""


def _conv(in_chs: int, out_chs: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution with TF "same" padding, as timm's ``create_conv2d`` makes it.

    At stride 1 with an odd kernel the padding is static and symmetric (``nn.Conv2d``); at
    stride 2 it depends on the input's size (:class:`BandedSameConv2d`, timm's ``Conv2dSame``).
    """
    if stride == 1:
        return nn.Conv2d(in_chs, out_chs, kernel, 1, (kernel - 1) // 2, groups=groups, bias=False)
    return BandedSameConv2d(in_chs, out_chs, kernel, stride, 0, groups=groups, bias=False)


def _norm(channels: int, act: bool = True) -> BatchNormAct2d:
    return BatchNormAct2d(channels, eps=_BN_EPS, act=nn.ReLU6(inplace=True) if act else None)


class DepthwiseSeparableConv(nn.Module):
    """timm's ``DepthwiseSeparableConv``: depthwise conv, norm+ReLU6, pointwise conv, norm."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = _conv(in_chs, in_chs, kernel, stride, groups=in_chs)
        self.bn1 = _norm(in_chs)
        self.conv_pw = _conv(in_chs, out_chs, 1)
        self.bn2 = _norm(out_chs, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chs, H, W)`` -> ``(N, out_chs, H / stride, W / stride)``."""
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    """timm's ``InvertedResidual`` (MBConv) without squeeze-excitation, as in the Lite models."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid_chs = in_chs * _EXPANSION
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = _conv(in_chs, mid_chs, 1)
        self.bn1 = _norm(mid_chs)
        self.conv_dw = _conv(mid_chs, mid_chs, kernel, stride, groups=mid_chs)
        self.bn2 = _norm(mid_chs)
        self.conv_pwl = _conv(mid_chs, out_chs, 1)
        self.bn3 = _norm(out_chs, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chs, H, W)`` -> ``(N, out_chs, H / stride, W / stride)``."""
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y


class Lite0(nn.Module):
    """EfficientNet-Lite0 with timm's module names; ``(N, 3, H, W)`` -> ``(N, num_classes)``.

    Args:
        num_classes: Outputs of the classifier (1000 for ImageNet).

    Attributes:
        num_classes: As given.
        pretrained_cfg: The preprocessing timm records for the model (:data:`LITE0_CONFIG`).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.pretrained_cfg = dict(LITE0_CONFIG)
        self.conv_stem = _conv(3, _STEM, 3, 2)
        self.bn1 = _norm(_STEM)
        stages: list[nn.Module] = []
        channels = _STEM
        for index, stage in enumerate(STAGES):
            kind = DepthwiseSeparableConv if index == 0 else InvertedResidual
            blocks = []
            for repeat in range(stage.repeats):
                stride = stage.stride if repeat == 0 else 1
                blocks.append(kind(channels, stage.channels, stage.kernel, stride))
                channels = stage.channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(channels, _FEATURES, 1)
        self.bn2 = _norm(_FEATURES)
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.classifier = nn.Linear(_FEATURES, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, 3, H, W)`` normalized as the config says."""
        x = self.bn1(self.conv_stem(x))
        x = self.bn2(self.conv_head(self.blocks(x)))
        return self.classifier(self.global_pool(x))
