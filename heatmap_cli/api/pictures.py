"""What the notebook API scores: image files, Pillow images and arrays, one or many.

A file is read as the command reads it (:func:`heatmap_cli.pipeline.scoring.read_file`: every
Pillow mode, the EXIF orientation applied). An image or array already in memory is taken as its
pixels are (:func:`heatmap_cli.io.photo_of_image`): turned to RGB, not turned by an orientation
tag, since the caller already sees it one way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from heatmap_cli.errors import ImageReadError
from heatmap_cli.io import DecodedPhoto, ImageInput, photo_of_image
from heatmap_cli.pipeline.scoring import PhotoReading, read_file

__all__ = ["ImageLike", "Pictures", "gather"]

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]  # noqa: UP007  (a runtime alias)
"""An image file, a Pillow image, or a uint8 ``(H, W, 3)`` (or ``(H, W)`` grey) array."""


@dataclass(frozen=True)
class Pictures:
    """The images of one call, as the loader's items, and how each becomes a photo.

    Attributes:
        items: One per image, in the order given: a file's path and stem, or a label such as
            ``<image 2>`` (stem ``image_2``) for one in memory.
        held: The images in memory, by item.
        single: Whether one image was given (not a list): the call returns one result.
    """

    items: tuple[ImageInput, ...]
    held: dict[ImageInput, Image.Image | np.ndarray]
    single: bool

    def decode(self, item: ImageInput, reading: PhotoReading) -> DecodedPhoto:
        """The photo of ``item`` (a loader thread's decoder): read, or taken from memory.

        Raises:
            ImageReadError: The file cannot be read, or the array is not a picture.
        """
        image = self.held.get(item)
        if image is None:
            return read_file(item, reading)
        if isinstance(image, np.ndarray):
            image = _array_image(image, item.path)
        return photo_of_image(image, str(item.path))


def gather(images: ImageLike | Iterable[ImageLike]) -> Pictures:
    """The items of one call: a single image, a list or tuple of them, or a stack of arrays.

    Args:
        images: A path, a Pillow image, a uint8 array; a list or tuple of those; or a uint8
            ``(N, H, W, 3)`` array of ``N`` images.

    Raises:
        TypeError: Something that is none of these.
    """
    single = not isinstance(images, (list, tuple)) and not _is_stack(images)
    given = [images] if single else list(images)  # type: ignore[arg-type]
    items: list[ImageInput] = []
    held: dict[ImageInput, Image.Image | np.ndarray] = {}
    for index, image in enumerate(given):
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            items.append(ImageInput(path, Path(path.stem)))
        elif isinstance(image, (Image.Image, np.ndarray)):
            items.append(ImageInput(Path(f"<image {index}>"), Path(f"image_{index}")))
            held[items[-1]] = image
        else:
            raise TypeError(
                "an image must be a file path, a PIL image or a uint8 (H, W, 3) array, got "
                f"{type(image).__name__}"
            )
    return Pictures(tuple(items), held, single)


def _is_stack(images: object) -> bool:
    return isinstance(images, np.ndarray) and images.ndim == 4


def _array_image(array: np.ndarray, label: Path) -> Image.Image:
    """A uint8 ``(H, W, 3)``, ``(H, W, 4)`` or ``(H, W)`` array as a Pillow image.

    Raises:
        ImageReadError: Any other dtype or shape; the message says how to convert it.
    """
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not shape_ok or min(array.shape[:2]) == 0:
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (3, 4):
            hint = "; for a (3, H, W) array pass array.transpose(1, 2, 0)"
        if array.dtype.kind == "f":
            hint += "; for values in [0, 1] pass (array * 255).round().astype(np.uint8)"
        raise ImageReadError(
            label,
            f"an array image must be uint8 (H, W, 3) RGB, got {array.dtype} "
            f"{tuple(array.shape)}{hint}",
        )
    return Image.fromarray(np.ascontiguousarray(array))
