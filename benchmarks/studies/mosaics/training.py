"""Small-window texture classifiers, trained from scratch on the mosaics and cached on disk.

No weights can be downloaded here, so every network is a torchvision architecture with its
default random initialisation and a ``K``-class head, trained from scratch at a 96-pixel window
and fine-tuned from there to 64 and 224 (:func:`recipe_for`), on windows cut from training
mosaics (:mod:`.mosaics`, seeds disjoint from the evaluation sets). A window's label is
the class of its centre pixel: the question a score-map cell answers at the centre of its window.
Each window is seen alone, zero padding all around, as an ordinary patch classifier is trained;
nothing teaches it the context the dense pass gives it.

:func:`trained_model` trains once and then reads the cache: ``<cache>/models/<key>.pt`` (a plain
state dict, what ``heatmap --model ARCH --weights FILE`` loads) with ``<key>.json`` beside it
(the recipe, the window accuracy on held-out mosaics, the training time).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .mosaics import REGION_SIDE, Mosaic, make_mosaic
from .textures import TEXTURES

__all__ = [
    "ARCHITECTURES",
    "MEAN",
    "STD",
    "Recipe",
    "TrainedModel",
    "build_model",
    "normalize",
    "recipe_for",
    "trained_model",
]

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
"""Normalization of the texture models (``--mean``/``--std`` of the ``heatmap`` runs)."""

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "shufflenet_v2_x1_0": torchvision.models.shufflenet_v2_x1_0,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
}
"""The torchvision architectures, by the name ``heatmap --model`` knows them by. MobileNetV3 and
EfficientNet-B0 have squeeze-and-excitation blocks (global pools inside the body); ResNet-18
and ShuffleNetV2 do not."""

_TRAIN_SEED = 1_000_000
_VALIDATION_SEED = 2_000_000
_POOL_SIDE = 512
_VERSION = 2
"""Bumped whenever a change would alter a trained model: part of the cache key."""


@dataclass(frozen=True)
class Recipe:
    """How one model is trained (every field is part of its cache key).

    Attributes:
        arch: Key of :data:`ARCHITECTURES`.
        window: Side of the training window in pixels.
        steps: Optimizer steps.
        batch: Windows per step.
        lr: Peak learning rate (AdamW, linear warm-up, cosine decay).
        pool: Training mosaics the windows are cut from.
        seed: Fixes the initialisation and the windows.
        base: The recipe of the model this one is fine-tuned from (None: from scratch).
    """

    arch: str
    window: int
    steps: int
    batch: int = 16
    lr: float = 2e-3
    pool: int = 96
    seed: int = 0
    base: Recipe | None = None

    @property
    def key(self) -> str:
        """The cache file stem."""
        own = (
            f"{self.arch}_w{self.window}_s{self.steps}_b{self.batch}_lr{self.lr:g}"
            f"_p{self.pool}_seed{self.seed}_v{_VERSION}"
        )
        if self.base is None:
            return own
        return f"{own}_from_w{self.base.window}_s{self.base.steps}_lr{self.base.lr:g}"


BASE_WINDOW = 96
"""Every architecture is trained from scratch at this window, then fine-tuned to the others."""


def recipe_for(arch: str, window: int) -> Recipe:
    """The recipe the benchmark uses for ``arch`` at ``window``.

    At :data:`BASE_WINDOW` (96 px): 1600 steps of 16 windows from scratch, lr 2e-3. Other
    windows are fine-tuned from that model (a fully convolutional body takes any window):
    900 steps at 64 px (as many pixels as 400 steps at 96), 150 at 224 px, lr 5e-4. Quick
    and full runs share the recipes, so a model trained by either serves both.
    """
    if window == BASE_WINDOW:
        return Recipe(arch, window, steps=1600)
    pixels = 400 * BASE_WINDOW * BASE_WINDOW
    steps = max(150, round(pixels / (window * window) / 10) * 10)
    return Recipe(arch, window, steps, lr=5e-4, base=recipe_for(arch, BASE_WINDOW))


@dataclass(frozen=True)
class TrainedModel:
    """A trained model and where it lies.

    Attributes:
        recipe: How it was trained.
        weights: The state dict file (``heatmap --weights``).
        model: The network in eval mode, on the CPU.
        window_accuracy: Top-1 accuracy on held-out windows (centre-pixel labels).
        train_seconds: Wall time of its training (when it was trained; cache reads keep it).
    """

    recipe: Recipe
    weights: Path
    model: nn.Module
    window_accuracy: float
    train_seconds: float


def build_model(arch: str, classes: int = len(TEXTURES)) -> nn.Module:
    """The architecture with random initialisation and a ``classes``-way head."""
    return ARCHITECTURES[arch](num_classes=classes)


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` RGB to a normalized float32 ``(N, 3, H, W)`` tensor."""
    x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def mosaic_pool(count: int, first_seed: int, cache: Path | None) -> list[Mosaic]:
    """``count`` square mosaics of side ``_POOL_SIDE`` (seeds from ``first_seed``), cached.

    Every model trains on the same pool, so it is drawn once into ``cache`` (an npz).
    """
    path = None
    if cache is not None:
        path = cache / f"pool_{first_seed}_{count}x{_POOL_SIDE}_v{_VERSION}.npz"
        if path.exists():
            with np.load(path) as stored:
                return [
                    Mosaic(image, label)
                    for image, label in zip(stored["images"], stored["labels"], strict=True)
                ]
    pool = [
        make_mosaic((_POOL_SIDE, _POOL_SIDE), first_seed + i, REGION_SIDE) for i in range(count)
    ]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.npz")
        np.savez(
            partial,
            images=np.stack([m.image for m in pool]),
            labels=np.stack([m.labels for m in pool]),
        )
        partial.replace(path)
    return pool


class WindowSampler:
    """Random windows of a pool of mosaics, each labelled by its centre pixel's class.

    Args:
        pool: The mosaics.
        window: Window side in pixels.
        seed: Fixes the windows drawn.
        augment: Give each window a random colour scheme (channels permuted, each inverted
            with probability 1/2) and one of the 8 rotations/mirrors. Every region of the pool
            has its own two colours, so without this a network learns the pool's colour pairs
            (75% on training windows, 50% on held-out ones) instead of the textures.
    """

    def __init__(self, pool: list[Mosaic], window: int, seed: int, augment: bool = False) -> None:
        self.pool = pool
        self.window = window
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def _augmented(self, image: np.ndarray) -> np.ndarray:
        image = image[..., self.rng.permutation(3)]
        invert = self.rng.random(3) < 0.5
        image = np.where(invert, 255 - image, image)
        image = np.rot90(image, int(self.rng.integers(4)))
        return image[:, ::-1] if self.rng.random() < 0.5 else image

    def sample(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` normalized windows ``(count, 3, w, w)`` and their labels ``(count,)``."""
        which = self.rng.integers(0, len(self.pool), count)
        corners = self.rng.integers(0, _POOL_SIDE - self.window + 1, (count, 2))
        images, labels = [], []
        half = self.window // 2
        for index, (top, left) in zip(which, corners, strict=True):
            mosaic = self.pool[index]
            image = mosaic.image[top : top + self.window, left : left + self.window]
            images.append(self._augmented(image) if self.augment else image)
            labels.append(mosaic.labels[top + half, left + half])
        return normalize(np.stack(images)), torch.tensor(np.array(labels), dtype=torch.long)


def _learning_rate(recipe: Recipe, step: int) -> float:
    warm_up = max(1, recipe.steps // 20)
    if step < warm_up:
        return recipe.lr * (step + 1) / warm_up
    progress = (step - warm_up) / max(1, recipe.steps - warm_up)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    recipe: Recipe, cache: Path, log: Callable[[str], None] = print
) -> tuple[nn.Module, list[float]]:
    """Trains one model (from scratch, or from its base: trained first when not cached).

    Returns:
        The model in eval mode and the mean loss of every 10 steps.
    """
    torch.manual_seed(recipe.seed)
    if recipe.base is None:
        model = build_model(recipe.arch)
    else:
        model = trained_model(recipe.base, cache, log).model
    pool = mosaic_pool(recipe.pool, _TRAIN_SEED, cache)
    sampler = WindowSampler(pool, recipe.window, recipe.seed, augment=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.05)
    model.train()
    losses: list[float] = []
    running = 0.0
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(recipe, step)
        images, labels = sampler.sample(recipe.batch)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item()
        if (step + 1) % 10 == 0:
            losses.append(running / 10)
            running = 0.0
            if (step + 1) % 50 == 0:
                log(f"  {recipe.key}: step {step + 1}/{recipe.steps} loss {losses[-1]:.3f}")
    return model.eval(), losses


@torch.inference_mode()
def window_accuracy(
    model: nn.Module, window: int, count: int = 512, cache: Path | None = None
) -> float:
    """Top-1 accuracy on ``count`` windows of held-out mosaics (centre-pixel labels)."""
    sampler = WindowSampler(mosaic_pool(8, _VALIDATION_SEED, cache), window, seed=1)
    correct = 0
    for start in range(0, count, 64):
        images, labels = sampler.sample(min(64, count - start))
        correct += int((model(images).argmax(1) == labels).sum())
    return correct / count


def trained_model(recipe: Recipe, cache: Path, log: Callable[[str], None] = print) -> TrainedModel:
    """The model of ``recipe``: read from ``cache/models`` or trained there once.

    Args:
        recipe: What to train.
        cache: The benchmark's cache folder.
        log: Progress lines.

    Returns:
        The model (eval mode, CPU) with its weights file and figures.
    """
    folder = cache / "models"
    weights, meta_path = folder / f"{recipe.key}.pt", folder / f"{recipe.key}.json"
    if weights.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        model = build_model(recipe.arch)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return TrainedModel(
            recipe, weights, model.eval(), meta["window_accuracy"], meta["train_seconds"]
        )
    log(f"training {recipe.key} (cached afterwards)")
    threads = torch.get_num_threads()
    # One thread: on a shared, oversubscribed CPU two threads each waiting at the other's
    # barrier spent 10x the CPU time per step (0.2 against 2.1 CPU-s, ShuffleNetV2 at 96 px).
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        model, losses = train(recipe, cache, log)
        seconds = time.perf_counter() - start
        accuracy = window_accuracy(model, recipe.window, cache=cache)
    finally:
        torch.set_num_threads(threads)
    log(f"  {recipe.key}: {seconds:.0f} s, held-out window accuracy {accuracy:.3f}")
    folder.mkdir(parents=True, exist_ok=True)
    partial = weights.with_suffix(".pt.partial")
    torch.save(model.state_dict(), partial)
    partial.replace(weights)
    meta = {
        "recipe": asdict(recipe),
        "window_accuracy": accuracy,
        "train_seconds": seconds,
        "losses": losses,
        "threads": 1,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return TrainedModel(recipe, weights, model, accuracy, seconds)
