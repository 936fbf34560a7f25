"""Small seeded networks for exactness tests.

Without zero padding, a convolutional network computes exactly the same thing on a window
whether the window is cut out or sits inside a larger image, so on these networks every
grid method must equal per-window crops to float precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WINDOW = (44, 44)
NATIVE_STRIDE = 8
NUM_CLASSES = 10


def padding_free_body() -> nn.Sequential:
    """44x44 -> 3x3 feature map; native stride 8; no padding anywhere."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),  # 42
        nn.ReLU(),
        nn.MaxPool2d(2),  # 21
        nn.Conv2d(8, 12, 3),  # 19
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, stride=2),  # 9
        nn.ReLU(),
        nn.Conv2d(16, 16, 3),  # 7
        nn.ReLU(),
        nn.MaxPool2d(2),  # 3
    )


class VolumeHeadNet(nn.Module):
    """VGG-like: flatten a (16, 3, 3) volume into fully-connected layers."""

    def __init__(self) -> None:
        super().__init__()
        self.features = padding_free_body()
        self.avgpool = nn.AdaptiveAvgPool2d((3, 3))  # the identity at the training size
        self.classifier = nn.Sequential(
            nn.Linear(16 * 3 * 3, 32),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(32, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class PooledHeadNet(nn.Module):
    """ResNet-like: global average pool, then a head with BatchNorm1d, LayerNorm and F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = padding_free_body()
        self.fc1 = nn.Linear(16, 24)
        self.bn = nn.BatchNorm1d(24)
        self.norm = nn.LayerNorm(24)
        self.fc2_weight = nn.Parameter(torch.randn(NUM_CLASSES, 24) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean([2, 3])
        x = self.norm(F.gelu(self.bn(self.fc1(x))))
        return F.linear(x, self.fc2_weight)


class FlattenOnlyNet(nn.Module):
    """No pool at all: the first Linear reads the whole (16, 3, 3) feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = padding_free_body()
        self.fc = nn.Linear(16 * 3 * 3, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).view(x.size(0), -1))


def seeded(net_class: type[nn.Module], seed: int = 0) -> nn.Module:
    """An instance with seeded random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = net_class()
    for module in net.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return net.eval()


ALL_NETS = (VolumeHeadNet, PooledHeadNet, FlattenOnlyNet)


def seeded_pooled_head() -> nn.Module:
    """:class:`PooledHeadNet` with seeded weights, for ``--model tests/nets.py:seeded_pooled_head``.

    Built by name in any process (Ray's actors import it from this file), always the same net.
    """
    return seeded(PooledHeadNet)


class TokenHead(nn.Module):
    """A transformer-style head: tokens attend to each other, so no sliding equivalent exists."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 4, stride=4)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.body(x).flatten(2).transpose(1, 2)
        tokens, _ = self.attention(tokens, tokens, tokens)
        return self.fc(tokens.mean(1))


class EdgeSensitiveNet(nn.Module):
    """A net built so that its dense grid disagrees with its crops: zero padding decides.

    A 5x5 all-ones convolution with zero padding sums a pixel's neighbourhood; the class is
    whether the window's mean sum is above a threshold. On a bright, even photo a crop's mean
    is lowered by the zeros around its own border (about 0.93 of the interior value), a dense
    cell's is not (real pixels surround it), so crops say "dark" where dense says "bright".
    Window 32, native stride 8, two classes.
    """

    WINDOW = (32, 32)

    def __init__(self) -> None:
        super().__init__()
        self.sum = nn.Conv2d(3, 1, 5, padding=2, bias=False)
        nn.init.ones_(self.sum.weight)
        self.pool = nn.AvgPool2d(8)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            # normalized pixels of 255 under mean/std 0.5/0.25 are 2: interior sum 150
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))
            self.fc.bias.copy_(torch.tensor([-145.0, 145.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.sum(x)).mean([2, 3]))
