"""Procedural colour textures: the classes of the mosaic benchmark, synthesised offline.

Every class is a *pattern* (a float field in ``[0, 1]`` over pixel coordinates) drawn with two
random colours, so the mean colour of a region says nothing about its class: only the structure
does. Each region draws its own parameters (scale, orientation, sharpness, colours, noise) from
the class's ranges, so a classifier must learn the texture, not one instance of it. Everything is
drawn from a :class:`numpy.random.Generator`, so a seed fixes every pixel.

The four classes (:data:`TEXTURES`):

* ``stripes``: a sinusoidal grating, period 7-16 px, any orientation, soft to hard edges;
* ``checks``: the product of two orthogonal gratings, period 10-24 px, any orientation;
* ``blobs``: Gaussian-smoothed white noise (sigma 2.5-5 px) through a soft threshold;
* ``dots``: discs of radius 2-4 px on a jittered lattice, spacing 9-16 px, rotated.

No photograph or third-party texture is used (no licence to name); ``scipy.ndimage`` smooths the
noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["TEXTURES", "Texture", "paint_region"]

Pattern = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
"""``pattern(ys, xs, rng) -> field``: ``ys``, ``xs`` float64 pixel-centre coordinates of one
rectangle (shape ``(h, w)`` each, in mosaic pixels); ``field`` float32 ``(h, w)`` in ``[0, 1]``."""


@dataclass(frozen=True)
class Texture:
    """One texture class.

    Attributes:
        name: The class name (the label file's line).
        pattern: Draws one instance's field (see :data:`Pattern`).
    """

    name: str
    pattern: Pattern


def _rotated(ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """The coordinates turned by a random angle (``u`` along it, ``v`` across it)."""
    angle = rng.uniform(0, math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    return xs * cos + ys * sin, -xs * sin + ys * cos


def _sharpen(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A wave in ``[-1, 1]`` to ``[0, 1]``, from sinusoidal (gain 1) to nearly square (gain 4)."""
    gain = rng.uniform(1.0, 4.0)
    return (0.5 + 0.5 * np.tanh(gain * wave) / math.tanh(gain)).astype(np.float32)


def _stripes(ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u, _ = _rotated(ys, xs, rng)
    period = rng.uniform(7, 16)
    return _sharpen(np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi)), rng)


def _checks(ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u, v = _rotated(ys, xs, rng)
    period = rng.uniform(10, 24)
    phase_u, phase_v = rng.uniform(0, 2 * math.pi, 2)
    wave = np.sin(2 * math.pi * u / period + phase_u) * np.sin(2 * math.pi * v / period + phase_v)
    return _sharpen(wave * 1.5, rng)


def _blobs(ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(2.5, 5.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(ys.shape), sigma, mode="wrap")
    noise /= noise.std() + 1e-12
    return _sharpen(noise, rng)


def _dots(ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    u, v = _rotated(ys, xs, rng)
    spacing = rng.uniform(9, 16)
    radius = rng.uniform(2.0, min(4.0, spacing / 3))
    jitter = (spacing / 2 - radius) * 0.8
    cell_u, cell_v = np.floor(u / spacing), np.floor(v / spacing)
    # One disc per lattice cell, its centre jittered by a hash of the cell (no table to store).
    offsets = rng.integers(0, 2**31, 2)
    jitter_u = _cell_hash(cell_u, cell_v, int(offsets[0])) * jitter
    jitter_v = _cell_hash(cell_u, cell_v, int(offsets[1])) * jitter
    du = u - (cell_u + 0.5) * spacing - jitter_u
    dv = v - (cell_v + 0.5) * spacing - jitter_v
    distance = np.sqrt(du * du + dv * dv)
    return np.clip(radius + 0.5 - distance, 0.0, 1.0).astype(np.float32)


def _cell_hash(cell_u: np.ndarray, cell_v: np.ndarray, salt: int) -> np.ndarray:
    """A fixed pseudo-random value in ``[-1, 1]`` per integer lattice cell."""
    key = (cell_u.astype(np.int64) * 73856093) ^ (cell_v.astype(np.int64) * 19349663) ^ salt
    key = (key * 2654435761) % 2**32
    return (key / 2**31 - 1.0).astype(np.float64)


TEXTURES: tuple[Texture, ...] = (
    Texture("stripes", _stripes),
    Texture("checks", _checks),
    Texture("blobs", _blobs),
    Texture("dots", _dots),
)
"""The classes, in label order."""


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two RGB colours in ``[0.05, 0.95]`` at least 0.25 apart in the mean of their channels."""
    while True:
        low, high = rng.uniform(0.05, 0.95, (2, 3))
        if abs(high.mean() - low.mean()) >= 0.25 or np.abs(high - low).max() >= 0.45:
            return low.astype(np.float32), high.astype(np.float32)


def paint_region(
    canvas: np.ndarray,
    mask: np.ndarray,
    top_left: tuple[int, int],
    texture: Texture,
    rng: np.random.Generator,
) -> None:
    """Paints one instance of ``texture`` into ``canvas`` where ``mask`` is set.

    Args:
        canvas: float32 ``(H, W, 3)`` RGB in ``[0, 1]``, changed in place.
        mask: bool ``(h, w)``: the region's pixels inside the rectangle at ``top_left``.
        top_left: ``(row, col)`` of the rectangle in ``canvas``.
        texture: What to paint.
        rng: Draws the instance (scale, orientation, colours, noise).
    """
    top, left = top_left
    height, width = mask.shape
    ys, xs = np.mgrid[top : top + height, left : left + width].astype(np.float64) + 0.5
    field = texture.pattern(ys, xs, rng)
    low, high = _colours(rng)
    pixels = low + (high - low) * field[..., None]
    pixels += rng.normal(0.0, rng.uniform(0.02, 0.08), pixels.shape).astype(np.float32)
    window = canvas[top : top + height, left : left + width]
    window[mask] = np.clip(pixels[mask], 0.0, 1.0)
