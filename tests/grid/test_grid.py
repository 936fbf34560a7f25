"""score_grid: dense equals crops where it must, geometry and order of cells, the registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.errors import GeometryError, InvalidOptionError
from heatmap_cli.grid import (
    GridMethod,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from heatmap_cli.grid.dense import dense_grid
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.io import read_image
from heatmap_cli.pipeline.engine import GridEngine, GridSettings, method_choices
from heatmap_cli.pipeline.preprocess import plan_geometry, resize_for_grid
from tests.helpers.nets import NATIVE_STRIDE, NUM_CLASSES, WINDOW, VolumeHeadNet, seeded
from tests.helpers.toy_method import MIRROR, Mirrored
from tests.helpers.toys import as_loaded

SAMPLES = Path(__file__).resolve().parents[2] / "sample_images"


def test_a_converted_net_can_be_passed_instead_of_the_model():
    model = seeded(VolumeHeadNet)
    net = convolutionalize(model, WINDOW)
    x = torch.randn(1, 3, WINDOW[0] + 16, WINDOW[1] + 16)
    assert torch.equal(
        score_grid(net, x, input_size=WINDOW), score_grid(model, x, input_size=WINDOW)
    )
    crops = score_grid(net, x, method="crops", input_size=WINDOW)
    assert (crops - score_grid(model, x, method="crops", input_size=WINDOW)).abs().max() == 0


def test_input_smaller_than_window():
    with pytest.raises(GeometryError, match="smaller than the 44x44 window"):
        score_grid(seeded(VolumeHeadNet), torch.randn(1, 3, 40, 60), input_size=WINDOW)


def test_unknown_method_names_the_choices():
    with pytest.raises(InvalidOptionError, match="unknown method 'magic'; choose from dense, "):
        score_grid(
            seeded(VolumeHeadNet), torch.randn(1, 3, 44, 44), method="magic", input_size=WINDOW
        )


def test_padded_real_net_dense_and_crops_differ_in_logits_and_agree_in_top1(pretrained):
    loaded = pretrained  # the shipped pretrained default model: padded, real photos
    image = read_image(SAMPLES / "coffee.jpg")
    geometry = plan_geometry(
        (image.height, image.width), shorter_side=288, window=loaded.input_size, stride=32
    )
    pixels = resize_for_grid(image, geometry.input_size, loaded.interpolation)
    x = normalize(pixels, loaded.mean, loaded.std)
    net = convolutionalize(loaded.model, loaded.input_size)
    dense = score_grid(net, x, input_size=loaded.input_size)
    crops = score_grid(net, x, method="crops", input_size=loaded.input_size)
    assert dense.shape == crops.shape == (1, 1000, *geometry.shape)
    # zero padding: the dense pass sees real neighbours where a crop sees zeros ...
    spread = (crops.max() - crops.min()).item()
    assert (dense - crops).abs().max().item() > 0.05 * spread  # measured: 30 %
    # ... but the class each window shows is the same
    agreement = (dense.argmax(1) == crops.argmax(1)).float().mean().item()
    assert agreement >= 0.9  # measured: 100 % of 21 cells (83 % on chelsea at 256: 3 cats)


# --- The method registry ------------------------------------------------------------------------


def test_the_built_in_methods_are_registered_in_order():
    assert method_names()[:4] == ("dense", "stitch", "dilate", "crops")
    for name in ("dense", "stitch", "dilate"):  # one network each: tiled, folded, compiled
        method = get_method(name)
        assert method.build and method.needs_converted and method.tileable and method.folds_norms
    crops = get_method("crops")  # the unmodified model, window by window
    assert crops.build is None and not crops.needs_converted and crops.strides == "any"
    assert all(get_method(name).description for name in method_names())


def test_a_name_cannot_be_registered_twice():
    dense = get_method("dense")
    assert register_method(dense) is dense  # the same object again: nothing changes
    with pytest.raises(InvalidOptionError, match="'dense' already exists"):
        register_method(GridMethod("dense", "another", dense_grid))
    with pytest.raises(InvalidOptionError, match="'auto' is reserved"):
        register_method(GridMethod("auto", "the command's own choice", dense_grid))


@pytest.mark.parametrize(
    ("name", "stride", "expected"),
    [
        ("dense", None, 32),
        ("dense", 32, 32),
        ("dense", 16, "runs at the native stride 32; for stride 16 use method='stitch' or "),
        ("dense", 12, "valid strides: 32, 16, 8, 4, 2, 1"),
        ("stitch", 8, 8),
        ("dilate", 3, "stride 3 does not divide the network's native stride 32"),
        ("crops", None, 32),
        ("crops", 7, 7),
        ("crops", 0, "stride must be positive, got 0"),
    ],
)
def test_each_method_says_which_strides_it_accepts(name, stride, expected):
    method = get_method(name)
    if isinstance(expected, int):
        assert method.resolve_stride(stride, 32) == expected
    else:
        with pytest.raises(GeometryError, match=expected):
            method.resolve_stride(stride, 32)


@pytest.fixture
def mirror_method():
    """The toy method of tests/toy_method.py, registered with its one line for one test."""
    register_method(MIRROR)
    yield MIRROR
    unregister_method(MIRROR.name)


def test_a_registered_toy_method_runs_through_score_grid_and_the_engine(mirror_method):
    # tests/toy_method.py: one new file, and one register_method line; nothing else changed
    assert get_method("mirror") is mirror_method
    assert "mirror" in method_choices()  # what --method offers
    model = seeded(VolumeHeadNet)
    x = torch.randn(2, 3, WINDOW[0] + NATIVE_STRIDE * 3, WINDOW[1] + NATIVE_STRIDE * 5)
    grid = score_grid(model, x, method="mirror", input_size=WINDOW)
    mirrored = score_grid(model, x.flip(3), input_size=WINDOW).flip(3)
    assert grid.shape == (2, NUM_CLASSES, 4, 6)
    assert (grid - mirrored).abs().max().item() < 1e-5
    assert (grid - score_grid(model, x, input_size=WINDOW)).abs().max().item() > 1e-2

    with pytest.raises(GeometryError, match="method 'mirror' runs at the native stride 8"):
        GridEngine(_loaded(model), GridSettings(device="cpu", method="mirror", stride=4))
    settings = GridSettings(device="cpu", method="mirror")
    engine = GridEngine(_loaded(model), settings)
    assert (engine.method, engine.stride) == ("mirror", NATIVE_STRIDE)
    assert isinstance(engine.network, Mirrored)
    assert engine.folded_norms == 1  # the method asked for folded batch norms
    assert engine.tile_for((WINDOW[0] + 800, WINDOW[1] + 800)) is None  # and for no tiles
    pixels = np.random.default_rng(0).integers(0, 256, (2, 68, 84, 3), dtype=np.uint8)
    expected = score_grid(model, normalize(pixels, MEAN, STD), method="mirror", input_size=WINDOW)
    got = engine.score(pixels)
    assert got.shape == expected.shape == (2, NUM_CLASSES, 4, 6)
    assert (got - expected).abs().max().item() < 1e-5


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def _loaded(model: torch.nn.Module):
    categories = [f"class {i}" for i in range(NUM_CLASSES)]
    return as_loaded(model, window=WINDOW, categories=categories, mean=MEAN, std=STD)
