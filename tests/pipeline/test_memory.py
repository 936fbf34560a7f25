"""Memory bounded by construction: what a huge photo's grid and pictures cost on the way out.

Each test measures the peak of numpy's and Python's allocations (``tracemalloc`` sees both)
while one step runs, and checks it against what the step must hold (its result) plus a few
bands: the steps that used to copy a whole grid or picture (float64 activations, ``tobytes``
joins, an npz compressed into memory) would exceed these bounds several times over.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap_cli.io import write_npz
from heatmap_cli.io.pixels import image_array
from heatmap_cli.pipeline import activations
from heatmap_cli.pipeline.activations import sigmoid, softmax
from heatmap_cli.render.colour import OpacityRule, composite
from heatmap_cli.render.colour_layer import ColourLayer, colour_layer
from heatmap_cli.render.heat import BAND_PIXELS

MIB = 2**20
Activation = Callable[[np.ndarray], np.ndarray]


def peak_bytes(step: Callable[[], object]) -> tuple[object, int]:
    """``step()``'s result and the peak of the allocations made while it ran, in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = step()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def whole_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=0, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=0, keepdims=True)).astype(np.float32)


def whole_sigmoid(logits: np.ndarray) -> np.ndarray:
    wide = logits.astype(np.float64)
    exp = np.exp(-np.abs(wide))
    return np.where(wide >= 0, 1 / (1 + exp), exp / (1 + exp)).astype(np.float32)


@pytest.mark.parametrize(("banded", "whole"), [(softmax, whole_softmax), (sigmoid, whole_sigmoid)])
@pytest.mark.parametrize("band_values", [1, 300 * 7, 1 << 22])
def test_activations_in_bands_equal_the_whole_grid_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, banded: Activation, whole: Activation, band_values: int
) -> None:
    monkeypatch.setattr(activations, "BAND_VALUES", band_values)
    logits = np.random.default_rng(0).normal(0, 6, (300, 13, 7)).astype(np.float32)
    np.testing.assert_array_equal(banded(logits), whole(logits))


@pytest.mark.parametrize("activation", [softmax, sigmoid])
def test_an_activation_holds_its_result_and_a_few_bands(
    monkeypatch: pytest.MonkeyPatch, activation: Activation
) -> None:
    band = 1 << 16
    monkeypatch.setattr(activations, "BAND_VALUES", band)
    logits = np.random.default_rng(1).normal(0, 6, (1000, 48, 40)).astype(np.float32)
    probs, peak = peak_bytes(lambda: activation(logits))
    assert isinstance(probs, np.ndarray)
    # The whole-grid form held three float64 copies of the grid on top of the result.
    assert peak < probs.nbytes + 6 * band * 8, f"{peak / MIB:.1f} MiB"


def test_image_array_equals_numpy_and_holds_one_band(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    for shape in [(1000, 700, 3), (999, 333), (5, 4, 3)]:
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        image = Image.fromarray(pixels)
        array, peak = peak_bytes(lambda image=image: image_array(image, band_bytes=1 << 16))
        np.testing.assert_array_equal(array, np.asarray(image))
        assert isinstance(array, np.ndarray) and array.flags.writeable
        # np.asarray(image) holds the chunks of tobytes() and their join: twice the picture.
        assert peak < array.nbytes + 4 * (1 << 16), f"{shape}: {peak / MIB:.1f} MiB"


def test_write_npz_deflates_into_the_file_a_slice_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    # Floats that deflate only a little, as a grid's logits do.
    logits = rng.normal(0, 4, (250, 64, 64)).astype(np.float32)
    probs = rng.random((250, 64, 64), dtype=np.float32)
    path = tmp_path / "grid.npz"
    _, peak = peak_bytes(lambda: write_npz(path, logits=logits, probs=probs, stride=np.int64(8)))
    with np.load(path) as written:
        np.testing.assert_array_equal(written["logits"], logits)
        np.testing.assert_array_equal(written["probs"], probs)
        assert written["stride"] == 8
    # An npz compressed into memory holds the whole file (about the arrays' size), and
    # np.savez_compressed three copies of each array (up to 16 MiB each) on the way.
    assert peak < logits.nbytes, f"{peak / MIB:.1f} MiB"


def test_composite_in_bands_equals_the_whole_picture() -> None:
    rng = np.random.default_rng(4)
    background = rng.integers(0, 256, (301, 257, 3), dtype=np.uint8)
    index, opacity = rng.integers(0, 256, (2, 301, 257), dtype=np.uint8)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    whole = composite(background, index, opacity, palette, band_pixels=301 * 257)
    for band_pixels in (1, 1000, 257 * 7 + 3):
        banded = composite(background, index, opacity, palette, band_pixels=band_pixels)
        np.testing.assert_array_equal(banded, whole)
    weight = opacity[..., None].astype(int)
    drawn = (palette[index] * weight + background * (255 - weight)) / 255
    assert np.abs(whole - drawn).max() <= 0.5


def test_a_colour_layer_holds_its_heat_and_a_few_bands() -> None:
    side, cells = 3072, 190  # centres 16 px apart: the layer is computed at full resolution
    axis = np.linspace(24, side - 24, cells)
    centers = np.stack(np.meshgrid(axis, axis), -1)
    heat_cells = np.random.default_rng(5).random((cells, cells))
    layer, peak = peak_bytes(
        lambda: colour_layer(heat_cells, centers, (side, side), OpacityRule(0.5, "sqrt"))
    )
    assert isinstance(layer, ColourLayer) and layer.index.shape == (side, side)
    heat, levels = side * side * 4, 2 * side * side  # float32 heat; uint8 bins and opacities
    # Interpolating a band takes a few float64 arrays of it; colouring the whole picture at
    # once took its margin fade and several float32 temporaries the picture's size on top.
    assert peak < heat + levels + 6 * BAND_PIXELS * 8, f"{peak / MIB:.1f} MiB"
