"""A classifier fine-tuned in the test: coloured squares, three classes, a 32-pixel window.

:func:`train_square_classifier` trains a torchvision ResNet-18 with a new 3-class head for a few
dozen steps on synthetic 32 x 32 windows, each holding a red, green or blue square on a noisy
grey-ish background (or no square: a uniform target, so empty windows say nothing). The windows
are seen alone and side by side in 3 x 3 scenes: ResNet-18's receptive field is more than ten
times the window, so a model that only ever saw single windows (with zero padding all around)
would be judged in the dense grid on context it never met.

:func:`squares_photo` draws a larger photo with one square of each colour in a known cell of the
grid that a 32-pixel window at stride 32 gives.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

WINDOW = 32
NAMES = ("red", "green", "blue")
COLOURS = ((220, 30, 30), (30, 200, 30), (30, 30, 220))
SQUARE_CELLS = ((0, 0), (1, 2), (2, 4))
"""The (row, column) of each class's square in :func:`squares_photo`'s grid (3 x 5 cells)."""
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _windows(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` normalized windows and their target distributions over the three classes."""
    colours = torch.tensor(COLOURS, dtype=torch.float32) / 255
    images = torch.rand(count, 3, 1, 1, generator=generator) * 0.4 + 0.3
    images = images + 0.05 * torch.randn(count, 3, WINDOW, WINDOW, generator=generator)
    targets = torch.full((count, 3), 1 / 3)
    for index in range(count):
        label = int(torch.randint(0, 4, (1,), generator=generator))
        if label == 3:  # no square
            continue
        side = int(torch.randint(10, 21, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, WINDOW - side + 1, (2,), generator=generator))
        images[index, :, top : top + side, left : left + side] = colours[label].view(3, 1, 1)
        targets[index] = F.one_hot(torch.tensor(label), 3).float()
    return (images.clamp(0, 1) - _MEAN) / _STD, targets


def _scene_loss(model: nn.Module, scenes: int, generator: torch.Generator) -> torch.Tensor:
    """Cross-entropy of every window of ``scenes`` 3 x 3 scenes, classified where it sits.

    At a 32-pixel window ResNet-18's last feature map has one position per window, so its
    classifier applied at every position is the model's dense grid.
    """
    images, targets = _windows(9 * scenes, generator)
    tiles = images.view(scenes, 3, 3, 3, WINDOW, WINDOW).permute(0, 3, 1, 4, 2, 5)
    features = nn.Sequential(*list(model.children())[:-2])(tiles.reshape(scenes, 3, 96, 96))
    logits = model.fc(features.permute(0, 2, 3, 1)).reshape(-1, 3)  # type: ignore[operator]
    return F.cross_entropy(logits, targets)


def train_square_classifier(steps: int = 40, seed: int = 0) -> nn.Module:
    """ResNet-18 with a 3-class head trained on coloured squares; returned in eval mode."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 32-pixel maps: threads cost more than they give here
    try:
        for _ in range(steps):
            images, targets = _windows(8, generator)
            loss = F.cross_entropy(model(images), targets) + _scene_loss(model, 2, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def squares_photo() -> Image.Image:
    """A 160 x 96 grey photo with a red, a green and a blue square in :data:`SQUARE_CELLS`."""
    rng = np.random.default_rng(0)
    pixels = np.clip(128 + rng.normal(0, 8, (96, 160, 3)), 0, 255).astype(np.uint8)
    for colour, (row, col) in zip(COLOURS, SQUARE_CELLS, strict=True):
        top, left = WINDOW * row + 7, WINDOW * col + 7
        pixels[top : top + 18, left : left + 18] = colour
    return Image.fromarray(pixels)
