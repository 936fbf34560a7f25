"""The on-disk cache of slow, structure-only figures (``heatmap_cli.io.figure_cache``)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from heatmap_cli.convert.network import convolutionalize
from heatmap_cli.grid.tiling import choose_tile, estimate_activation_bytes
from heatmap_cli.grid.tiling import memory as tiling_memory
from heatmap_cli.io.figure_cache import (
    CACHE_DIR_ENV,
    DISK_FIGURES,
    cache_dir,
    cached_figures,
    network_fingerprint,
)
from tests.helpers.nets import WINDOW, PooledHeadNet, VolumeHeadNet, seeded


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_figures_are_measured_once_and_read_back(folder: Path) -> None:
    calls: list[int] = []

    def measure() -> dict[str, float]:
        calls.append(1)
        return {"bytes_per_pixel": 228.5, "classes": 1000}

    first = cached_figures("kind", "abc", measure)
    second = cached_figures("kind", "abc", measure)
    assert first == second == {"bytes_per_pixel": 228.5, "classes": 1000.0}
    assert len(calls) == 1
    assert cache_dir() == folder
    assert [p.name for p in folder.iterdir()] == ["kind-abc.json"]  # no temporary left


@pytest.mark.parametrize("damage", ["", "{not json", '{"a": "text"}', "[1, 2]", '{"a": true}'])
def test_a_damaged_file_is_measured_again_and_replaced(folder: Path, damage: str) -> None:
    folder.mkdir()
    (folder / "kind-abc.json").write_text(damage)
    assert cached_figures("kind", "abc", lambda: {"a": 2.0}) == {"a": 2.0}
    assert cached_figures("kind", "abc", lambda: {"a": 3.0}) == {"a": 2.0}


def test_a_cache_that_cannot_be_written_only_costs_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocked / "cache"))  # a folder under a file
    assert cached_figures("kind", "abc", lambda: {"a": 1.0}) == {"a": 1.0}
    assert cached_figures("kind", "abc", lambda: {"a": 2.0}) == {"a": 2.0}


def test_the_fingerprint_follows_structure_not_weights() -> None:
    net = seeded(VolumeHeadNet)
    reweighted = copy.deepcopy(net)
    with torch.no_grad():
        for parameter in reweighted.parameters():
            parameter.mul_(2)
    assert network_fingerprint(net, "float32") == network_fingerprint(reweighted, "float32")
    assert network_fingerprint(net, "float32") != network_fingerprint(net, "float64")
    assert network_fingerprint(net) != network_fingerprint(seeded(PooledHeadNet))
    restrided = copy.deepcopy(net)
    first_conv = next(m for m in restrided.modules() if isinstance(m, nn.Conv2d))
    first_conv.stride = (2, 2)  # same weights, another computation
    assert network_fingerprint(net) != network_fingerprint(restrided)
    converted = convolutionalize(net, WINDOW)
    assert network_fingerprint(converted) != network_fingerprint(net)


def test_the_cached_tiling_figure_equals_the_measured_one(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = convolutionalize(seeded(VolumeHeadNet), WINDOW)
    size = (96, 160)
    budget = 3 * estimate_activation_bytes(net, size)  # beyond the quick answer
    measured = tiling_memory._per_pixel(net, torch.float32, DISK_FIGURES)
    fresh = convolutionalize(seeded(VolumeHeadNet, seed=1), WINDOW)  # not in the in-memory cache

    def not_again(*args: object) -> dict[str, float]:
        raise AssertionError("measured although cached on disk")

    monkeypatch.setattr(tiling_memory, "_measure_per_pixel", not_again)
    assert tiling_memory._per_pixel(fresh, torch.float32, DISK_FIGURES) == measured
    tiles = [choose_tile(n, size, budget, figures=DISK_FIGURES) for n in (fresh, net)]
    assert tiles[0] == tiles[1]
