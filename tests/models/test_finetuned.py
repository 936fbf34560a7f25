"""The command with classifiers fine-tuned elsewhere: the road a new user takes.

A ResNet-18 trained in the test on coloured squares (``tests/squares.py``) goes through
``heatmap`` as every kind of file a training script leaves behind; each class must peak where
its square is, and every file must give the same grid. Small own-code models check one-logit
(sigmoid) and softmax-ending heads; bad input must give one line and exit status 2.
"""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from heatmap_cli.cli.options import main
from heatmap_cli.models.weights import file_sha256
from heatmap_cli.pipeline.activations import sigmoid
from tests.helpers.squares import (
    NAMES,
    SQUARE_CELLS,
    WINDOW,
    squares_photo,
    train_square_classifier,
)


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args] + ["--device", "cpu", "-q"])


def grid(out: Path, stem: str = "photo") -> dict[str, np.ndarray]:
    with np.load(out / f"{stem}.npz") as data:
        return {key: data[key] for key in data.files}


def record(out: Path, stem: str = "photo") -> dict:
    return json.loads((out / f"{stem}.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """The square classifier, its plain state dict, labels and the photo, in one folder."""
    folder = tmp_path_factory.mktemp("finetuned")
    model = train_square_classifier()
    torch.save(model.state_dict(), folder / "plain.pth")
    (folder / "labels.txt").write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    squares_photo().save(folder / "photo.png")
    return model, folder


@pytest.fixture(scope="module")
def plain_runs(trained) -> dict[str, Path]:
    """The plain state dict through the command, dense (every other form must equal it)."""
    _, folder = trained
    outputs = {}
    for method in ("dense",):
        out = folder / f"plain-{method}"
        result = run(
            folder / "photo.png", "--model", "resnet18", "--weights", folder / "plain.pth",
            "--labels", folder / "labels.txt", "--input-size", WINDOW, "--size", "native",
            "--method", method, "--top-k", 3, "--out", out,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs[method] = out
    return outputs


def test_each_class_peaks_where_its_square_is(plain_runs) -> None:
    out = plain_runs["dense"]
    arrays, fields = grid(out), record(out)
    assert arrays["logits"].shape == (3, 3, 5)  # native size: 96 x 160 -> 3 x 5 windows of 32
    assert list(arrays["classes"]) == list(NAMES)
    for index, cell in enumerate(SQUARE_CELLS):
        logits = arrays["logits"][index]
        assert np.unravel_index(logits.argmax(), logits.shape) == cell, NAMES[index]
    assert {c["name"] for c in fields["classes"]} == set(NAMES)
    for name in NAMES:
        assert (out / f"photo_{NAMES.index(name)}_{name}.png").is_file()


def test_the_json_records_the_settings(trained, plain_runs) -> None:
    _, folder = trained
    fields = record(plain_runs["dense"])
    assert fields["activation"] == "softmax"
    assert fields["model_output"] == "logits"
    assert fields["size"] == "native"
    settings = fields["settings"]
    assert settings["model_source"] == "torchvision"
    assert settings["num_classes"] == 3
    assert settings["input_size"] == {"width": WINDOW, "height": WINDOW}
    assert settings["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert settings["activation"] == "auto"
    assert settings["model_files"] == {
        "weights": {"path": str(folder / "plain.pth"), "sha256": file_sha256(folder / "plain.pth")},
        "labels": {
            "path": str(folder / "labels.txt"),
            "sha256": file_sha256(folder / "labels.txt"),
        },
    }


def checkpoint_files(model: torch.nn.Module, folder: Path) -> dict[str, tuple[str, ...]]:
    """Every file a training script may leave; each maps to the command's model options."""
    from safetensors.torch import save_file

    state = model.state_dict()
    torch.save({"epoch": 9, "state_dict": state, "model_ema": state}, folder / "wrapped.pth")
    lightning = {"state_dict": {f"net.{k}": v for k, v in state.items()}, "epoch": 3}
    torch.save(lightning, folder / "lightning.ckpt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    torch.save(model, folder / "whole.pth")
    example = (torch.randn(1, 3, WINDOW, WINDOW),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, example), folder / "model.pt2")
        torch.jit.save(torch.jit.trace(model, example), folder / "traced.pt")
    arch = ("--model", "resnet18", "--input-size", str(WINDOW))
    return {
        "wrapped": (*arch, "--weights", str(folder / "wrapped.pth")),
        "prefixed (Lightning)": (*arch, "--weights", str(folder / "lightning.ckpt")),
        "safetensors": (*arch, "--weights", str(folder / "model.safetensors")),
        "opted-in pickle as weights": (
            *arch, "--weights", str(folder / "whole.pth"), "--allow-pickle",
        ),
        "opted-in pickle as the model": (
            "--model", str(folder / "whole.pth"), "--allow-pickle", "--input-size", str(WINDOW),
        ),
        "export archive": ("--model", str(folder / "model.pt2")),
        "TorchScript": ("--model", str(folder / "traced.pt"), "--input-size", str(WINDOW)),
    }  # fmt: skip


def test_every_checkpoint_shape_gives_the_same_grid(trained, plain_runs) -> None:
    model, folder = trained
    for form, options in checkpoint_files(model, folder).items():
        out = folder / form.replace(" ", "-")
        # --method dense needs a converted network (auto may pick crops for a small photo)
        args = (*options, "--size", "native", "--method", "dense", "--out", out)
        result = run(folder / "photo.png", *args)
        assert result.exit_code == 0, (form, result.output)
        fields = record(out)
        # TorchScript too: torch.export's converter makes it a graph, which runs dense.
        assert fields["method"] == "dense", form
        reference = grid(plain_runs["dense"])["logits"]
        np.testing.assert_allclose(grid(out)["logits"], reference, atol=2e-4, err_msg=form)
        assert "Falling back" not in result.stderr, form


ONE_LOGIT_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes: int = 1, softmax: bool = False) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.body = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.AvgPool2d(2))
            self.fc = nn.Linear(8, num_classes)
            self.softmax = softmax

        def forward(self, x):
            logits = self.fc(self.body(x).mean((2, 3)))
            return torch.softmax(logits, dim=-1) if self.softmax else logits

    def binary():
        return Net(1)

    def probabilities():
        return Net(4, softmax=True)

    def broken():
        raise RuntimeError("no GPU found")
    """
)


@pytest.fixture
def own_code(tmp_path: Path) -> tuple[Path, Path]:
    """A padding-free own-code model file (window 32, stride 8) and a photo."""
    code = tmp_path / "nets.py"
    code.write_text(ONE_LOGIT_CODE, encoding="utf-8")
    squares_photo().save(tmp_path / "photo.png")
    return code, tmp_path / "photo.png"


def test_a_one_logit_model_is_scored_with_a_sigmoid(own_code, tmp_path) -> None:
    code, photo = own_code
    result = run(photo, "--model", f"{code}:binary", "--input-size", 32, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    arrays, fields = grid(tmp_path / "o"), record(tmp_path / "o")
    assert arrays["probs"].shape[0] == 1
    np.testing.assert_array_equal(arrays["probs"], sigmoid(arrays["logits"]))
    assert not np.allclose(arrays["probs"], 1.0)  # what a softmax over one class would give
    assert (fields["activation"], fields["model_output"]) == ("sigmoid", "logits")


def test_a_softmax_ending_head_is_not_softmaxed_twice(own_code, tmp_path) -> None:
    code, photo = own_code
    runs = {}
    for method in ("dense", "crops"):
        out = tmp_path / method
        options = ("--input-size", 32, "--method", method, "--stride", 8, "--out", out)
        result = run(photo, "--model", f"{code}:probabilities", *options)
        assert result.exit_code == 0, result.output
        runs[method] = grid(out)
        assert (record(out)["activation"], record(out)["model_output"]) == ("none", "softmax")
    probs = runs["dense"]["probs"]
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, runs["crops"]["probs"], atol=1e-6)
    result = run(photo, "--model", f"{code}:probabilities", "--input-size", 32,
                 "--activation", "softmax", "--out", tmp_path / "twice")  # fmt: skip
    assert result.exit_code == 2
    assert "returns probabilities already" in result.stderr


def bad_inputs(folder: Path, code: Path) -> dict[str, tuple[tuple[object, ...], str]]:
    """Each case: the options, and what its one line must say."""
    odd = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(3, 7)}
    torch.save(odd, folder / "odd.pth")
    torch.save(torch.nn.Linear(2, 2), folder / "whole.pth")
    (folder / "short.txt").write_text("red\ngreen\n", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("rouge\nvert\nbleu\xe9\n".encode("latin-1"))
    (folder / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    weights = ("--model", "resnet18", "--weights", folder / "plain.pth")
    own = ("--model", f"{code}:binary", "--input-size", 32)
    return {
        "classifier fits no K": (
            ("--model", "resnet18", "--weights", folder / "odd.pth"),
            "odd.pth: ",
        ),
        "labels count": ((*weights, "--labels", folder / "short.txt"), "has 2 names"),
        "labels encoding": ((*weights, "--labels", folder / "latin1.txt"), "is not UTF-8"),
        "no such callable": (("--model", f"{code}:nothing"), "has no 'nothing'"),
        "no such module": (("--model", "nowhere.nets:build"), "no Python module 'nowhere.nets'"),
        "callable raises": (("--model", f"{code}:broken"), "calling it raised RuntimeError"),
        "not a module": (("--model", "builtins:dict"), "returned a dict, not a torch.nn.Module"),
        "corrupt model file": (("--model", folder / "broken.pt"), "broken.pt: not a TorchScript"),
        "pickle refused": (("--model", folder / "whole.pth"), "--allow-pickle"),
        "mean": ((*own, "--mean", "0.5,0.5"), "--mean must be three numbers R,G,B"),
        "std": ((*own, "--std", "0.2,0,0.2"), "--std must be three positive numbers"),
        "input size": ((*own, "--input-size", "0,32"), "--input-size must be PIXELS or H,W"),
    }


def test_bad_input_gives_one_line_and_exit_status_2(trained, own_code) -> None:
    _, folder = trained
    code, photo = own_code
    for case, (options, says) in bad_inputs(folder, code).items():
        result = run(photo, *options, "--out", folder / "bad")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2, (case, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: "), (case, lines)
        assert says in lines[0], (case, lines[0])
        assert "Traceback" not in result.output


def test_list_models_and_help_show_the_fine_tuned_road() -> None:
    listing = CliRunner().invoke(main, ["--list-models"])
    assert listing.exit_code == 0
    road = "photo.jpg --model resnet18 --weights my.pth --labels labels.txt --input-size 224"
    assert f"heatmap {road}" in listing.output
    assert "--model path/to/file.py:callable or package.module:callable" in listing.output
    help_text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert "this imports and runs that code" in help_text
    for option in ("--labels", "--input-size", "--mean", "--std", "--activation", "--allow-pickle"):
        assert option in help_text
