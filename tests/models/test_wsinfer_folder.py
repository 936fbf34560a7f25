"""WSInfer model folders: config.json beside a TorchScript file, as WSInfer 0.6.1 reads them.

The folder must give what the same TorchScript file gives with the configuration's settings spelled
out as options (window, mean, std, class names), and the micrometres per pixel of the network's
input; a configuration WSInfer's schema refuses, or one that cannot run, gets one line that names
the file and the field.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image
from torch import fx

from heatmap_cli.cli.options import main
from heatmap_cli.errors import ModelFileError, UnknownModelError
from heatmap_cli.models import get_source, load_model
from heatmap_cli.models.wsinfer_folder import read_wsinfer_config
from tests.helpers.nets import NUM_CLASSES, WINDOW, PooledHeadNet, seeded

CLASSES = [f"tissue {k}" for k in range(NUM_CLASSES)]
MEAN, STD = [0.7238, 0.5716, 0.6779], [0.112, 0.1459, 0.1089]
# WSInfer's own test configuration (breast-tumor-resnet34.tcga-brca): 350 px at 0.25 um/px -> 224.
ZOO_CONFIG = {
    "spec_version": "1.0",
    "architecture": "resnet34",
    "num_classes": 2,
    "class_names": ["Other", "Tumor"],
    "patch_size_pixels": 350,
    "spacing_um_px": 0.25,
    "transform": [
        {"name": "Resize", "arguments": {"size": 224}},
        {"name": "ToTensor"},
        {"name": "Normalize", "arguments": {"mean": MEAN, "std": STD}},
    ],
}


def folder_config(**changes: object) -> dict:
    """A configuration for the padding-free test net: 88-px patches at 0.25 um/px -> 44 px."""
    config = copy.deepcopy(ZOO_CONFIG)
    config.update(
        architecture="pooled-head",
        num_classes=NUM_CLASSES,
        class_names=CLASSES,
        patch_size_pixels=2 * WINDOW[0],
    )
    config["transform"][0]["arguments"] = {"size": WINDOW[0]}
    config.update(changes)
    return config


def write_folder(folder: Path, config: dict, model_name: str = "torchscript_model.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(seeded(PooledHeadNet)), str(folder / model_name))
    return folder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("wsinfer") / "model", folder_config())


def test_a_folder_gives_the_configurations_classes_window_normalization_and_mpp(
    model_folder,
) -> None:
    loaded = load_model(str(model_folder))
    assert loaded.family == "wsinfer"
    assert isinstance(loaded.model, fx.GraphModule)  # converted: it runs dense
    assert loaded.categories == tuple(CLASSES)
    assert loaded.input_size == WINDOW
    assert loaded.mean == pytest.approx(MEAN)
    assert loaded.std == pytest.approx(STD)
    assert loaded.interpolation == "bilinear"
    assert loaded.mpp == pytest.approx(0.5)  # 88 px at 0.25 um/px seen as 44 px
    assert [(f.role, f.path.name) for f in loaded.files] == [
        ("config", "config.json"),
        ("model", "torchscript_model.pt"),
    ]
    assert loaded.notes == (
        f"{model_folder / 'config.json'}: WSInfer resizes 88-pixel patches at 0.25 um/px to 44 "
        "pixels: the model's window is 44 pixels at 0.5 um/px",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.load(str(model_folder / "torchscript_model.pt"))
    x = torch.randn(2, 3, *WINDOW)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), script(x), rtol=0, atol=1e-6)
    # The configuration file itself names the same model.
    assert load_model(str(model_folder / "config.json")).categories == tuple(CLASSES)


def test_the_zoo_configuration_reads_as_wsinfer_applies_it(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(ZOO_CONFIG), encoding="utf-8")
    config = read_wsinfer_config(path)
    assert config.window == (224, 224)
    assert config.mpp == pytest.approx(350 * 0.25 / 224)
    assert config.class_names == ("Other", "Tumor")
    assert config.architecture == "resnet34"
    # Without a Resize the patch is the window; without a Normalize the values stay in [0, 1].
    bare = dict(ZOO_CONFIG, transform=[{"name": "ToTensor"}])
    path.write_text(json.dumps(bare), encoding="utf-8")
    config = read_wsinfer_config(path)
    assert (config.window, config.mpp) == ((350, 350), 0.25)
    assert (config.mean, config.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    # torchvision's Resize takes PIL's filter numbers: 3 is bicubic.
    resize = {"name": "Resize", "arguments": {"size": [224, 224], "interpolation": 3}}
    path.write_text(json.dumps(dict(bare, transform=[resize, {"name": "ToTensor"}])), "utf-8")
    assert read_wsinfer_config(path).interpolation == "bicubic"


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args] + ["--device", "cpu", "-q"])


def test_the_command_scores_as_with_the_settings_spelled_out(model_folder, tmp_path) -> None:
    photo = tmp_path / "slide-region.png"
    pixels = np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photo)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    common = ("--size", "native", "--outputs", "npz,json", "--method", "dense")  # converted
    folder_run = run(photo, "--model", model_folder, *common, "--out", tmp_path / "folder")
    assert folder_run.exit_code == 0, folder_run.output
    spelled = run(
        photo, "--model", model_folder / "torchscript_model.pt", *common,
        "--input-size", WINDOW[0], "--labels", labels,
        "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
        "--out", tmp_path / "spelled",
    )  # fmt: skip
    assert spelled.exit_code == 0, spelled.output
    with (
        np.load(tmp_path / "folder" / "slide-region.npz") as a,
        np.load(tmp_path / "spelled" / "slide-region.npz") as b,
    ):
        np.testing.assert_array_equal(a["logits"], b["logits"])
        assert list(a["classes"]) == CLASSES
    record = json.loads((tmp_path / "folder" / "slide-region.json").read_text())
    assert record["method"] == "dense"
    assert set(record["settings"]["model_files"]) == {"config", "model"}


def broken(path: Path, change: dict | None = None, drop: str | None = None) -> Path:
    config = folder_config(**(change or {}))
    if drop is not None:
        del config[drop]
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


BAD_CONFIGS = {
    "no num_classes": ({}, "num_classes", "no 'num_classes'"),
    "zero classes": ({"num_classes": 0}, None, "'num_classes' must be a whole number >= 1"),
    "names of another count": (
        {"class_names": ["a", "b"]}, None, "'class_names' has 2 names for num_classes 10",
    ),
    "a name twice": ({"class_names": ["a"] * 10}, None, "'class_names' names a class twice"),
    "no spacing": ({}, "spacing_um_px", "no 'spacing_um_px'"),
    "zero spacing": ({"spacing_um_px": 0}, None, "'spacing_um_px' must be a number > 0, got 0"),
    "a patch size in text": (
        {"patch_size_pixels": "88"}, None, "'patch_size_pixels' must be a whole number",
    ),
    "a crop WSInfer does not know": (
        {"transform": [{"name": "CenterCrop"}, {"name": "ToTensor"}]}, None,
        "is not one of WSInfer's (Resize, ToTensor, Normalize)",
    ),
    "no ToTensor": ({"transform": []}, None, "the transform has no ToTensor"),
    "normalized first": (
        {"transform": [{"name": "Normalize", "arguments": {"mean": MEAN, "std": STD}},
                       {"name": "ToTensor"}]},
        None, "the transform normalizes before ToTensor",
    ),
    "a stretching resize": (
        {"transform": [{"name": "Resize", "arguments": {"size": [44, 66]}}, {"name": "ToTensor"}]},
        None, "Resize to 44x66 stretches the square patches",
    ),
    "an unknown resize argument": (
        {"transform": [{"name": "Resize", "arguments": {"size": 44, "fill": 1}}]}, None,
        "Resize has arguments not supported here: ['fill']",
    ),
    "a lanczos resize": (
        {"transform": [{"name": "Resize", "arguments": {"size": 44, "interpolation": 1}},
                       {"name": "ToTensor"}]}, None,
        "Resize's interpolation 1 is not supported here",
    ),
    "two means": (
        {"transform": [{"name": "ToTensor"},
                       {"name": "Normalize", "arguments": {"mean": [0.5, 0.5], "std": STD}}]},
        None, "Normalize's mean must be three numbers",
    ),
    "a zero std": (
        {"transform": [{"name": "ToTensor"},
                       {"name": "Normalize", "arguments": {"mean": MEAN, "std": [1, 0, 1]}}]},
        None, "Normalize's std must be positive",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("change", "drop", "message"), BAD_CONFIGS.values(), ids=BAD_CONFIGS)
def test_configurations_that_cannot_run_are_named(tmp_path, change, drop, message) -> None:
    path = broken(tmp_path / "config.json", change, drop)
    with pytest.raises(ModelFileError) as excinfo:
        read_wsinfer_config(path)
    assert str(excinfo.value).startswith(f"{path}: ")
    assert message in str(excinfo.value)


def test_files_that_are_not_configurations(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelFileError, match="cannot be read as JSON"):
        read_wsinfer_config(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ModelFileError, match="not a WSInfer model configuration"):
        read_wsinfer_config(path)


def test_folders_that_are_not_model_folders(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_source(str(empty)).family == "wsinfer"
    with pytest.raises(ModelFileError, match=r"empty: no config.json in it; a model folder is"):
        load_model(str(empty))
    with pytest.raises(ModelFileError, match=r"gone: no such folder"):
        load_model(str(tmp_path / "gone") + "/")
    with pytest.raises(UnknownModelError):  # not spelled as a folder: an unknown name
        load_model(str(tmp_path / "gone"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "config.json").write_text(json.dumps(folder_config()), encoding="utf-8")
    with pytest.raises(ModelFileError, match=r"no TorchScript file beside config\.json"):
        load_model(str(lonely))


def test_a_folder_whose_parts_disagree(tmp_path, model_folder) -> None:
    # The TorchScript under another name is found when it is the only one.
    renamed = write_folder(tmp_path / "renamed", folder_config(), model_name="model.pt")
    assert load_model(str(renamed)).files[1].path.name == "model.pt"
    write_folder(renamed, folder_config(), model_name="other.pt")
    with pytest.raises(ModelFileError, match=r"several TorchScript files \(model.pt, other.pt\)"):
        load_model(str(renamed))
    three = write_folder(
        tmp_path / "three", folder_config(num_classes=3, class_names=["a", "b", "c"])
    )
    with pytest.raises(ModelFileError) as excinfo:
        load_model(str(three))
    assert str(excinfo.value) == (
        f"{three / 'torchscript_model.pt'}: returns 10 scores per patch, but "
        f"{three / 'config.json'} names 3 classes"
    )
    with pytest.raises(ModelFileError, match="a WSInfer model folder holds its weights"):
        load_model(str(model_folder), weights=model_folder / "torchscript_model.pt")


def test_the_command_names_a_broken_folder_in_one_line(tmp_path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    broken(folder / "config.json", {"spacing_um_px": -1})
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    result = run(photo, "--model", folder, "--out", tmp_path / "out")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"Error: {folder / 'config.json'}: 'spacing_um_px' must be a number > 0, got -1"
    ]
