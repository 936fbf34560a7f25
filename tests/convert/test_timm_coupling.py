"""timm's names that conversion depends on: pinned today, and refused loudly when one is gone.

The first tests pin what ``heatmap_cli.convert.timm_names`` finds in the installed timm, and what
the walkers read from those classes: a timm upgrade that renames or moves one fails here, with
its name. The others simulate such a rename and check that it is refused (or falls back to an
exact computation), never converted differently without a word.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from heatmap_cli import convolutionalize
from heatmap_cli.convert import timm_names
from heatmap_cli.convert.folding import fold_batch_norms
from heatmap_cli.convert.timm_names import TIMM_CLASSES, TIMM_FUNCTIONS, timm_layers
from heatmap_cli.errors import GeometryError, TimmCouplingError
from heatmap_cli.grid.tiling import receptive_field
from heatmap_cli.models.timm_source import TIMM_CONFIG_KEYS, timm_loaded_model
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from tests.helpers.toys import as_loaded

timm = pytest.importorskip("timm")
layers = pytest.importorskip("timm.layers")

WINDOW = (32, 32)


# --- What is found today ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name"),
    [pair for pairs in TIMM_CLASSES.values() for pair in pairs] + list(TIMM_FUNCTIONS),
    ids=lambda value: value,
)
def test_every_timm_name_the_conversion_needs_is_found(module, name):
    found = getattr(importlib.import_module(module), name, None)
    assert found is not None, (
        f"timm {timm.__version__} has no {module}.{name}: update TIMM_CLASSES/TIMM_FUNCTIONS "
        "in heatmap_cli/convert/timm_names.py (and the walkers that read it)"
    )
    assert isinstance(found, type) or name.startswith("get_"), f"{module}.{name} is {found!r}"


def test_the_walkers_see_every_timm_layer_and_nothing_is_missing():
    known = timm_layers()
    assert known.missing == (), f"timm {timm.__version__} lacks {known.missing}"
    names = {
        field: [c.__name__ for c in getattr(known, field) if c.__module__.startswith("timm")]
        for field in TIMM_CLASSES
    }
    assert names == {field: [n for _, n in pairs] for field, pairs in TIMM_CLASSES.items()}


def test_what_the_walkers_read_from_timms_classes_is_there():
    """The attributes and base classes the graph walkers rely on, class by class."""
    pools = importlib.import_module("timm.layers.pool2d_same")
    assert issubclass(layers.Conv2dSame, nn.Conv2d)  # read as a convolution, padded "same"
    assert issubclass(pools.MaxPool2dSame, nn.MaxPool2d)
    assert issubclass(pools.AvgPool2dSame, nn.AvgPool2d)
    assert issubclass(layers.LayerNorm2d, nn.LayerNorm)  # over channels, per position
    assert issubclass(layers.BatchNormAct2d, nn.BatchNorm2d)
    for flagged in (layers.StdConv2dSame, layers.ScaledStdConv2dSame):
        assert issubclass(flagged, nn.Conv2d)
        assert flagged(3, 8, 3, padding="same", stride=2).same_pad is True  # read by tiling
        assert flagged(3, 8, 3, padding=1).same_pad is False
    norm = layers.BatchNormAct2d(8)  # folding keeps its drop, then its act, after the conv
    assert isinstance(norm.act, nn.Module) and isinstance(norm.drop, nn.Module)
    norm.eval()
    x = torch.randn(2, 8, 5, 5)
    expected = norm.act(norm.drop(nn.functional.batch_norm(
        x, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps
    )))  # fmt: skip
    assert torch.allclose(norm(x), expected)
    mlp = importlib.import_module("timm.models.vgg").ConvMlp(16, 32, kernel_size=3)
    assert isinstance(mlp.fc1, nn.Conv2d) and isinstance(mlp.fc2, nn.Conv2d)  # the VGG head
    not_traced = set(layers.get_notrace_modules())
    assert {layers.Conv2dSame, layers.BatchNormAct2d, pools.MaxPool2dSame} <= not_traced


def test_what_the_timm_model_source_reads_is_there():
    """heatmap_cli.models.timm_source: the functions, config fields and keys it reads by name."""
    import dataclasses

    data, models = importlib.import_module("timm.data"), importlib.import_module("timm.models")
    for name in ("IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "infer_imagenet_subset"):
        assert hasattr(data, name), f"timm {timm.__version__} has no timm.data.{name}"
    assert hasattr(data.ImageNetInfo("imagenet-1k"), "label_descriptions")
    for name in ("is_model", "list_models", "create_model"):
        assert callable(getattr(timm, name, None)), f"timm {timm.__version__} has no timm.{name}"
    fields = {f.name: f.default for f in dataclasses.fields(models.PretrainedCfg)}
    read = ("hf_hub_id", "hf_hub_filename", "url", "file", "label_offset", "label_names")
    assert set(read) | {"label_descriptions"} <= set(fields)
    for key in TIMM_CONFIG_KEYS:  # required: every model has them (non-None defaults)
        assert fields[key] is not None, key
    for arch in ("resnet10t", "tf_efficientnet_lite0", "vit_tiny_patch16_224"):
        cfg = models.get_pretrained_cfg(arch)
        assert cfg is not None and all(getattr(cfg, key) is not None for key in TIMM_CONFIG_KEYS)
    model = timm.create_model("resnet10t", pretrained=False)
    assert set(TIMM_CONFIG_KEYS) <= set(model.pretrained_cfg), sorted(model.pretrained_cfg)


def test_a_timm_config_without_a_key_it_needs_is_refused():
    model = timm.create_model("resnet10t", pretrained=False)
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k != "mean"}
    with pytest.raises(TimmCouplingError, match="pretrained_cfg of resnet10t has no 'mean'"):
        timm_loaded_model("resnet10t", model, "test")


# --- A rename in timm -----------------------------------------------------------------------------


class TimmLayersNet(nn.Module):
    """A padding-free-enough net made of timm's layers: Conv2dSame, BatchNormAct2d (window 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = layers.Conv2dSame(3, 8, 3, stride=2)
        self.norm = layers.BatchNormAct2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.norm(self.conv(x))).mean((2, 3)))


class PlainNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture
def renamed(monkeypatch):
    """timm as if a release had renamed Conv2dSame."""
    monkeypatch.setitem(TIMM_CLASSES, "same_convs", (("timm.layers", "Conv2dSameRenamed"),))
    timm_names._known_layers.cache_clear()
    yield
    monkeypatch.undo()
    timm_names._known_layers.cache_clear()


def test_a_timm_model_is_refused_naming_what_timm_lost(renamed):
    model = TimmLayersNet().eval()
    assert timm_layers().missing == ("timm.layers.Conv2dSameRenamed",)
    with pytest.raises(TimmCouplingError, match=r"timm \S+ has no timm.layers.Conv2dSameRenamed"):
        convolutionalize(model, WINDOW)
    with pytest.raises(TimmCouplingError, match="method='crops'"):
        convolutionalize(model, WINDOW)
    convolutionalize(PlainNet().eval(), WINDOW)  # a model without timm's modules: unaffected


def test_the_engine_falls_back_to_crops_with_a_note_that_names_it(renamed):
    loaded = as_loaded(TimmLayersNet(), window=WINDOW, categories=list("abcde"))
    engine = GridEngine(loaded, GridSettings(size=64, device="cpu"), figures=None)
    assert engine.method == "crops"
    assert any("Conv2dSameRenamed" in note and "crops" in note for note in engine.notes)
    pixels = torch.randint(0, 256, (1, 64, 96, 3), dtype=torch.uint8).numpy()
    grid = engine.score(pixels)
    with torch.no_grad():  # crops: the unmodified model on the first window
        window = torch.from_numpy(pixels[:, :32, :32]).permute(0, 3, 1, 2).float() / 255
        expected = loaded.model((window - 0.5) / 0.25)
    assert torch.allclose(grid[:, :, 0, 0], expected, atol=1e-5)


def test_a_norm_without_its_activation_attribute_is_left_whole_not_folded():
    model = TimmLayersNet().eval()
    net = convolutionalize(model, WINDOW)
    folded = fold_batch_norms(net)
    assert folded is not None and folded[1] == 1  # Conv2dSame + BatchNormAct2d
    act = model.norm.act
    del model.norm.act  # as if timm had renamed it: folding would drop the activation
    model.norm.activation = act
    assert fold_batch_norms(net) is None  # nothing folded, so nothing computed differently


def _flagged_net(conv: type[nn.Module]) -> nn.Module:
    class StdNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv(3, 8, 3, stride=2, padding="same")
            self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
            self.fc = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv2(self.conv(x)).mean((2, 3)))

    return StdNet().eval()


def test_a_flagged_same_conv_without_same_pad_is_probed_not_analysed():
    class Renamed(layers.StdConv2dSame):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.pads_same = self.__dict__.pop("same_pad")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.same_pad = self.pads_same  # timm's forward reads it under its own name
            try:
                return super().forward(x)
            finally:
                del self.same_pad

    torch.manual_seed(0)
    reference = convolutionalize(_flagged_net(layers.StdConv2dSame), WINDOW)
    torch.manual_seed(0)
    renamed = convolutionalize(_flagged_net(Renamed), WINDOW)
    expected = receptive_field(reference, method="analytic")
    assert expected == receptive_field(reference, method="probe")
    with pytest.raises(GeometryError, match="has no same_pad attribute"):
        receptive_field(renamed, method="analytic")
    assert receptive_field(renamed) == expected  # probed instead: the same field
