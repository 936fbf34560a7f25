"""The model both tools run: a 2-class ResNet-18 as a WSInfer model folder.

Random weights (seeded) are enough for timing and for equality checks, but untouched they give
saturated or constant probabilities, against which an equality check proves little. So the batch
norms' running statistics are set from patches of the benchmark slide (a forward pass in
training mode, no gradient step), and the last layer is scaled so that the two logits differ by
about one unit across patches: probabilities spread over (0, 1), as a trained model's would.

The folder is what WSInfer's model zoo publishes: ``config.json`` (224-pixel patches at the
slide's 0.5 um/px, ``Resize(224)``, ``ToTensor``, ImageNet's ``Normalize``) and
``torchscript_model.pt`` (``torch.jit.script``, or ``torch.jit.trace`` with ``--trace``).

Run: python model.py OUT_DIR SLIDE [--trace] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

PATCH = 224
MPP = 0.5
CLASSES = ("benign", "tumor")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def config() -> dict:
    """WSInfer's configuration of the benchmark model."""
    return {
        "spec_version": "1.0",
        "architecture": "resnet18",
        "num_classes": len(CLASSES),
        "class_names": list(CLASSES),
        "patch_size_pixels": PATCH,
        "spacing_um_px": MPP,
        "transform": [
            {"name": "Resize", "arguments": {"size": PATCH}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": list(MEAN), "std": list(STD)}},
        ],
    }


def slide_patches(slide: Path, count: int, seed: int) -> torch.Tensor:
    """``count`` normalized 224-pixel patches from random places of the slide's level 0."""
    import tiffslide

    rng = np.random.default_rng(seed)
    with tiffslide.TiffSlide(slide) as reader:
        width, height = reader.dimensions
        patches = []
        for _ in range(count):
            x, y = int(rng.integers(0, width - PATCH)), int(rng.integers(0, height - PATCH))
            region = np.asarray(reader.read_region((x, y), 0, (PATCH, PATCH)).convert("RGB"))
            patches.append(torch.from_numpy(region.copy()).permute(2, 0, 1).float() / 255)
    batch = torch.stack(patches)
    return (batch - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def calibrated_resnet18(slide: Path, seed: int = 0) -> torch.nn.Module:
    """The seeded 2-class ResNet-18 with slide statistics and spread-out probabilities."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    patches = slide_patches(slide, 96, seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for batch in patches.split(16):
            model(batch)
    model.eval()
    with torch.no_grad():
        logits = model(patches)
        spread = float((logits[:, 1] - logits[:, 0]).std())
        model.fc.weight /= max(spread, 1e-6)
        model.fc.bias.zero_()
    return model


def write_model_folder(folder: Path, slide: Path, *, trace: bool = False, seed: int = 0) -> dict:
    """Writes ``config.json`` and ``torchscript_model.pt``; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    model = calibrated_resnet18(slide, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if trace:
            scripted = torch.jit.trace(model, torch.randn(1, 3, PATCH, PATCH))
        else:
            scripted = torch.jit.script(model)
        torch.jit.save(scripted, str(folder / "torchscript_model.pt"))
    (folder / "config.json").write_text(json.dumps(config(), indent=2) + "\n", encoding="utf-8")
    return {"folder": str(folder), "torchscript": "trace" if trace else "script", "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(write_model_folder(args.out, args.slide, trace=args.trace, seed=args.seed)))


if __name__ == "__main__":
    main()
