"""Fine-tuned checkpoints: any number of classes, any wrapper and key prefix, labels, preprocessing.

Every checkpoint here is made in the test from seeded random weights; the loaded model must
compute exactly what the model that was saved computes.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from heatmap_cli.errors import InvalidOptionError, LabelsFileError, WeightsMismatchError
from heatmap_cli.models import (
    DEFAULT_MODEL,
    imagenet_categories,
    load_model,
    parse_channels,
    parse_input_size,
)
from heatmap_cli.models.label_files import read_labels
from heatmap_cli.models.weights import file_sha256


def fine_tuned(arch: str = "resnet18", classes: int = 3, seed: int = 0) -> nn.Module:
    """A torchvision architecture with a new head of ``classes`` outputs, random weights."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchvision.models.get_model(arch, weights=None, num_classes=classes).eval()


def same_outputs(loaded: nn.Module, reference: nn.Module, size: int = 64) -> bool:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return torch.equal(loaded(x), reference(x))


# --- any number of classes ------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "classes"), [("resnet18", 3), ("squeezenet1_1", 4)])
def test_torchvision_file_sets_the_number_of_classes(arch: str, classes: int, tmp_path) -> None:
    reference = fine_tuned(arch, classes)
    path = tmp_path / "mine.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_model(arch, weights=path)
    assert loaded.num_classes == classes
    assert loaded.categories == tuple(f"class {i}" for i in range(classes))
    assert loaded.output == "logits"
    assert loaded.family == "torchvision"
    assert same_outputs(loaded.model, reference)
    assert [(f.role, f.path, f.sha256) for f in loaded.files] == [
        ("weights", path, file_sha256(path))
    ]


def test_googlenet_with_auxiliary_heads_of_its_own_classes(tmp_path) -> None:
    torch.manual_seed(0)
    net = torchvision.models.googlenet(
        num_classes=4, aux_logits=True, init_weights=False, transform_input=True
    )
    path = tmp_path / "googlenet.pth"
    torch.save(net.state_dict(), path)
    loaded = load_model("googlenet", weights=path)
    assert loaded.num_classes == 4
    assert loaded.model.aux1 is None
    assert same_outputs(loaded.model, net.eval(), size=224)


def test_timm_and_the_default_model_take_any_number_of_classes(tmp_path) -> None:
    torch.manual_seed(0)
    timm_model = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2).eval()
    for name, model in (("timm/resnet18", timm_model), (DEFAULT_MODEL, lite)):
        path = tmp_path / f"{model.num_classes}.pth"
        torch.save(model.state_dict(), path)
        loaded = load_model(name, weights=path)
        assert loaded.num_classes == model.num_classes
        assert loaded.categories[-1] == f"class {model.num_classes - 1}"
        assert same_outputs(loaded.model, model)


def test_a_classifier_that_fits_no_number_of_classes_is_explained(tmp_path) -> None:
    state_dict = fine_tuned().state_dict()
    state_dict["fc.weight"] = torch.zeros(3, 256)  # a head for another width of features
    path = tmp_path / "odd.pth"
    torch.save(state_dict, path)
    with pytest.raises(WeightsMismatchError) as excinfo:
        load_model("resnet18", weights=path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}: its classifier fits resnet18 for no number of classes")
    assert "fc.weight (3, 256) vs (1000, 512)" in message


# --- wrappers, prefixes, formats ------------------------------------------------------------


def lightning(state_dict: dict) -> dict:
    """A Lightning checkpoint of a module whose classifier is ``self.model``."""
    tensors = {f"model.{k}": v for k, v in state_dict.items()}
    tensors["criterion.weight"] = torch.ones(3)  # the loss's class weights, not the model's
    return {"epoch": 4, "global_step": 80, "state_dict": tensors, "hyper_parameters": {"lr": 0.1}}


CHECKPOINTS = {
    "plain": (lambda sd: sd, None),
    "state_dict": (lambda sd: {"state_dict": sd, "epoch": 2}, "'state_dict'"),
    "model_state_dict": (lambda sd: {"model_state_dict": sd, "optimizer": {}}, None),
    "model": (lambda sd: {"model": sd}, "'model'"),
    "DataParallel": (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "'module.'"),
    "torch.compile": (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "'_orig_mod.'"),
    "both": (lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()}, "module._orig_mod."),
    "Lightning": (lightning, "ignored 1 other keys (criterion.weight)"),
}


@pytest.mark.parametrize("form", list(CHECKPOINTS))
def test_every_checkpoint_shape_gives_the_same_model(form: str, tmp_path) -> None:
    reference = fine_tuned()
    wrap, note = CHECKPOINTS[form]
    path = tmp_path / "checkpoint.ckpt"
    torch.save(wrap(reference.state_dict()), path)
    loaded = load_model("resnet18", weights=path)
    assert same_outputs(loaded.model, reference)
    wrapping = [text for text in loaded.notes if "records no input size" not in text]
    if note is None:
        assert all(str(path) not in text for text in wrapping) or form != "plain"
    else:
        assert any(note in text for text in loaded.notes), loaded.notes


def test_the_moving_average_is_preferred_where_present(tmp_path) -> None:
    trained, averaged = fine_tuned(seed=1), fine_tuned(seed=2)
    path = tmp_path / "timm_style.pth.tar"
    torch.save({"state_dict": trained.state_dict(), "state_dict_ema": averaged.state_dict()}, path)
    loaded = load_model("resnet18", weights=path)
    assert same_outputs(loaded.model, averaged)
    assert loaded.notes[0] == f"{path}: used the weights under 'state_dict_ema'"


def test_safetensors(tmp_path) -> None:
    from safetensors.torch import save_file

    reference = fine_tuned()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    assert same_outputs(load_model("resnet18", weights=path).model, reference)


def test_a_pickled_model_as_weights_needs_allow_pickle(tmp_path) -> None:
    reference = fine_tuned()
    path = tmp_path / "whole.pth"
    torch.save(reference, path)
    with pytest.raises(WeightsMismatchError) as excinfo:
        load_model("resnet18", weights=path)
    message = str(excinfo.value)
    assert "runs code stored in the file" in message
    assert "--allow-pickle" in message
    assert "\n" not in message
    assert same_outputs(load_model("resnet18", weights=path, allow_pickle=True).model, reference)


# --- labels ---------------------------------------------------------------------------------

NAMES = ("tumour", "stroma", "fat")


@pytest.mark.parametrize(
    ("filename", "content"),
    [
        ("labels.txt", "\ufefftumour\r\nstroma\r\n fat \n\n"),
        ("labels.json", json.dumps(list(NAMES))),
        ("labels.json", json.dumps({"2": "fat", "0": "tumour", "1": "stroma"})),
        ("index.json", json.dumps({str(i): [f"n{i:08d}", n] for i, n in enumerate(NAMES)})),
        ("names", json.dumps(list(NAMES))),
    ],
    ids=["txt with BOM and CRLF", "JSON list", "JSON object", "ImageNet index style", "no suffix"],
)
def test_labels_files(filename: str, content: str, tmp_path) -> None:
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    assert read_labels(path) == NAMES


def test_labels_name_the_classes_and_are_recorded(tmp_path) -> None:
    weights, labels = tmp_path / "mine.pth", tmp_path / "labels.txt"
    torch.save(fine_tuned().state_dict(), weights)
    labels.write_text("\n".join(NAMES), encoding="utf-8")
    loaded = load_model("resnet18", weights=weights, labels=labels)
    assert loaded.categories == NAMES
    assert loaded.files[-1].role == "labels"
    assert loaded.files[-1].sha256 == file_sha256(labels)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"tumour\nstroma\n", "has 2 names, but the model has 3 classes"),
        (b"tumour\n\nstroma\nfat\n", "line 2 is empty"),
        ("tumeur\nstroma\ngras\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        (b'{"0": "tumour", "2": "fat", "3": "x"}', "has no name for class index 1"),
        (b'["tumour", 3, "fat"]', "the name of class 1 is not a non-empty string"),
        (b"", "holds no names"),
    ],
    ids=["count", "empty line", "encoding", "JSON gap", "JSON number", "empty"],
)
def test_bad_labels_files_are_named(content: bytes, match: str, tmp_path) -> None:
    weights, labels = tmp_path / "mine.pth", tmp_path / "labels.txt"
    torch.save(fine_tuned().state_dict(), weights)
    labels.write_bytes(content)
    with pytest.raises(LabelsFileError, match=match) as excinfo:
        load_model("resnet18", weights=weights, labels=labels)
    assert str(excinfo.value).startswith(f"{labels}: ")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"0": "tumour", "1": "stroma", "2": "fat", "+1": "EVIL"}', "the key '\\+1' is not a"),
        (b'{"0": "tumour", "01": "EVIL", "1": "stroma", "2": "fat"}', "the key '01' is not a"),
        (b'{"0": "tumour", " 1": "EVIL", "1": "stroma", "2": "fat"}', "the key ' 1' is not a"),
        (b'{"0": "tumour", "1": "stroma", "2": "fat", "1": "EVIL"}', "names the key '1' twice"),
        (b'{"0": "tumour", "1.0": "stroma", "2": "fat"}', "the key '1.0' is not a"),
        (b'{"0": "tumour", "-0": "stroma", "2": "fat"}', "the key '-0' is not a"),
        ('{"0": "a", "\u0661": "b", "2": "c"}'.encode(), "is not a class index"),
    ],
    ids=["plus", "leading zero", "space", "twice", "float", "minus zero", "arabic digit"],
)
def test_a_json_index_written_twice_or_not_plainly_is_refused(
    content: bytes, match: str, tmp_path
) -> None:
    labels = tmp_path / "labels.json"
    labels.write_bytes(content)
    with pytest.raises(LabelsFileError, match=match) as excinfo:
        read_labels(labels)
    assert str(excinfo.value).startswith(f"{labels}: ")


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("labels.json", b'{"0": "a",\n "1": "b\\nc",\n "2": "d"}', "line 2: the name of class 1"),
        ("labels.json", b'["a", "b", "c\\rd"]', "line 1: the name of class 2"),
        ("labels.json", '["a",\n"b\u2028c", "d"]'.encode(), "line 2: the name of class 1"),
        ("labels.txt", b"a\nb\x0bc\nd\n", "line 2 holds a line break inside its name"),
        ("labels.txt", "a\nb\nc\x85d\n".encode(), "line 3 holds a line break"),
        ("labels.txt", "a\u2029b\nc\nd\n".encode(), "line 1 holds a line break"),
        ("labels.txt", b"a\nb\x1cc\nd\n", "line 2 holds a line break"),
    ],
    ids=["JSON \\n", "JSON \\r", "JSON U+2028", "VT", "NEL", "U+2029", "FS"],
)
def test_a_name_with_a_line_break_is_refused_naming_file_and_line(
    name: str, content: bytes, match: str, tmp_path
) -> None:
    labels = tmp_path / name
    labels.write_bytes(content)
    with pytest.raises(LabelsFileError, match=match) as excinfo:
        read_labels(labels)
    assert str(excinfo.value).startswith(f"{labels}: ")
    assert "a class name is one line" in str(excinfo.value)
    # blank space around a name is stripped; NUL, RTL marks, tabs, long names stay names
    odd = ("nul\x00inside", "\u202eRTL mark", "x" * 5000, "tab\tinside")
    text = json.dumps([f"{n}\r\n" for n in odd]) if name.endswith(".json") else "\n".join(odd)
    labels.write_text(text, encoding="utf-8")
    assert read_labels(labels) == odd


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("kind", ["FIFO", "device"])
def test_a_labels_path_that_is_not_a_file_is_refused_at_once(kind: str, tmp_path) -> None:
    path = Path("/dev/zero")
    if kind == "FIFO":
        path = tmp_path / "labels.txt"
        os.mkfifo(path)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_labels(path)
        except BaseException as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert outcome, "still reading: it waits on a FIFO or reads /dev/zero forever"
    assert isinstance(outcome[0], LabelsFileError)
    assert str(outcome[0]) == f"{path}: not a file (a {'FIFO' if kind == 'FIFO' else 'device'})"


def test_imagenet_names_stay_for_an_imagenet_head(tmp_path) -> None:
    path = tmp_path / "imagenet_head.pth"
    torch.save(fine_tuned(classes=1000).state_dict(), path)
    assert load_model("resnet18", weights=path).categories == imagenet_categories()


# --- the training size a checkpoint records ------------------------------------------------

RECORDED = {
    "Lightning img_size": ({"hyper_parameters": {"lr": 0.1, "img_size": 64}}, (64, 64)),
    "Lightning image_size H,W": ({"hyper_parameters": {"image_size": [80, 96]}}, (80, 96)),
    "datamodule": ({"datamodule_hyper_parameters": {"crop_size": 72}}, (72, 72)),
    "timm pretrained_cfg": ({"pretrained_cfg": {"input_size": (3, 96, 128)}}, (96, 128)),
    "top level": ({"input_size": [1, 112, 112]}, (112, 112)),
}


@pytest.mark.parametrize("form", list(RECORDED))
def test_a_checkpoint_that_records_its_size_runs_at_it(form: str, tmp_path) -> None:
    extra, size = RECORDED[form]
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": fine_tuned().state_dict(), **extra}, path)

    loaded = load_model("resnet18", weights=path)

    assert loaded.input_size == size
    (note,) = [text for text in loaded.notes if "input size" in text]
    assert note.startswith(f"{path}: input size {size[1]}x{size[0]}, from its ")
    assert load_model("resnet18", weights=path, input_size=(50, 60)).input_size == (50, 60)


@pytest.mark.parametrize(
    "extra",
    [{}, {"hyper_parameters": {"img_size": "big"}}, {"hyper_parameters": {"img_size": 0}}],
    ids=["none", "not a number", "zero"],
)
def test_a_checkpoint_without_a_size_says_the_window_is_assumed(extra: dict, tmp_path) -> None:
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": fine_tuned().state_dict(), **extra}, path)

    loaded = load_model("resnet18", weights=path)

    assert loaded.input_size == (224, 224)
    assert (
        f"{path} records no input size; assuming 224x224, resnet18's own (set --input-size "
        "to the size it was trained at)"
    ) in loaded.notes
    given = load_model("resnet18", weights=path, input_size=(64, 64))
    assert given.input_size == (64, 64)
    assert not any("input size" in text for text in given.notes)


def test_every_source_of_architectures_reads_the_recorded_size(tmp_path) -> None:
    torch.manual_seed(0)
    timm_model = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=2).eval()
    for name, model in (("timm/resnet18", timm_model), (DEFAULT_MODEL, lite)):
        path = tmp_path / f"{name.replace('/', '_')}.pth"
        recorded = {"pretrained_cfg": {"input_size": (3, 96, 96)}}
        torch.save({"model": model.state_dict(), **recorded}, path)
        assert load_model(name, weights=path).input_size == (96, 96), name
        plain = tmp_path / "plain.pth"
        torch.save(model.state_dict(), plain)
        loaded = load_model(name, weights=plain)
        assert loaded.input_size == (224, 224)
        assert any("records no input size" in text for text in loaded.notes), name


# --- preprocessing --------------------------------------------------------------------------


def test_window_mean_and_std_replace_the_metadata(tmp_path) -> None:
    path = tmp_path / "mine.pth"
    torch.save(fine_tuned().state_dict(), path)
    loaded = load_model(
        "resnet18", weights=path, input_size=(96, 128), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25)
    )
    assert loaded.input_size == (96, 128)
    assert loaded.mean == (0.5, 0.4, 0.3)
    assert loaded.std == (0.2, 0.2, 0.25)


def test_input_size_and_channel_spellings() -> None:
    assert parse_input_size("96") == (96, 96)
    assert parse_input_size(" 96, 128 ") == (96, 128)
    assert parse_channels("0.5,0.4,0.3", "--mean") == (0.5, 0.4, 0.3)
    assert parse_channels("-0.5,0,1e-3", "--mean") == (-0.5, 0.0, 0.001)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: parse_input_size("0"), "--input-size must be PIXELS or H,W"),
        (lambda: parse_input_size("224,224,3"), "--input-size must be PIXELS or H,W"),
        (lambda: parse_input_size("big"), "--input-size must be PIXELS or H,W"),
        (lambda: parse_channels("0.5,0.5", "--mean"), "--mean must be three numbers"),
        (lambda: parse_channels("a,b,c", "--mean"), "--mean must be three numbers"),
        (lambda: parse_channels("0.2,0,0.2", "--std", positive=True), "three positive numbers"),
        (lambda: parse_channels("0.2,nan,0.2", "--std", positive=True), "three positive numbers"),
        (lambda: load_model(DEFAULT_MODEL, std=(1.0, -1.0, 1.0)), "std must be three positive"),
    ],
)
def test_bad_preprocessing_is_named(call, match: str) -> None:
    with pytest.raises(InvalidOptionError, match=match):
        call()


def test_a_missing_labels_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(LabelsFileError, match="cannot be read"):
        read_labels(tmp_path / "nope.txt")
