"""Every registered grid method, held to what it declares: one set of assertions for all.

A method declares the strides it takes (``GridMethod.strides``) and whether it is exact
(``GridMethod.exact``: on a network without zero padding, every cell is the unmodified model on its
window). These tests are parametrized over ``method_names()`` (and the toy method that
``tests/helpers/toy_method.py`` adds), so a newly registered method is tested by the same
assertions as the built-in ones: the shape and order of its grid, its
exactness against the model run window by window (computed here, by no method), the strides it
refuses, its batch size, the engine's network, and the caller's model left alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from heatmap_cli import convolutionalize, score_grid
from heatmap_cli.errors import GeometryError
from heatmap_cli.grid import get_method, method_names, register_method, unregister_method
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.pixels import normalize
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from tests.helpers.nets import ALL_NETS, NATIVE_STRIDE, NUM_CLASSES, WINDOW, VolumeHeadNet, seeded
from tests.helpers.toy_method import MIRROR
from tests.helpers.toys import as_loaded

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(params=[*method_names(), MIRROR.name])
def method(request) -> Iterator[str]:
    """Every registered method, and the toy one of tests/helpers/toy_method.py registered here:
    a method added with one register_method line is tested by the same assertions."""
    if request.param == MIRROR.name:
        register_method(MIRROR)
        yield MIRROR.name
        unregister_method(MIRROR.name)
    else:
        yield request.param


def strides_of(method: str) -> list[int]:
    """The strides a method takes, as it declares them: the native one, and finer or any."""
    rule = get_method(method).strides
    if rule == "native":
        return [NATIVE_STRIDE]
    if rule == "divisors":
        return [NATIVE_STRIDE, NATIVE_STRIDE // 2, 1]
    return [NATIVE_STRIDE, 3]


def window_by_window(model: nn.Module, x: torch.Tensor, stride: int) -> torch.Tensor:
    """The reference: the unmodified model on every window, one window at a time."""
    rows, cols = grid_shape((x.shape[2], x.shape[3]), WINDOW, stride)
    grid = torch.empty(x.shape[0], NUM_CLASSES, rows, cols)
    with torch.no_grad():
        for i in range(rows):
            for j in range(cols):
                top, left = i * stride, j * stride
                grid[:, :, i, j] = model(x[:, :, top : top + WINDOW[0], left : left + WINDOW[1]])
    return grid


def _input(rows: int, cols: int, stride: int, batch: int = 2, extra=(0, 0)) -> torch.Tensor:
    size = (WINDOW[0] + stride * (rows - 1) + extra[0], WINDOW[1] + stride * (cols - 1) + extra[1])
    return torch.randn(batch, 3, *size)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("net_class", ALL_NETS)
def test_every_method_keeps_its_promise_at_every_stride_it_takes(method, net_class, head_form):
    model = seeded(net_class)
    net = convolutionalize(model, WINDOW, matmul_max_cells=head_form)
    for stride in strides_of(method):
        x = _input(4, 6, stride)  # non-square, so a transposed or mis-ordered grid cannot pass
        grid = score_grid(net, x, stride=stride, method=method, input_size=WINDOW)
        assert grid.shape == (2, NUM_CLASSES, 4, 6), stride
        assert torch.isfinite(grid).all()
        if get_method(method).exact:
            assert _max_diff(grid, window_by_window(model, x, stride)) < 1e-5, stride


def test_inputs_not_of_the_grid_form_give_the_whole_windows_that_fit(method):
    model = seeded(VolumeHeadNet)
    for stride in strides_of(method):
        x = _input(3, 2, stride, batch=1, extra=(stride - 1 or 5, 7))
        grid = score_grid(model, x, stride=stride, method=method, input_size=WINDOW)
        assert grid.shape[2:] == grid_shape(tuple(x.shape[2:]), WINDOW, stride)
        if get_method(method).exact:
            assert _max_diff(grid, window_by_window(model, x, stride)) < 1e-5


def test_every_method_refuses_the_strides_it_does_not_take(method):
    model, x = seeded(VolumeHeadNet), torch.randn(1, 3, 60, 60)
    rule = get_method(method).strides
    refused = {"native": (3, "valid strides: 8, 4, 2, 1"), "divisors": (3, "valid strides")}
    stride, message = refused.get(rule, (0, "stride must be positive"))
    with pytest.raises(GeometryError, match=message):
        score_grid(model, x, stride=stride, method=method, input_size=WINDOW)
    if rule == "native":
        finer = f"method '{method}' runs at the native stride 8; for stride 4 use method='stitch'"
        with pytest.raises(GeometryError, match=finer):
            score_grid(model, x, stride=NATIVE_STRIDE // 2, method=method, input_size=WINDOW)


def test_the_batch_size_does_not_change_the_grid(method):
    model = seeded(VolumeHeadNet)
    stride = strides_of(method)[-1]
    x = _input(5, 4, stride, batch=3)
    one = score_grid(model, x, stride=stride, method=method, input_size=WINDOW, batch_size=1)
    many = score_grid(model, x, stride=stride, method=method, input_size=WINDOW, batch_size=16)
    assert _max_diff(one, many) < 1e-5


def test_the_engine_runs_every_method_as_score_grid_does(method):
    model = seeded(VolumeHeadNet)
    stride = strides_of(method)[-1]
    loaded = as_loaded(model, window=WINDOW, mean=MEAN, std=STD)
    settings = GridSettings(device="cpu", method=method, stride=stride, batch_size=4)
    engine = GridEngine(loaded, settings, figures=None)
    assert (engine.method, engine.stride) == (method, stride)
    height, width = WINDOW[0] + 4 * stride, WINDOW[1] + 6 * stride
    pixels = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    x = normalize(pixels, MEAN, STD)
    expected = score_grid(model, x, stride=stride, method=method, input_size=WINDOW)
    got = engine.score(pixels)
    assert got.shape == expected.shape == (2, NUM_CLASSES, 5, 7)
    assert _max_diff(got, expected) < 1e-4


def test_no_method_changes_the_callers_model(method):
    model = seeded(VolumeHeadNet)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = {name: (id(m), m.training) for name, m in model.named_modules()}
    stride = strides_of(method)[-1]
    score_grid(model, _input(3, 3, stride), stride=stride, method=method, input_size=WINDOW)
    assert {name: (id(m), m.training) for name, m in model.named_modules()} == modules
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
