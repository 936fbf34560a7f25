"""score_grid converts a model once, reads its window, and never reuses a stale conversion."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.errors import ConversionError
from heatmap_cli.grid import conversions
from heatmap_cli.grid.conversions import recorded_window
from tests.helpers.nets import NATIVE_STRIDE, NUM_CLASSES, WINDOW, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded


@pytest.fixture
def conversions_counted(monkeypatch):
    """Counts the conversions score_grid makes (the cache starts empty)."""
    calls: list[nn.Module] = []
    real = conversions.convolutionalize

    def counting(model, window, **kwargs):
        calls.append(model)
        return real(model, window, **kwargs)

    monkeypatch.setattr(conversions, "convolutionalize", counting)
    conversions.forget_conversions()
    yield calls
    conversions.forget_conversions()


def _input(rows: int = 3, cols: int = 4, batch: int = 1) -> torch.Tensor:
    size = (WINDOW[0] + NATIVE_STRIDE * (rows - 1), WINDOW[1] + NATIVE_STRIDE * (cols - 1))
    return torch.randn(batch, 3, *size)


@pytest.mark.parametrize("method", ["dense", "stitch", "dilate", "crops"])
def test_a_model_is_converted_once_for_every_call(conversions_counted, method):
    model, x = seeded(VolumeHeadNet), _input()
    stride = None if method in ("dense", "crops") else NATIVE_STRIDE // 2
    first = score_grid(model, x, stride=stride, method=method, input_size=WINDOW)
    again = score_grid(model, x, stride=stride, method=method, input_size=WINDOW)
    score_grid(model, _input(2, 5, batch=2), stride=stride, method=method, input_size=WINDOW)
    assert torch.equal(first, again)
    assert len(conversions_counted) == 1
    fresh = convolutionalize(model, WINDOW)
    assert torch.equal(first, score_grid(fresh, x, stride=stride, method=method, input_size=WINDOW))


def test_the_window_is_read_from_the_model_where_it_records_one():
    model, x = seeded(VolumeHeadNet), _input()
    expected = score_grid(model, x, input_size=WINDOW)
    net = convolutionalize(model, WINDOW)
    assert recorded_window(net) == WINDOW
    assert torch.equal(score_grid(net, x), expected)
    loaded = as_loaded(model, window=WINDOW)
    assert recorded_window(loaded) == WINDOW
    assert torch.equal(score_grid(loaded, x), expected)
    model.pretrained_cfg = {"input_size": (3, *WINDOW)}  # as timm records it
    assert recorded_window(model) == WINDOW
    assert torch.equal(score_grid(model, x), expected)
    model.pretrained_cfg = {}
    model.default_cfg = {"input_size": (3, *WINDOW)}  # older timm
    assert torch.equal(score_grid(model, x), expected)
    assert recorded_window(nn.Linear(3, 4)) is None  # then the contract's default, 224


def test_the_contract_default_window_stays_224():
    class Tiny224(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 32, stride=32)
            self.fc = nn.Linear(4 * 7 * 7, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).flatten(1))

    grid = score_grid(Tiny224().eval(), torch.randn(1, 3, 288, 256))
    assert grid.shape == (1, 3, 3, 2)


def test_a_new_head_a_new_device_or_dtype_and_a_changed_setting_convert_again(
    conversions_counted,
):
    model, x = seeded(VolumeHeadNet), _input()
    score_grid(model, x, input_size=WINDOW)
    with torch.no_grad():  # values changed in place are shared with the conversion
        model.classifier[3].weight.mul_(2)
    doubled = score_grid(model, x, input_size=WINDOW)
    assert len(conversions_counted) == 1
    assert torch.equal(doubled, score_grid(convolutionalize(model, WINDOW), x))

    model.classifier[3] = nn.Linear(32, 3).eval()  # fine-tuning: a new head
    assert score_grid(model, x, input_size=WINDOW).shape[1] == 3
    assert len(conversions_counted) == 2

    model.double()  # parameters converted in place, buffers replaced
    grid = score_grid(model, x.double(), input_size=WINDOW)
    assert grid.dtype == torch.float64 and len(conversions_counted) == 3

    model.features[2].kernel_size = 3  # a plain setting the traced graph baked in
    model.features[2].stride = 3
    with pytest.raises(ConversionError):  # converted again, and this one does not fit
        score_grid(model, x.double(), input_size=WINDOW)
    assert len(conversions_counted) == 4


def test_a_failure_to_convert_is_remembered_and_said_every_time(conversions_counted):
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 4, stride=4)
            self.fc = nn.Linear(4, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.conv(x).flatten(2)
            mixed = tokens @ tokens.transpose(1, 2) @ tokens
            return self.fc(mixed.mean(2))

    model, x = Attention().eval(), torch.randn(1, 3, 40, 40)
    for _ in range(2):
        with pytest.raises(ConversionError, match="attention"):
            score_grid(model, x, input_size=(32, 32))
    assert len(conversions_counted) == 1
    crops = score_grid(model, x, stride=8, method="crops", input_size=(32, 32))
    assert crops.shape == (1, NUM_CLASSES, 2, 2)


def test_the_cache_does_not_keep_a_model_alive():
    model = seeded(VolumeHeadNet)
    for method, stride in (("dense", None), ("dilate", 4), ("stitch", 2)):
        score_grid(model, _input(), stride=stride, method=method, input_size=WINDOW)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
