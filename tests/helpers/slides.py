"""Synthetic whole-slide images written with tifffile, tile by tile (bounded memory at any size).

:func:`write_slide` writes a pyramidal, tiled TIFF of ``(height, width)`` pixels in one of the
layouts the readers meet: ``"aperio"`` (an SVS: JPEG tiles, an Aperio ``ImageDescription`` with
``MPP``, reduced levels as further pages), ``"generic"`` (a tiled TIFF pyramid without
microns per pixel), ``"ome"`` (OME-TIFF, levels as SubIFDs, ``PhysicalSizeX``) or ``"strips"``
(a plain BigTIFF in strips, one level, as a GeoTIFF or a scanner's flat export would be).

The picture is a function of level-0 coordinates, so every level shows the same slide: white
glass (RGB about 240) with pink-purple "tissue" blobs covering about ``tissue`` of the area, and
a fine texture inside them. :func:`slide_pixels` gives the same pixels as an array (small sizes
only), for references.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

TILE = 256


def _blobs(height: int, width: int, tissue: float, seed: int) -> np.ndarray:
    """``(n, 4)`` ellipses ``(cy, cx, ry, rx)`` in level-0 pixels covering about ``tissue``."""
    rng = np.random.default_rng(seed)
    area = 0.0
    blobs = []
    while area < tissue * height * width * 1.25 and len(blobs) < 64:
        ry = rng.uniform(0.06, 0.2) * height
        rx = rng.uniform(0.06, 0.2) * width
        cy = rng.uniform(0.15, 0.85) * height
        cx = rng.uniform(0.15, 0.85) * width
        blobs.append((cy, cx, ry, rx))
        area += np.pi * ry * rx
    return np.array(blobs, dtype=np.float64)


def _render(
    blobs: np.ndarray, top: float, left: float, rows: int, cols: int, step: float
) -> np.ndarray:
    """uint8 ``(rows, cols, 3)``: the picture at level-0 ``(top, left)``, ``step`` px apart."""
    ys = top + (np.arange(rows) + 0.5) * step
    xs = left + (np.arange(cols) + 0.5) * step
    inside = np.zeros((rows, cols), dtype=bool)
    for cy, cx, ry, rx in blobs:
        dy = ((ys - cy) / ry) ** 2
        dx = ((xs - cx) / rx) ** 2
        inside |= dy[:, None] + dx[None, :] <= 1.0
    texture = np.sin(ys[:, None] / 9.0) * np.cos(xs[None, :] / 7.0)  # same at every level
    image = np.empty((rows, cols, 3), dtype=np.float32)
    image[...] = (240, 238, 242)
    pink = np.stack([200 + 30 * texture, 110 + 40 * texture, 170 + 25 * texture], axis=-1).astype(
        np.float32
    )
    image[inside] = pink[inside]
    return np.clip(image, 0, 255).astype(np.uint8)


def slide_pixels(
    size: tuple[int, int], *, tissue: float = 0.45, seed: int = 0, downsample: int = 1
) -> np.ndarray:
    """uint8 ``(H / downsample, W / downsample, 3)``: a level of :func:`write_slide`'s picture."""
    height, width = size
    blobs = _blobs(height, width, tissue, seed)
    return _render(blobs, 0, 0, height // downsample, width // downsample, downsample)


def _tiles(
    blobs: np.ndarray, level_size: tuple[int, int], downsample: int, tile: int
) -> Iterator[np.ndarray]:
    height, width = level_size
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            block = np.full((tile, tile, 3), 255, dtype=np.uint8)
            rows, cols = min(tile, height - top), min(tile, width - left)
            block[:rows, :cols] = _render(
                blobs, top * downsample, left * downsample, rows, cols, downsample
            )
            yield block


def _strips(blobs: np.ndarray, size: tuple[int, int], rows_per_strip: int) -> Iterator[np.ndarray]:
    height, width = size
    for top in range(0, height, rows_per_strip):
        rows = min(rows_per_strip, height - top)
        yield _render(blobs, top, 0, rows, width, 1)


def write_slide(
    path: Path,
    size: tuple[int, int],
    *,
    layout: str = "aperio",
    mpp: float | None = 0.5,
    downsamples: tuple[int, ...] = (1, 4, 16),
    tissue: float = 0.45,
    compression: str | None = "jpeg",
    seed: int = 0,
    tile: int = TILE,
) -> Path:
    """Writes a synthetic slide; returns ``path``.

    Args:
        path: Where to write (``.svs``, ``.tif``, ``.ome.tif``...).
        size: ``(height, width)`` of level 0 in pixels.
        layout: ``"aperio"``, ``"generic"``, ``"ome"`` or ``"strips"``.
        mpp: Microns per pixel of level 0, written where the layout has a place for it.
        downsamples: Level downsamples (the first must be 1; ``"strips"`` writes level 0 only).
        tissue: About this fraction of the area is tissue.
        compression: ``"jpeg"`` (quality 90), ``"zlib"`` or None.
        seed: Where the blobs lie.
        tile: Tile side in pixels.
    """
    height, width = size
    blobs = _blobs(height, width, tissue, seed)
    options: dict[str, object] = {"photometric": "rgb"}
    if compression == "jpeg":
        options["compression"] = "jpeg"
        options["compressionargs"] = {"level": 90}
    elif compression is not None:
        options["compression"] = compression
    big = height * width * 3 > 2**31
    if layout == "strips":
        # A flat BigTIFF in uncompressed strips, filled strip by strip through a memory map.
        image = tifffile.memmap(
            path,
            shape=(height, width, 3),
            dtype=np.uint8,
            bigtiff=True,
            photometric="rgb",
            rowsperstrip=64,
        )
        for top in range(0, height, 512):
            rows = min(512, height - top)
            image[top : top + rows] = _render(blobs, top, 0, rows, width, 1)
        image.flush()
        del image
        return path
    levels = [(d, (height // d, width // d)) for d in downsamples]
    with tifffile.TiffWriter(path, bigtiff=big or layout == "ome", ome=layout == "ome") as tif:
        for index, (downsample, level_size) in enumerate(levels):
            extra: dict[str, object] = {}
            if index == 0 and layout == "aperio":
                mpp_text = f"|MPP = {mpp}" if mpp is not None else ""
                extra["description"] = (
                    f"Aperio Image Library v12.0.0\n{width}x{height} [0,0 {width}x{height}] "
                    f"({tile}x{tile}) JPEG/RGB Q=90|AppMag = 20{mpp_text}"
                )
            if layout == "ome" and index == 0:
                extra["subifds"] = len(levels) - 1
                if mpp is not None:
                    extra["metadata"] = {
                        "axes": "YXS",
                        "PhysicalSizeX": mpp,
                        "PhysicalSizeXUnit": "µm",
                        "PhysicalSizeY": mpp,
                        "PhysicalSizeYUnit": "µm",
                    }
            elif layout == "ome":
                extra["subfiletype"] = 1
            elif index > 0 and layout == "aperio":  # SVS levels are full pages, described
                extra["description"] = (
                    f"Aperio Image Library v12.0.0\n{width}x{height} -> "
                    f"{level_size[1]}x{level_size[0]}"
                )
            elif index > 0:
                extra["subfiletype"] = 1
            if layout != "ome" and index == 0:
                extra["metadata"] = None  # no tifffile json description: the vendor's own
            tif.write(
                _tiles(blobs, level_size, downsample, tile),
                shape=(*level_size, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                **options,
                **extra,
            )
            if index == 0 and layout == "aperio":  # SVS: a stripped thumbnail as page 1
                thumb_side = max(1, height // 32), max(1, width // 32)
                tif.write(
                    _render(blobs, 0, 0, *thumb_side, 32),
                    photometric="rgb",
                    subfiletype=1,
                    description=f"Aperio Image Library v12.0.0\n{width}x{height} -> "
                    f"{thumb_side[1]}x{thumb_side[0]}",
                    metadata=None,
                )
    return path


def require_slides() -> None:
    """Skips the calling test module without the slide readers, unless CI requires them.

    ``HEATMAP_REQUIRE_SLIDES=1`` (set by ``.ci/run``) turns the skip into a failure, so the
    slide tests cannot silently not run.
    """
    import os

    import pytest

    try:
        import openslide  # noqa: F401
        import tiffslide  # noqa: F401
    except (ImportError, OSError):
        if os.environ.get("HEATMAP_REQUIRE_SLIDES") == "1":
            raise
        pytest.skip(
            "the slide readers are not installed: pip install -e '.[slides]'",
            allow_module_level=True,
        )


def padded_net(num_classes: int = 3, seed: int = 0):
    """A small zero-padded CNN (window 32, native stride 8, receptive field 46 pixels).

    Its dense grid depends on neighbours beyond each window, as real networks' do, so tiling it
    exactly is a real test.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
    with torch.no_grad():
        net[4].running_mean.uniform_(-0.1, 0.1)
        net[4].running_var.uniform_(0.5, 1.5)
    return net.eval()


def write_huge_slide(
    path: Path,
    size: tuple[int, int],
    *,
    mpp: float = 0.5,
    downsamples: tuple[int, ...] = (1, 4, 16),
    tissue: float = 0.45,
    seed: int = 0,
    quality: int = 80,
) -> Path:
    """An Aperio-layout slide of any size in seconds per gigapixel: JPEG tiles encoded once.

    Tiles are chosen from a few pre-encoded ones (glass, or one of eight tissue textures) by
    whether their centre lies in a tissue blob, and written as tifffile's pre-encoded chunks,
    so a 100k x 100k slide costs minutes and no memory beyond one level's tile index.
    """
    import imagecodecs

    height, width = size
    blobs = _blobs(height, width, tissue, seed)
    palette = [
        imagecodecs.jpeg8_encode(_render(blobs, 0, 0, TILE, TILE, 1) * 0 + 241, level=quality)
    ]
    rng = np.random.default_rng(seed)
    for _ in range(8):
        texture = _render(
            np.array([[TILE, TILE, 1e9, 1e9]]),
            rng.uniform(0, 1e4),
            rng.uniform(0, 1e4),
            TILE,
            TILE,
            1,
        )
        palette.append(imagecodecs.jpeg8_encode(texture, level=quality))

    def chunks(downsample: int, level_size: tuple[int, int]) -> Iterator[bytes]:
        rows, cols = -(-level_size[0] // TILE), -(-level_size[1] // TILE)
        xs = (np.arange(cols) + 0.5) * TILE * downsample
        for row in range(rows):
            y = (row + 0.5) * TILE * downsample
            inside = np.zeros(cols, dtype=bool)
            for cy, cx, ry, rx in blobs:
                inside |= ((y - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1.0
            for col in range(cols):
                yield palette[1 + (row * 7 + col * 3) % 8] if inside[col] else palette[0]

    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, downsample in enumerate(downsamples):
            level_size = (height // downsample, width // downsample)
            description = (
                f"Aperio Image Library v12.0.0\n{width}x{height} [0,0 {width}x{height}] "
                f"({TILE}x{TILE}) JPEG/RGB Q={quality}|AppMag = 20|MPP = {mpp}"
                if index == 0
                else f"Aperio Image Library v12.0.0\n{width}x{height} -> "
                f"{level_size[1]}x{level_size[0]}"
            )
            tif.write(
                chunks(downsample, level_size),
                shape=(*level_size, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="rgb",
                description=description,
                metadata=None,
            )
            if index == 0:  # SVS: a stripped thumbnail as page 1 (where tifffile looks for it)
                thumb = (max(1, height // 256), max(1, width // 256))
                tif.write(
                    _render(blobs, 0, 0, *thumb, 256),
                    photometric="rgb",
                    description=f"Aperio Image Library v12.0.0\n{width}x{height} -> "
                    f"{thumb[1]}x{thumb[0]}",
                    metadata=None,
                )
    return path
