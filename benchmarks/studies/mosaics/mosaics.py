"""Texture mosaics with per-pixel ground truth: irregular regions, one texture class each.

A mosaic is a Voronoi partition of the canvas whose boundaries are bent by a smooth random
displacement of the coordinates (domain warping), so regions are irregular rather than convex
polygons; each region gets a class, its own instance of that texture
(:mod:`.textures`), and the label map records the class of every pixel. Classes are dealt in
shuffled rounds (every class once before any twice), so each mosaic holds all of them when it has
at least as many regions. One integer seed fixes the whole mosaic.

:func:`make_mosaic` draws one; :func:`write_mosaic_set` writes a folder of them as PNG (what the
``heatmap`` command reads) with the label maps beside, not inside, that folder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from .textures import TEXTURES, Texture, paint_region

__all__ = ["Mosaic", "MosaicSet", "make_mosaic", "read_labels", "write_mosaic_set"]

REGION_SIDE = 192
"""Default mean region side in pixels: a region covers ``REGION_SIDE**2`` pixels on average."""

_VERSION = 1
"""Bumped whenever a change would alter any pixel: it is part of every cache key."""


@dataclass(frozen=True)
class Mosaic:
    """One mosaic.

    Attributes:
        image: uint8 ``(H, W, 3)`` RGB.
        labels: uint8 ``(H, W)``: the class index of every pixel (into :data:`TEXTURES`).
    """

    image: np.ndarray
    labels: np.ndarray


def _warped_coordinates(
    height: int, width: int, region_side: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates displaced by a smooth random field (amplitude ~ region/8)."""
    step = 16
    coarse = (math.ceil(height / step) + 2, math.ceil(width / step) + 2)
    sigma = max(region_side / step / 4, 1.0)
    fields = []
    for _ in range(2):
        noise = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma, mode="wrap")
        noise *= (region_side / 8) / (noise.std() + 1e-12)
        fine = ndimage.zoom(noise, step, order=1)[:height, :width]
        fields.append(fine)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    return ys + fields[0], xs + fields[1]


def make_mosaic(
    size: tuple[int, int],
    seed: int,
    region_side: float = REGION_SIDE,
    textures: tuple[Texture, ...] = TEXTURES,
) -> Mosaic:
    """Draws one mosaic.

    Args:
        size: ``(H, W)`` in pixels.
        seed: Fixes every pixel and label.
        region_side: Mean side of a region in pixels (regions number about
            ``H * W / region_side**2``, at least 2).
        textures: The classes, in label order.

    Returns:
        The mosaic and its label map.
    """
    height, width = size
    rng = np.random.default_rng(seed)
    count = max(2, round(height * width / region_side**2))
    seeds = rng.uniform((0, 0), (height, width), (count, 2))
    ys, xs = _warped_coordinates(height, width, region_side, rng)
    _, nearest = cKDTree(seeds).query(np.stack([ys.ravel(), xs.ravel()], axis=1))
    regions = nearest.reshape(height, width)
    rounds = math.ceil(count / len(textures))
    classes = np.concatenate([rng.permutation(len(textures)) for _ in range(rounds)])[:count]
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    labels = np.zeros((height, width), dtype=np.uint8)
    for region, box in enumerate(ndimage.find_objects(regions + 1)):
        if box is None:  # a seed that owns no pixel after warping
            continue
        mask = regions[box] == region
        labels[box][mask] = classes[region]
        top_left = (box[0].start, box[1].start)
        paint_region(canvas, mask, top_left, textures[classes[region]], rng)
    image = np.round(canvas * 255).astype(np.uint8)
    return Mosaic(image, labels)


@dataclass(frozen=True)
class MosaicSet:
    """A folder of mosaics on disk.

    Attributes:
        root: The set's folder.
        images: ``root/images``: the mosaics as PNG (give this folder to ``heatmap``).
        labels: ``root/labels``: one uint8 PNG label map per mosaic, same file names.
        names: The class names, in label order (also in ``root/classes.txt``).
    """

    root: Path
    images: Path
    labels: Path
    names: tuple[str, ...]

    def stems(self) -> list[str]:
        """The mosaics' file stems, sorted."""
        return sorted(path.stem for path in self.images.glob("*.png"))


def write_mosaic_set(
    root: Path,
    count: int,
    size: int,
    first_seed: int = 0,
    region_side: float = REGION_SIDE,
) -> MosaicSet:
    """Writes ``count`` square mosaics of side ``size`` (seeds ``first_seed`` onwards), once.

    A set already written with the same parameters (``root/set.json``) is reused as it is.

    Args:
        root: Folder of the set (created).
        count: How many mosaics.
        size: Side in pixels.
        first_seed: Seed of the first mosaic; the others follow.
        region_side: Mean region side in pixels.

    Returns:
        The set.
    """
    names = tuple(texture.name for texture in TEXTURES)
    spec = {
        "version": _VERSION,
        "count": count,
        "size": size,
        "first_seed": first_seed,
        "region_side": region_side,
        "classes": list(names),
    }
    mosaic_set = MosaicSet(root, root / "images", root / "labels", names)
    marker = root / "set.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return mosaic_set
    mosaic_set.images.mkdir(parents=True, exist_ok=True)
    mosaic_set.labels.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        mosaic = make_mosaic((size, size), first_seed + index, region_side)
        stem = f"mosaic_{index:03d}"
        Image.fromarray(mosaic.image).save(mosaic_set.images / f"{stem}.png", compress_level=1)
        Image.fromarray(mosaic.labels).save(mosaic_set.labels / f"{stem}.png")
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    marker.write_text(json.dumps(spec, indent=1))
    return mosaic_set


def read_labels(mosaic_set: MosaicSet, stem: str) -> np.ndarray:
    """The uint8 ``(H, W)`` label map of one mosaic of the set."""
    return np.asarray(Image.open(mosaic_set.labels / f"{stem}.png"))
