"""The on-disk cache of slow, structure-only figures (``heatmap_cli.io.figure_cache``)."""

from __future__ import annotations

import copy
import json
import os
import threading
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


# --- a damaged cache only costs time ------------------------------------------------------------


def _cached_then_damaged(folder: Path, damage: str | None) -> tuple[tuple[int, float], Path]:
    """The per-pixel figures of a tiny converted net, cached, then the cache file damaged
    (``damage`` written in its place; None: a FIFO in its place)."""
    net = convolutionalize(seeded(VolumeHeadNet), WINDOW)
    measured = tiling_memory._per_pixel(net, torch.float32, DISK_FIGURES)
    (path,) = folder.iterdir()
    path.unlink()
    if damage is None:
        os.mkfifo(path)
    else:
        path.write_text(damage, encoding="utf-8")
    return measured, path


@pytest.mark.parametrize(
    "damage",
    [
        '{"bytes_per_pixel": 1}',
        '{"classes": NaN, "bytes_per_pixel": 70}',
        '{"classes": 10, "bytes_per_pixel": NaN}',
        '{"classes": 10, "bytes_per_pixel": Infinity}',
        '{"classes": 10, "bytes_per_pixel": 1e15}',
        '{"classes": 1e15, "bytes_per_pixel": 70}',
        '{"classes": 7, "bytes_per_pixel": 70}',
        '{"classes": 10.5, "bytes_per_pixel": 70}',
        '{"classes": 10, "bytes_per_pixel": -70}',
        '{"classes": 10, "bytes_per_pixel": 0.5}',
    ],
)
def test_implausible_figures_are_measured_again_and_replaced(folder: Path, damage: str) -> None:
    measured, path = _cached_then_damaged(folder, damage)
    fresh = convolutionalize(seeded(VolumeHeadNet, seed=1), WINDOW)  # not in the memory cache

    assert tiling_memory._per_pixel(fresh, torch.float32, DISK_FIGURES) == measured
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert (int(stored["classes"]), stored["bytes_per_pixel"]) == measured
    # and the tiling estimate answers as with a sound cache: no tile for a small input
    assert choose_tile(fresh, (96, 160), 2**30, figures=DISK_FIGURES) is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_place_of_the_cache_file_is_never_waited_on(folder: Path) -> None:
    measured, path = _cached_then_damaged(folder, None)
    fresh = convolutionalize(seeded(VolumeHeadNet, seed=1), WINDOW)
    found: list[tuple[int, float]] = []
    reader = threading.Thread(
        target=lambda: found.append(tiling_memory._per_pixel(fresh, torch.float32, DISK_FIGURES)),
        daemon=True,
    )

    reader.start()
    reader.join(30)

    assert found == [measured], "the figure was not measured again: it waits on the FIFO"
    assert path.is_file()  # replaced by a sound file


def test_a_store_that_returns_nonsense_is_not_believed() -> None:
    class LyingStore:
        def figures(self, kind, net, extra, measure, plausible=None):
            return {"classes": 10.0, "bytes_per_pixel": 1e15}

    net = convolutionalize(seeded(VolumeHeadNet), WINDOW)
    expected = tiling_memory._measure_per_pixel(net, torch.float32)
    fresh = convolutionalize(seeded(VolumeHeadNet, seed=1), WINDOW)
    classes, per_pixel = tiling_memory._per_pixel(fresh, torch.float32, LyingStore())
    assert (classes, per_pixel) == (int(expected["classes"]), expected["bytes_per_pixel"])
