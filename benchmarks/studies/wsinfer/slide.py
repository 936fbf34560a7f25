"""An Aperio-like pyramidal slide written with tifffile: JPEG tiles, levels 1/4/16, 0.5 um/px.

The layout is the one tifffile, tiffslide and OpenSlide recognise as Aperio SVS: page 0 is the
tiled full-resolution level whose ImageDescription starts with ``Aperio Image Library`` and carries
``MPP = 0.5``; page 1 is a stripped thumbnail; pages 2 and 3 are the tiled levels downsampled 4 and
16 times. Tissue is a few large smooth blobs of H&E-like pink and purple with blotchy texture on a
white, unsaturated background, covering about ``--tissue`` of the area (45% by default).

The slide is written band by band (one row of tiles at a time), so a 100k x 100k slide needs no
more memory than one band and the 1/4 level; the 1/4 and 1/16 levels are area averages of level 0,
as a scanner's pyramid is.

Run: python slide.py OUT.svs [--side 20000] [--tissue 0.45] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

TILE = 256
MPP = 0.5
DOWNSAMPLES = (4, 16)
FIELD_STEP = 32  # level-0 pixels per cell of the smooth fields that shape tissue and colour
JPEG_QUALITY = 80
_PINK = np.array([236.0, 168.0, 208.0])
_PURPLE = np.array([142.0, 84.0, 168.0])
_WHITE = np.array([243.0, 242.0, 244.0])


def description(width: int, height: int, level_width: int, level_height: int) -> str:
    """Aperio's ImageDescription for a level (level 0 when its size is the slide's)."""
    head = (
        f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE})"
    )
    if (level_width, level_height) != (width, height):
        head += f" -> {level_width}x{level_height}"
    fields = ["AppMag = 20", f"MPP = {MPP}", "ScanScope ID = BENCH", "Filename = synthetic"]
    return f"{head} JPEG/RGB Q={JPEG_QUALITY}|" + "|".join(fields)


class SyntheticTissue:
    """Smooth random fields on a coarse lattice, read back at any level-0 rows.

    Attributes:
        side: Slide side in level-0 pixels.
        threshold: Tissue where the shape field exceeds it (chosen for the requested fraction).
    """

    def __init__(self, side: int, tissue: float, seed: int) -> None:
        self.side = side
        rng = np.random.default_rng(seed)
        cells = math.ceil(side / FIELD_STEP) + 2
        shape = ndimage.gaussian_filter(rng.standard_normal((cells, cells)), sigma=cells / 14)
        shape /= shape.std()
        # Fade toward the border so the blobs lie on the glass, not cut by its edges.
        ramp = np.minimum(np.arange(cells), np.arange(cells)[::-1]) / (cells * 0.08)
        fade = np.minimum(1.0, np.minimum.outer(ramp, ramp))
        self.shape = shape * fade + (fade - 1.0)
        self.threshold = float(np.quantile(self.shape, 1.0 - tissue))
        self.hue = ndimage.gaussian_filter(rng.standard_normal((cells, cells)), sigma=cells / 60)
        self.hue = (self.hue - self.hue.min()) / (np.ptp(self.hue) + 1e-9)
        self.seed = seed

    def _fields(self, top: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Shape and hue fields, bilinearly interpolated at rows ``top..top+rows`` (float32)."""
        y = (np.arange(top, top + rows) + 0.5) / FIELD_STEP
        x = (np.arange(self.side) + 0.5) / FIELD_STEP
        out = []
        for field in (self.shape, self.hue):
            y0 = np.floor(y).astype(int)
            fy = (y - y0)[:, None]
            band = field[y0] * (1 - fy) + field[y0 + 1] * fy
            x0 = np.floor(x).astype(int)
            fx = x - x0
            out.append((band[:, x0] * (1 - fx) + band[:, x0 + 1] * fx).astype(np.float32))
        return out[0], out[1]

    def rows(self, top: int, rows: int) -> np.ndarray:
        """RGB uint8 ``(rows, side, 3)``: level-0 pixels of rows ``top..top+rows``."""
        shape, hue = self._fields(top, rows)
        rng = np.random.default_rng((self.seed, top))
        # Blotches 4 pixels across, plus fine grain: texture that compresses like stained tissue.
        coarse = rng.standard_normal((math.ceil(rows / 4), math.ceil(self.side / 4), 3))
        coarse = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:rows, : self.side]
        colour = _PINK + (_PURPLE - _PINK) * hue[..., None] ** 1.5
        tissue = colour + 14.0 * coarse + rng.normal(0, 3, (rows, self.side, 3))
        glass = _WHITE + rng.normal(0, 1.5, (rows, self.side, 3))
        edge = np.clip((shape - self.threshold) * 25.0, 0.0, 1.0)[..., None]  # ~60 px edges
        return np.clip(glass + (tissue - glass) * edge, 0, 255).astype(np.uint8)


def _tiles(band: np.ndarray) -> Iterator[np.ndarray]:
    for left in range(0, band.shape[1], TILE):
        yield band[:, left : left + TILE]


def _reduce(band: np.ndarray, factor: int) -> np.ndarray:
    """Area average by ``factor`` (rows and columns that do not fill a block are dropped)."""
    rows, cols = band.shape[0] // factor, band.shape[1] // factor
    blocks = band[: rows * factor, : cols * factor].reshape(rows, factor, cols, factor, 3)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


def write_slide(path: Path, side: int = 20000, tissue: float = 0.45, seed: int = 0) -> dict:
    """Writes the slide; returns its facts (size, levels, tissue fraction of the fields)."""
    started = time.perf_counter()
    source = SyntheticTissue(side, tissue, seed)
    level1 = np.zeros((side // DOWNSAMPLES[0], side // DOWNSAMPLES[0], 3), np.float32)

    def level0_tiles() -> Iterator[np.ndarray]:
        for top in range(0, side, TILE):
            band = source.rows(top, min(TILE, side - top))
            reduced = _reduce(band, DOWNSAMPLES[0])
            row = top // DOWNSAMPLES[0]
            level1[row : row + reduced.shape[0], : reduced.shape[1]] = reduced
            yield from _tiles(band)

    jpeg = {
        "compression": "jpeg",
        "compressionargs": {"level": JPEG_QUALITY},
        "photometric": "rgb",
        "metadata": None,  # no tifffile "shaped" description: readers must see Aperio's
    }
    with tifffile.TiffWriter(path, bigtiff=side * side * 3 > 2**32 - 2**25) as tif:
        tif.write(
            level0_tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE),
            description=description(side, side, side, side), resolution=(1e4 / MPP, 1e4 / MPP),
            resolutionunit="CENTIMETER", **jpeg,
        )  # fmt: skip
        levels = [_to_uint8(level1)]
        levels.append(_to_uint8(_reduce(levels[0], DOWNSAMPLES[1] // DOWNSAMPLES[0])))
        step = max(1, side // DOWNSAMPLES[1] // 768)
        thumbnail = levels[1][::step, ::step]
        tif.write(thumbnail, description=description(side, side, *thumbnail.shape[1::-1]), **jpeg)
        for level in levels:
            tif.write(
                level, tile=(TILE, TILE), description=description(side, side, *level.shape[1::-1]),
                **jpeg,
            )  # fmt: skip
    fraction = float((source.shape > source.threshold).mean())
    return {
        "path": str(path),
        "side": side,
        "mpp": MPP,
        "downsamples": [1, *DOWNSAMPLES],
        "tile": TILE,
        "tissue_fraction_requested": tissue,
        "tissue_fraction_of_field": round(fraction, 3),
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--tissue", type=float, default=0.45)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(write_slide(args.out, args.side, args.tissue, args.seed)))


if __name__ == "__main__":
    main()
