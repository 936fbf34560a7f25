"""Grad-CAM and Grad-CAM++ (pytorch-grad-cam 1.5.7) over a folder of mosaics: the peers.

Runs in the benchmark's own virtual environment (``setup_peers.sh``), never in the tool's, and
imports nothing from ``heatmap_cli``. It is a whole process like a ``heatmap`` run: it loads
the texture model, reads every PNG of ``--images``, computes one class-activation map per class
over the whole mosaic at full resolution (the model's last convolutional block as the target
layer, one backward pass per class, the ``K`` classes in one batch), and writes
``<stem>.npz`` with ``labels`` (uint8 ``(H, W)``, the argmax over the ``K`` maps, which
pytorch-grad-cam returns ReLU'd, bilinearly upsampled to the input and min-max scaled to
``[0, 1]`` per map). Its last stdout line is a JSON object with the seconds spent in the CAM
calls (``network``) and the number of images.

Usage: peer_cam.py --method gradcam|gradcam++ --arch ARCH --weights FILE --classes K
       --images DIR --out DIR --mean R,G,B --std R,G,B
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

CAMS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}

_BATCH_PIXELS = 1024 * 1024
"""Above this many pixels per image the classes go one at a time (bounded memory)."""


def target_layer(arch: str, model: nn.Module) -> nn.Module:
    """The last convolutional block: the layer Grad-CAM's authors and its docs use."""
    if arch.startswith("resnet"):
        return model.layer4[-1]  # type: ignore[index]
    if arch.startswith("shufflenet"):
        return model.conv5  # type: ignore[return-value]
    return model.features[-1]  # type: ignore[index]  # MobileNetV3, EfficientNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(CAMS), required=True)
    parser.add_argument("--arch", required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--classes", type=int, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mean", required=True)
    parser.add_argument("--std", required=True)
    args = parser.parse_args()
    model = getattr(torchvision.models, args.arch)(num_classes=args.classes)
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    mean = torch.tensor([float(v) for v in args.mean.split(",")]).view(1, 3, 1, 1)
    std = torch.tensor([float(v) for v in args.std.split(",")]).view(1, 3, 1, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    network = 0.0
    images = sorted(args.images.glob("*.png"))
    with CAMS[args.method](model=model, target_layers=[target_layer(args.arch, model)]) as cam:
        for path in images:
            pixels = np.asarray(Image.open(path).convert("RGB"))
            x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
            x = (x - mean) / std
            start = time.perf_counter()
            if x.shape[2] * x.shape[3] <= _BATCH_PIXELS:
                targets = [ClassifierOutputTarget(k) for k in range(args.classes)]
                maps = cam(input_tensor=x.repeat(args.classes, 1, 1, 1), targets=targets)
            else:
                maps = np.concatenate(
                    [
                        cam(input_tensor=x, targets=[ClassifierOutputTarget(k)])
                        for k in range(args.classes)
                    ]
                )
            network += time.perf_counter() - start
            labels = maps.argmax(axis=0).astype(np.uint8)
            np.savez_compressed(args.out / f"{path.stem}.npz", labels=labels)
    print(json.dumps({"network": network, "images": len(images)}))


if __name__ == "__main__":
    main()
