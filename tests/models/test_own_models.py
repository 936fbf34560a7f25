"""Models without a library: own code (file.py:callable, package.module:callable) and model files.

Also what a model returns (logits, or probabilities from a head that ends in a softmax or a
sigmoid), read from its graph or its scores, and the activation that turns a grid into scores.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heatmap_cli.errors import InvalidOptionError, ModelFileError, UnknownModelError
from heatmap_cli.models import get_source, load_model
from heatmap_cli.models.own import model_output
from heatmap_cli.models.weights import file_sha256
from heatmap_cli.pipeline.activations import apply_activation, resolve_activation, sigmoid, softmax
from tests.helpers.nets import WINDOW, PooledHeadNet, padding_free_body, seeded

# A module the tests write to a temporary folder; ``build`` takes num_classes, ``Fixed`` does not.
MODEL_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    from blocks import body  # a neighbour of this file


    class Net(nn.Module):
        def __init__(self, num_classes: int = 10, softmax: bool = False) -> None:
            super().__init__()
            self.body = body()
            self.fc = nn.Linear(16, num_classes)
            self.softmax = softmax

        def forward(self, x):
            logits = self.fc(self.body(x).mean((2, 3)))
            return logits.softmax(dim=1) if self.softmax else logits


    def build(num_classes: int = 10):
        return Net(num_classes)


    def build_probabilities():
        return Net(4, softmax=True)


    def Fixed():
        return Net(10)


    def needs_classes(num_classes):
        return Net(num_classes)


    def broken():
        raise RuntimeError("no GPU found")


    def not_a_model():
        return {"fc": 1}
    """
)
BLOCKS_CODE = textwrap.dedent(
    """
    from torch import nn

    def body():
        return nn.Sequential(nn.Conv2d(3, 16, 5, stride=4), nn.ReLU())
    """
)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """``tmp_path/mine/model.py`` (and its neighbour ``blocks.py``)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.py").write_text(MODEL_CODE, encoding="utf-8")
    (folder / "blocks.py").write_text(BLOCKS_CODE, encoding="utf-8")
    return folder / "model.py"


def weights_of(spec: str, classes: int, path: Path) -> torch.nn.Module:
    """Builds ``spec`` with ``classes`` through the loader itself, saves random weights."""
    torch.manual_seed(classes)
    model = load_model(spec).model
    module = type(model)(classes)
    torch.save(module.state_dict(), path)
    return module.eval()


def test_a_python_file_callable_with_the_files_number_of_classes(code: Path, tmp_path) -> None:
    reference = weights_of(f"{code}:build", 3, tmp_path / "three.pth")
    loaded = load_model(f"{code}:build", weights=tmp_path / "three.pth", input_size=(32, 32))
    assert loaded.family == "python"
    assert loaded.num_classes == 3
    assert loaded.input_size == (32, 32)
    assert loaded.output == "logits"
    assert [f.role for f in loaded.files] == ["code", "weights"]
    assert loaded.files[0].sha256 == file_sha256(code)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference(x))


def test_a_package_module_callable(code: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (code.parent / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.chdir(code.parent.parent)
    monkeypatch.syspath_prepend(str(code.parent))  # for model.py's own `import blocks`
    loaded = load_model("mine.model:build")
    assert loaded.num_classes == 10
    assert loaded.files == ()  # a module, not a file given by path
    assert loaded.notes == (  # a library call names the parameter; the command, --input-size
        "mine.model:build records no input size; assuming 224x224 (set input_size to the "
        "size it was trained at)",
    )


def test_a_class_is_a_callable_too(code: Path) -> None:
    assert load_model(f"{code}:Net", input_size=(32, 32)).num_classes == 10


def test_a_head_ending_in_softmax_is_recorded(code: Path) -> None:
    loaded = load_model(f"{code}:build_probabilities", input_size=(32, 32))
    assert loaded.output == "softmax"
    assert loaded.num_classes == 4


@pytest.mark.parametrize(
    ("attribute", "match"),
    [
        ("missing", "has no 'missing'"),
        ("broken", r"calling it raised RuntimeError: no GPU found"),
        ("not_a_model", "returned a dict, not a torch.nn.Module"),
        ("needs_classes", "needs num_classes; pass --weights FILE"),
    ],
)
def test_bad_callables_are_named(code: Path, attribute: str, match: str) -> None:
    with pytest.raises(ModelFileError, match=match):
        load_model(f"{code}:{attribute}", input_size=(32, 32))


def test_a_callable_without_num_classes_and_another_head(code: Path, tmp_path) -> None:
    weights_of(f"{code}:build", 3, tmp_path / "three.pth")
    with pytest.raises(ModelFileError, match="takes no num_classes argument"):
        load_model(f"{code}:Fixed", weights=tmp_path / "three.pth", input_size=(32, 32))


def test_a_callable_that_needs_num_classes_gets_the_files(code: Path, tmp_path) -> None:
    weights_of(f"{code}:build", 3, tmp_path / "three.pth")
    spec = f"{code}:needs_classes"
    assert load_model(spec, weights=tmp_path / "three.pth", input_size=(32, 32)).num_classes == 3


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("no/such/file.py:build", ModelFileError, "no such file"),
        ("no_such_package.models:build", ModelFileError, "no Python module 'no_such_package"),
        ("resnet18:build", ModelFileError, "no Python module 'resnet18'"),
        ("not a name:x y", UnknownModelError, "Unknown model"),
    ],
)
def test_callables_that_do_not_exist(spec: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        load_model(spec)


def test_a_model_that_does_not_run_at_its_window(code: Path) -> None:
    with pytest.raises(ModelFileError, match=r"does not run on a batch of 3x3 images"):
        load_model(f"{code}:build", input_size=(3, 3))


# --- model files --------------------------------------------------------------------------


class SoftmaxNet(PooledHeadNet):
    """A padding-free classifier whose head ends in a softmax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=-1)


def save_archives(model: nn.Module, folder: Path) -> dict[str, Path]:
    """The model as a torch.export archive, traced and scripted TorchScript, and a pickle."""
    paths = {
        kind: folder / name
        for kind, name in [
            ("export", "model.pt2"),
            ("traced", "traced.pt"),
            ("pickle", "whole.pth"),
        ]
    }
    example = (torch.randn(1, 3, *WINDOW),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(model, example), paths["export"])
        torch.jit.save(torch.jit.trace(model, example), paths["traced"])
    torch.save(model, paths["pickle"])
    return paths


@pytest.fixture
def archives(tmp_path: Path) -> tuple[nn.Module, dict[str, Path]]:
    model = seeded(SoftmaxNet)
    return model, save_archives(model, tmp_path)


def test_model_files_load_as_saved(archives) -> None:
    model, paths = archives
    x = torch.randn(3, 3, *WINDOW)
    for kind in ("export", "traced", "pickle"):
        loaded = load_model(str(paths[kind]), input_size=WINDOW, allow_pickle=True)
        assert loaded.family == "file"
        assert loaded.output == "softmax", kind
        assert loaded.input_size == WINDOW
        assert [f.role for f in loaded.files] == ["model"]
        with torch.no_grad():
            assert torch.allclose(loaded.model(x), model(x), atol=1e-6), kind


def test_an_export_archive_records_its_window(archives) -> None:
    _, paths = archives
    loaded = load_model(str(paths["export"]))
    assert loaded.input_size == WINDOW
    assert loaded.notes == ()


def test_a_pickled_model_is_refused_without_allow_pickle(archives) -> None:
    _, paths = archives
    with pytest.raises(ModelFileError) as excinfo:
        load_model(str(paths["pickle"]), input_size=WINDOW)
    message = str(excinfo.value)
    assert message.startswith(f"{paths['pickle']}: is a pickled Python object")
    assert "runs code stored in the file" in message
    assert "--allow-pickle" in message


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a model\n", "not a TorchScript archive, a torch.export archive"),
        (None, "cannot be read as TorchScript"),
        ("weights", "holds only weights; name its architecture: --model ARCH --weights"),
    ],
    ids=["text", "corrupt TorchScript", "a state dict"],
)
def test_model_files_that_cannot_be_used(archives, tmp_path, content, match: str) -> None:
    model, paths = archives
    path = tmp_path / "bad.pt"
    if content is None:  # a real archive with its code cut out
        import zipfile

        with zipfile.ZipFile(paths["traced"]) as source, zipfile.ZipFile(path, "w") as damaged:
            for item in source.infolist():
                if "/code/" not in item.filename or item.filename.endswith(".debug_pkl"):
                    damaged.writestr(item, source.read(item))
            damaged.writestr("traced/code/__torch__.py", "this is not TorchScript(")
    elif content == "weights":
        torch.save(model.state_dict(), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=match):
        load_model(str(path), input_size=WINDOW)


def test_model_file_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(str(tmp_path / "gone.pt2"))
    assert get_source("model.pt2").family == "file"
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="holds its weights; --weights is for"):
        load_model(str(path), weights=path)


# --- what a model returns -------------------------------------------------------------------


class Untraceable(nn.Module):
    """Python control flow on values: torch.fx cannot trace it, its scores must say."""

    def __init__(self, last: str) -> None:
        super().__init__()
        self.features, self.fc, self.last = padding_free_body(), nn.Linear(16, 3), last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.features(x).mean((2, 3)))
        if float(logits.abs().sum()) < 0:  # never true; a branch on a value
            return logits
        return getattr(F, self.last)(logits, dim=1) if self.last != "none" else logits


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (lambda y: y, "logits"),
        (lambda y: torch.softmax(y, -1), "softmax"),
        (lambda y: F.log_softmax(y, dim=1), "log_softmax"),
        (lambda y: torch.sigmoid(y).squeeze(1), "sigmoid"),
        (lambda y: nn.functional.dropout(y.sigmoid(), 0.1, False), "sigmoid"),
        (lambda y: torch.relu(torch.softmax(y, 1)), "logits"),
    ],
)
def test_what_a_graph_returns(head, expected: str) -> None:
    class Net(PooledHeadNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return head(super().forward(x))

    model = seeded(Net)
    scores = model(torch.randn(2, 3, *WINDOW))
    assert model_output(model, scores) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(model, torch.randn(1, 3, *WINDOW))
    assert model_output(scripted, scores) == expected


@pytest.mark.parametrize(
    ("last", "expected"),
    [("none", "logits"), ("softmax", "softmax"), ("log_softmax", "log_softmax")],
)
def test_what_an_untraceable_model_returns_is_read_from_its_scores(last, expected) -> None:
    model = seeded(lambda: Untraceable(last))
    with torch.no_grad():
        scores = model(torch.randn(2, 3, *WINDOW))
    assert model_output(model, scores) == expected


# --- activations ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "classes", "output", "expected"),
    [
        ("auto", 1, "logits", "sigmoid"),
        ("auto", 3, "logits", "softmax"),
        ("auto", 3, "softmax", "none"),
        ("auto", 3, "sigmoid", "none"),
        ("auto", 3, "log_softmax", "softmax"),
        ("none", 3, "softmax", "none"),
        ("sigmoid", 3, "logits", "sigmoid"),
        ("softmax", 1, "logits", "softmax"),
    ],
)
def test_resolve_activation(requested, classes, output, expected) -> None:
    assert resolve_activation(requested, classes, output) == expected


@pytest.mark.parametrize(("requested", "output"), [("softmax", "softmax"), ("sigmoid", "sigmoid")])
def test_no_second_activation_on_probabilities(requested: str, output: str) -> None:
    with pytest.raises(InvalidOptionError, match="returns probabilities already"):
        resolve_activation(requested, 3, output)


def test_activations_of_a_grid() -> None:
    logits = np.array([[[-800.0, 0.0, 3.0]], [[0.5, 0.0, 800.0]]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise"):  # no overflow for large logits
        probs = sigmoid(logits)
    expected = torch.sigmoid(torch.from_numpy(logits).double()).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert np.array_equal(apply_activation(logits, "softmax"), softmax(logits))
    assert np.array_equal(apply_activation(logits, "none"), logits)
    with pytest.raises(InvalidOptionError):
        apply_activation(logits, "auto")
