"""The notebook API gives the command's numbers and pictures, for the same options, bit for bit.

The reference is the command itself with its default fidelity check, run in-process into a
folder: its npz (logits, probs, centres, window, stride), its json (the ranking, the fidelity
check, the exact peaks) and its PNG overlays, whose labels carry exact values
(``tests.helpers.api``). The API scores the same photo, from its path, as a Pillow image and as
an array, and must equal every one of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import heatmap_cli as hm
from heatmap_cli.api import HeatmapModel, ScoreMap
from heatmap_cli.errors import (
    ImageReadError,
    InvalidOptionError,
    LabelsFileError,
    TrainingModeError,
    UnknownClassError,
)
from tests.helpers.api import assert_same_as_command, command_outputs
from tests.helpers.cli import CATEGORIES, SAMPLES, TinyNet, save_photo

# --- The shipped default model ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        (("--method", "dense"), {"method": "dense"}),
        (("--stride", 16, "--method", "dilate"), {"stride": 16, "method": "dilate"}),
    ],
    ids=["dense", "dilate-16"],
)
def test_the_default_model_gives_the_commands_npz_json_and_pictures(
    pretrained, tmp_path, options, settings
):
    photo = SAMPLES / "coffee.jpg"
    arrays, record, out = command_outputs(photo, tmp_path / "out", "--size", 384, *options)
    mapper = HeatmapModel(pretrained, size=384, device="cpu", **settings)
    assert (mapper.method, mapper.stride) == (record["method"], record["stride"])
    with pytest.warns(UserWarning, match="coffee.jpg: the map departs from the classifier"):
        from_path = mapper(photo)  # the command's note, as a warning
    assert_same_as_command(from_path, arrays, record, out)
    with Image.open(photo) as opened, pytest.warns(UserWarning, match=r"<image \d>: the map"):
        from_pil, from_array = mapper([opened, np.asarray(opened.convert("RGB"))])
    for score_map in (from_pil, from_array):
        assert np.array_equal(score_map.logits, from_path.logits)
        assert np.array_equal(score_map.centers, from_path.centers)


def test_the_default_model_by_name_and_its_ranking_in_a_notebook(pretrained):
    model = hm.load_model()  # the same model as the command's default
    assert model.categories == pretrained.categories
    assert (model.input_size, model.mean, model.interpolation) == (
        pretrained.input_size,
        pretrained.mean,
        pretrained.interpolation,
    )
    mapper = hm.HeatmapModel(pretrained, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the map's fidelity note: not what is tested here
        espresso = mapper(SAMPLES / "coffee.jpg")
    index, name, score = espresso.top(1)[0]
    assert name == "espresso" and espresso.index("espresso") == index == 967
    assert score == pytest.approx(float(espresso.probs[index].max()))
    assert espresso.overlay("Espresso").size == (600, 400)  # a name in any case
    assert "espresso" in repr(espresso) and "6x12 grid" in repr(espresso)


# --- A served tiny model: every option the API passes on --------------------------------------


@pytest.mark.parametrize(
    ("options", "settings", "look"),
    [
        ((), {}, {}),
        (("--scales", "1,1.5", "--flip"), {"scales": (1, 1.5), "flip": True}, {}),
        (("--stride", 4, "--method", "stitch"), {"stride": 4, "method": "stitch"}, {}),
        (("--stride", 2), {"stride": 2}, {}),
        (("--method", "crops", "--stride", 4), {"method": "crops", "stride": 4}, {}),
        (
            ("--cmap", "viridis", "--label", "corner", "--colorbar", "--scale", "per-class"),
            {},
            {"cmap": "viridis", "label": "corner", "colorbar": True, "scale": "per-class"},
        ),
        (
            ("--scores", "logits", "--cmap", "RdBu_r", "--alpha", 0.7, "--top-k", 2),
            {},
            {"scores": "logits", "cmap": "RdBu_r", "alpha": 0.7},
        ),
        (("--class", "espresso", "--class", 1, "--vmax", 0.5), {}, {"vmax": 0.5}),
        (("--pooling", "mean", "--top-k", 4, "--label", "none"), {}, {"label": "none"}),
    ],
    ids=["plain", "scales-flip", "stitch-4", "dilate-2", "crops-4", "look", "logits",
         "classes-vmax", "mean-pooling"],
)  # fmt: skip
def test_a_served_model_gives_the_commands_outputs(tiny, tmp_path, options, settings, look):
    photo = save_photo(tmp_path / "photo.png", size=(80, 60))
    arrays, record, out = command_outputs(
        photo, tmp_path / "out", "--model", "tiny", "--size", 48, *options
    )
    mapper = HeatmapModel("tiny", size=48, device="cpu", **settings)
    assert_same_as_command(mapper(photo), arrays, record, out, **look)


def test_a_module_in_hand_gives_what_the_served_model_gives(tiny, tmp_path):
    photo = save_photo(tmp_path / "photo.png", size=(80, 60))
    served = HeatmapModel("tiny", size=48, device="cpu")(photo)
    torch.manual_seed(0)  # tiny_model's seed: the same weights
    module = TinyNet(len(CATEGORIES)).eval()
    mapper = HeatmapModel(
        module, size=48, device="cpu", input_size=32, categories=CATEGORIES,
        mean=(0.5, 0.5, 0.5), std="0.25,0.25,0.25",
    )  # fmt: skip
    assert mapper.class_names == CATEGORIES and mapper.window == (32, 32)
    assert np.array_equal(mapper(photo).logits, served.logits)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CATEGORIES))
    assert HeatmapModel(module, input_size=(32, 32), categories=labels).class_names == CATEGORIES


def test_a_module_without_a_recorded_window_assumes_224_and_says_so():
    module = TinyNet(3).eval()
    with pytest.warns(UserWarning, match="records no input size; assuming 224x224"):
        mapper = HeatmapModel(module, device="cpu")
    assert mapper.window == (224, 224) and mapper.class_names == ("class 0", "class 1", "class 2")
    assert any("input_size" in note for note in mapper.notes)


def test_a_timm_module_brings_its_window_names_and_normalization():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "resnet10t", pretrained=False, pretrained_cfg_overlay={"input_size": (3, 96, 96)}
    ).eval()
    mapper = HeatmapModel(model, size=128, device="cpu")
    assert mapper.window == (96, 96)
    assert mapper.class_names[:2] == ("tench", "goldfish")
    assert mapper.loaded.mean == pytest.approx(model.pretrained_cfg["mean"])
    pixels = np.random.default_rng(0).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    assert mapper(pixels).probs.shape == (1000, 2, 3)


# --- What goes in, what goes wrong ----------------------------------------------------------------


def test_lists_stacks_and_map_keep_the_order_given(tiny, tmp_path):
    mapper = HeatmapModel("tiny", size=48, device="cpu", batch_size=2)
    rng = np.random.default_rng(1)
    arrays = [rng.integers(0, 256, (40 + 8 * i, 60, 3), dtype=np.uint8) for i in range(5)]
    arrays += arrays[:2]  # equal sizes are batched together, so results come out of order
    one_by_one = [mapper(a).logits for a in arrays]

    def same(maps: list[ScoreMap]) -> bool:  # a batch of two rounds like one alone, or nearly
        pairs = zip(maps, one_by_one, strict=True)
        return all(np.allclose(s.logits, e, rtol=0, atol=1e-5) for s, e in pairs)

    together = mapper(arrays)
    assert [s.name for s in together] == [f"<image {i}>" for i in range(7)]
    assert same(together)
    assert same(list(mapper.map(arrays)))
    stack = np.stack([arrays[0], arrays[0]])
    assert [s.logits.shape for s in mapper(stack)] == [one_by_one[0].shape] * 2
    grey = mapper(arrays[0][..., 0])  # (H, W): grey as RGB
    assert np.array_equal(grey.photo[..., 1], arrays[0][..., 0])


def test_a_bad_image_raises_its_own_error_or_takes_its_place(tiny, tmp_path):
    mapper = HeatmapModel("tiny", size=48, device="cpu")
    good = np.zeros((40, 40, 3), dtype=np.uint8)
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageReadError, match=r"missing\.jpg"):
        mapper(missing)
    with pytest.raises(ImageReadError, match=r"uint8 \(H, W, 3\) RGB, got float32 \(3, 40, 40\)"):
        mapper(np.zeros((3, 40, 40), dtype=np.float32))
    results = mapper([good, missing, good], errors="return")
    assert isinstance(results[1], ImageReadError)
    assert isinstance(results[0], ScoreMap) and isinstance(results[2], ScoreMap)
    mapped = mapper.map([good, missing, good])
    assert isinstance(next(mapped), ScoreMap)  # the images before the bad one are not lost
    with pytest.raises(ImageReadError):
        next(mapped)
    with pytest.raises(TypeError, match="a file path, a PIL image or a uint8"):
        mapper(42)


def test_what_cannot_work_is_refused_before_any_image(tiny):
    with pytest.raises(TypeError, match=r"unknown keyword.*tiles"):
        HeatmapModel("tiny", tiles=3)
    with pytest.raises(LabelsFileError, match="names 2 classes, but the model has 6"):
        HeatmapModel("tiny", categories=["a", "b"])
    training = TinyNet(3).train()
    with pytest.raises(TrainingModeError, match=r"model\.eval"):
        HeatmapModel(training, input_size=32)
    assert training.training  # never switched by the API
    score_map = HeatmapModel("tiny", size=48, device="cpu")(np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(UnknownClassError, match="no class named 'latte'"):
        score_map.overlay("latte")
    with pytest.raises(InvalidOptionError, match="unknown colormap"):
        score_map.overlay(0, cmap="nope")


def test_load_model_takes_what_the_commands_options_take(tiny, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([f"kind {i}" for i in range(6)]))
    by_text = hm.load_model("tiny", labels=str(labels), input_size="40,48", mean="0.1,0.2,0.3")
    by_value = hm.load_model("tiny", labels=labels, input_size=(40, 48), mean=(0.1, 0.2, 0.3))
    for loaded in (by_text, by_value):
        assert loaded.categories[0] == "kind 0" and loaded.input_size == (40, 48)
        assert loaded.mean == (0.1, 0.2, 0.3)
    assert hm.load_model("tiny", input_size=36).input_size == (36, 36)
    with pytest.raises(InvalidOptionError, match="std must be three positive numbers"):
        hm.load_model("tiny", std=(1, 0, 1))


def test_the_api_is_reached_lazily_from_the_package():
    names = {"load_model", "HeatmapModel", "ScoreMap", "convolutionalize", "score_grid"}
    assert names <= set(dir(hm)) and hm.HeatmapModel is HeatmapModel
    code = "import sys, heatmap_cli; print('torch' in sys.modules)"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert shown.stdout.strip() == "False", shown.stderr


def test_notes_about_an_image_come_as_warnings_and_stay_on_its_map(tiny):
    mapper = HeatmapModel("tiny", size=48, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = mapper(np.zeros((20, 24, 3), dtype=np.uint8))
    assert any("smaller than the network's 32x32 window" in note for note in small.notes)
    assert any("<image 0>: 24x20 is smaller" in str(w.message) for w in caught)
