"""GridEngine: what the command computes equals the library's reference, whatever it does for speed.

The engine runs its network in channels_last, folds batch norms into convolutions for untiled
passes and can compile; none of that may change a grid beyond float rounding, nor touch the
values of the caller's model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from heatmap_cli import score_grid
from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.grid.dilate import DilatedNet
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.models import LoadedModel
from heatmap_cli.pipeline.engine import GridEngine, GridSettings, Tiling
from heatmap_cli.pipeline.preprocess import plan_geometry, resize_for_grid
from tests.helpers.nets import ALL_NETS, NATIVE_STRIDE, WINDOW, PooledHeadNet, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded

SAMPLES = Path(__file__).resolve().parents[2] / "sample_images"
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def loaded(model: nn.Module) -> LoadedModel:
    return as_loaded(model, window=WINDOW, name="net", mean=MEAN, std=STD)


def random_pixels(batch: int, rows: int, cols: int) -> np.ndarray:
    """uint8 ``(batch, H, W, 3)`` giving a ``rows x cols`` grid at the native stride."""
    height, width = WINDOW[0] + NATIVE_STRIDE * (rows - 1), WINDOW[1] + NATIVE_STRIDE * (cols - 1)
    return np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("net_class", ALL_NETS)
def test_engine_grids_equal_crops_on_padding_free_nets(net_class) -> None:
    model = seeded(net_class)
    reference = copy.deepcopy(model)
    engine = GridEngine(loaded(model), GridSettings(device="cpu", method="dense"))
    pixels = random_pixels(3, 4, 6)
    grid = engine.score(pixels)
    crops = score_grid(reference, normalize(pixels, MEAN, STD), method="crops", input_size=WINDOW)
    assert grid.shape == crops.shape == (3, 10, 4, 6)
    assert (grid - crops).abs().max().item() < 1e-5


@pytest.mark.parametrize(("method", "stride"), [("dilate", 4), ("stitch", 2), ("crops", 4)])
def test_engine_grids_at_finer_strides_equal_crops(method: str, stride: int) -> None:
    model = seeded(VolumeHeadNet)
    reference = copy.deepcopy(model)
    settings = GridSettings(device="cpu", method=method, stride=stride)
    engine = GridEngine(loaded(model), settings)
    # the folded copy is what gets dilated or stitched; crops run the classifier, folded too
    assert engine.folded_norms == 1
    pixels = random_pixels(2, 3, 4)
    grid = engine.score(pixels)
    x = normalize(pixels, MEAN, STD)
    crops = score_grid(reference, x, stride=stride, method="crops", input_size=WINDOW)
    assert grid.shape == crops.shape
    assert (grid - crops).abs().max().item() < 1e-5


def test_batch_norms_after_convolutions_are_folded() -> None:
    # the padding-free body has one Conv2d -> BatchNorm2d pair; the pooled head's BatchNorm1d
    # is applied per position and has no convolution of its own before it
    assert GridEngine(loaded(seeded(VolumeHeadNet)), GridSettings(device="cpu")).folded_norms == 1
    assert GridEngine(loaded(seeded(PooledHeadNet)), GridSettings(device="cpu")).folded_norms == 1
    unfoldable = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    plain = nn.Sequential(unfoldable, nn.Flatten(), nn.Linear(4, 10)).eval()
    assert GridEngine(loaded(plain), GridSettings(device="cpu")).folded_norms == 0


def test_the_callers_model_keeps_its_values() -> None:
    model = seeded(VolumeHeadNet)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = GridEngine(loaded(model), GridSettings(device="cpu"))
    engine.score(random_pixels(1, 2, 3))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_pretrained_default_model_engine_equals_score_grid_on_the_model(pretrained) -> None:
    engine = GridEngine(pretrained, GridSettings(device="cpu", size=288, method="dense"))
    assert engine.folded_norms > 0
    with Image.open(SAMPLES / "chelsea.jpg") as photo:
        image = photo.convert("RGB")
    geometry = plan_geometry(
        (image.height, image.width), shorter_side=288, window=pretrained.input_size, stride=32
    )
    pixels = resize_for_grid(image, geometry.input_size, pretrained.interpolation)[None]
    grid = engine.score(pixels)
    x = normalize(pixels, pretrained.mean, pretrained.std)
    expected = score_grid(pretrained.model, x, method="dense", input_size=pretrained.input_size)
    assert grid.shape == expected.shape
    spread = (expected.max() - expected.min()).item()
    assert (grid - expected).abs().max().item() < 1e-4 * spread


def test_pretrained_default_model_dilates_its_folded_copy(pretrained) -> None:
    engine = GridEngine(
        pretrained, GridSettings(device="cpu", size=256, stride=16, method="dilate")
    )
    assert engine.folded_norms > 0
    assert isinstance(engine.network, DilatedNet)  # folding left nothing dilation cannot read
    assert engine.notes == []
    pixels = np.random.default_rng(1).integers(0, 256, (1, 256, 288, 3), dtype=np.uint8)
    grid = engine.score(pixels)
    x = normalize(pixels, pretrained.mean, pretrained.std)
    expected = score_grid(pretrained.model, x, stride=16, method="dilate", input_size=(224, 224))
    assert grid.shape == expected.shape == (1, 1000, 3, 5)
    spread = (expected.max() - expected.min()).item()
    assert (grid - expected).abs().max().item() < 1e-4 * spread


def test_tiled_batches_say_how_they_were_tiled() -> None:
    model = seeded(VolumeHeadNet)
    whole = GridEngine(loaded(model), GridSettings(device="cpu", method="dense"))
    settings = GridSettings(device="cpu", tile=60, method="dense")
    tiled = GridEngine(loaded(copy.deepcopy(model)), settings)
    pixels = random_pixels(2, 8, 9)  # 100 x 108 pixels: more than one 60-pixel tile each way
    grid, tiling, exact, _ = whole.score_batch(pixels)
    tiled_grid, tiled_tiling, _, _ = tiled.score_batch(pixels)
    assert exact.shape == (2, *grid.shape[2:]) and not exact.any()
    assert tiling == Tiling() and not tiling.tiled
    assert tiled_tiling.tiled and tiled_tiling.tile == 60 and tiled_tiling.tiles >= 4
    assert (grid - tiled_grid).abs().max().item() < 1e-5


def test_plan_scales_the_shorter_side() -> None:
    engine = GridEngine(loaded(seeded(VolumeHeadNet)), GridSettings(device="cpu", size=60))
    assert engine.plan((90, 120)) == engine.plan((90, 120), 1.0)
    assert engine.plan((90, 120), 2.0) == plan_geometry(
        (90, 120), shorter_side=120, window=WINDOW, stride=NATIVE_STRIDE
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (GridSettings(device="cpu", method="fast"), "unknown method 'fast'"),
        (GridSettings(device="cpu", batch_size=0), "batch size must be positive"),
        (GridSettings(device="floppy"), "unknown device 'floppy'"),
    ],
)
def test_bad_settings_are_invalid_options(settings: GridSettings, message: str) -> None:
    with pytest.raises(InvalidOptionError, match=message):
        GridEngine(loaded(seeded(VolumeHeadNet)), settings)
