"""From a decoded photo to the network's input: snapped resizing and normalization.

Resizing keeps the image as uint8 (a 20000-pixel scan stays a few hundred MB, not GBs of float);
normalization to float happens per batch or per tile, on the device that runs the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from heatmap_cli.errors import GeometryError, InvalidOptionError
from heatmap_cli.geometry import GridGeometry, snapped_input_size
from heatmap_cli.pixels import image_array

__all__ = ["normalize", "plan_geometry", "resize_for_grid"]

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def plan_geometry(
    original_size: tuple[int, int],
    *,
    shorter_side: int,
    window: tuple[int, int],
    stride: int,
) -> GridGeometry:
    """The grid an image will get: its resized size, snapped to ``window + stride * k``.

    Args:
        original_size: ``(H, W)`` of the decoded image.
        shorter_side: Target length of the resized image's shorter side (``--size``).
        window: ``(h, w)`` window of the network (its training size).
        stride: Output stride of the grid in resized pixels.

    Returns:
        The geometry mapping cells to windows in resized and original pixels.
    """
    input_size = snapped_input_size(original_size, shorter_side, window, stride)
    return GridGeometry(
        input_size=input_size, original_size=original_size, window=window, stride=stride
    )


def resize_for_grid(
    image: Image.Image, input_size: tuple[int, int], interpolation: str = "bilinear"
) -> np.ndarray:
    """Resizes an RGB photo to the planned network input size.

    Args:
        image: RGB ``PIL.Image`` in its displayed orientation.
        input_size: ``(H, W)`` target size, from ``plan_geometry``.
        interpolation: The model's resampling filter name (e.g. ``"bicubic"``); Pillow
            antialiases when shrinking, as torchvision's preprocessing does.

    Returns:
        uint8 array ``(H, W, 3)``.
    """
    if image.mode != "RGB":
        raise GeometryError(f"expected an RGB image, got mode {image.mode}")
    try:
        resample = _RESAMPLING[interpolation.lower()]
    except KeyError:
        raise InvalidOptionError(
            f"unknown interpolation {interpolation!r}; choose from {', '.join(_RESAMPLING)}"
        ) from None
    height, width = input_size
    if image.size != (width, height):
        image = image.resize((width, height), resample=resample)
    return image_array(image)


def normalize(
    pixels: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turns uint8 RGB pixels into the network's normalized input.

    Args:
        pixels: uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` array or tensor, values 0..255.
        mean: Per-channel mean of the model, in the 0..1 range.
        std: Per-channel standard deviation of the model, in the 0..1 range.
        device: Where to build the result (the uint8 data moves, not the float copy).
        dtype: Floating dtype of the result.

    Returns:
        ``(N, 3, H, W)`` tensor, ``(pixels / 255 - mean) / std``.
    """
    if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
        pixels = (
            pixels.copy()
        )  # PIL-backed arrays are read-only; torch wants to own writable memory
    tensor = torch.as_tensor(pixels)
    if tensor.dtype != torch.uint8 or tensor.shape[-1] != 3 or tensor.dim() not in (3, 4):
        raise GeometryError("pixels must be uint8 with shape (H, W, 3) or (N, H, W, 3)")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    tensor = tensor.to(device=device).permute(0, 3, 1, 2).to(dtype)
    mean_t = torch.tensor(mean, dtype=dtype, device=tensor.device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, dtype=dtype, device=tensor.device).view(1, 3, 1, 1) * 255
    return ((tensor - mean_t) / std_t).contiguous()
