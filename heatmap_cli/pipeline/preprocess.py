"""From a decoded photo to the network's input: snapped resizing and normalization.

Resizing keeps the image as uint8 (a 20000-pixel scan stays a few hundred MB, not GBs of float);
normalization to float happens per batch or per tile, on the device that runs the network.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from heatmap_cli.errors import GeometryError, InvalidOptionError
from heatmap_cli.grid.geometry import GridGeometry, snapped_input_size
from heatmap_cli.io.pixels import image_array

__all__ = ["plan_geometry", "resize_for_grid"]

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
