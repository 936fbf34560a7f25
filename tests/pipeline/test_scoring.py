"""The loader of every run: read-ahead, same-size batches across images and passes, one error
policy (any exception fails one image, never the others), a plain run as the one-pass run."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from heatmap_cli.errors import ImageReadError, MemoryExhaustedError
from heatmap_cli.io import DecodedPhoto, ImageInput, read_image, read_photo
from heatmap_cli.pipeline.engine import GridEngine, GridSettings, Tiling
from heatmap_cli.pipeline.preprocess import resize_for_grid
from heatmap_cli.pipeline.scoring import (
    ImageResult,
    PhotoReading,
    display_image,
    prepare,
    score_images,
)
from tests.helpers.nets import WINDOW, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded


def python_out_of_memory() -> None:
    raise MemoryError


def torch_out_of_memory() -> None:
    torch.empty(2**62, dtype=torch.uint8)  # the allocator refuses at once


class CountingEngine(GridEngine):
    """Records the shape of every batch; runs out of memory on batches ``failing_width`` wide."""

    def __init__(
        self,
        *args: object,
        failing_width: int | None = None,
        fail: Callable[[], None] = python_out_of_memory,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[int, ...]] = []
        self.failing_width, self.fail = failing_width, fail

    def score_batch(self, pixels: np.ndarray):
        self.batches.append(pixels.shape)
        if pixels.shape[2] == self.failing_width:
            self.fail()
        return super().score_batch(pixels)


def engine(
    failing_width: int | None = None, fail: Callable[[], None] = python_out_of_memory
) -> CountingEngine:
    loaded = as_loaded(seeded(VolumeHeadNet), window=WINDOW, interpolation="bicubic")
    # dense: auto's exact cells follow the time measured, and these tests compare runs bit for bit
    settings = GridSettings(size=60, device="cpu", method="dense")
    return CountingEngine(loaded, settings, failing_width=failing_width, fail=fail)


@functools.cache
def shared_engine() -> CountingEngine:
    """Converting is the slow part; tests that do not count batches share one engine."""
    return engine()


def photos(folder: Path, *names_and_sizes: tuple[str, tuple[int, int]]) -> list[ImageInput]:
    """Random photos of (height, width), as loader inputs in the order given."""
    items = []
    for seed, (name, (height, width)) in enumerate(names_and_sizes):
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        items.append(ImageInput(folder / name, Path(name).with_suffix("")))
    return items


def test_images_are_scored_and_failures_reported(tmp_path: Path) -> None:
    items = photos(tmp_path, ("a.png", (70, 95)), ("b.png", (70, 95)))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    items.insert(1, ImageInput(tmp_path / "broken.png", Path("broken")))
    used = shared_engine()

    outcomes = list(score_images(items, used, scales=(1, 1.5), flip=True))

    assert sorted(o.item for o in outcomes) == sorted(items)  # each exactly once
    by_name = {o.item.path.name: o.result for o in outcomes}
    assert isinstance(by_name["broken.png"], ImageReadError)
    for name in ("a.png", "b.png"):
        result = by_name[name]
        assert isinstance(result, ImageResult)
        assert result.grid.geometry == used.plan((70, 95))
        assert len(result.grid.passes) == 4
        assert all(p.logits is None for p in result.grid.passes)  # not kept by default
        assert all(p.tiling == Tiling() for p in result.grid.passes)
        assert result.display.shape == (70, 95, 3)
        assert result.icc_profile is None


def test_a_plain_run_is_the_one_pass_run(tmp_path: Path) -> None:
    items = photos(tmp_path, ("a.png", (70, 95)), ("b.png", (61, 80)))
    used = shared_engine()

    plain = {o.item: o.unwrap() for o in score_images(items, used)}
    scaled = {o.item: o.unwrap() for o in score_images(items, used, scales=(1.0,))}

    for item in items:
        a, b = plain[item], scaled[item]
        assert type(a) is type(b) is ImageResult
        assert a.grid.geometry == b.grid.geometry == used.plan(a.display.shape[:2])
        assert np.array_equal(a.grid.logits, b.grid.logits)
        assert [(p.scale, p.flip) for p in a.grid.passes] == [(1.0, False)]
        # ... and its grid is the engine's grid of the resized photo, bit for bit.
        pixels = resize_for_grid(read_image(item.path), a.grid.geometry.input_size, "bicubic")
        assert np.array_equal(a.grid.logits, used.score(pixels[None])[0].numpy())


def test_inputs_of_equal_size_share_batches_across_images_and_passes(tmp_path: Path) -> None:
    items = photos(tmp_path, ("a.png", (70, 95)), ("b.png", (70, 95)), ("c.png", (61, 80)))
    counting = engine()

    outcomes = list(score_images(items, counting, scales=(1, 1.5), flip=True))

    assert all(isinstance(o.result, ImageResult) for o in outcomes)
    # Two sizes per photo size (one per scale); a scale's plain and mirrored passes are equal
    # in size, so a and b fill batches of four together and c its own two batches of two.
    assert sorted(shape[0] for shape in counting.batches) == [2, 2, 4, 4]
    assert len({shape[1:3] for shape in counting.batches}) == 4


@pytest.mark.parametrize("fail", [python_out_of_memory, torch_out_of_memory])
def test_a_forward_pass_out_of_memory_fails_only_its_images_and_says_what_to_lower(
    tmp_path: Path, fail: Callable[[], None]
) -> None:
    items = photos(tmp_path, ("a.png", (70, 95)), ("b.png", (61, 80)), ("c.png", (70, 95)))
    height, width = shared_engine().plan((70, 95), 1.5).input_size
    failing = engine(failing_width=width, fail=fail)

    outcomes = {o.item.path.name: o.result for o in score_images(items, failing, scales=(1, 1.5))}

    for name in ("a.png", "c.png"):
        assert isinstance(outcomes[name], MemoryExhaustedError)
        assert str(outcomes[name]) == (
            f"not enough memory to score 2 network input(s) of {width}x{height} pixels at once; "
            "lower batch_size or memory_budget"
        )
        assert isinstance(outcomes[name].__cause__, MemoryError | RuntimeError)
    assert isinstance(outcomes["b.png"], ImageResult)
    assert len(outcomes) == 3


def test_an_unexpected_error_preparing_one_image_fails_only_it(
    crashing_open, tmp_path: Path
) -> None:
    items = photos(tmp_path, ("a.png", (70, 95)), ("crash.png", (70, 95)), ("b.png", (70, 95)))

    outcomes = {
        o.item.path.name: o.result
        for o in score_images(items, shared_engine(), scales=(1, 1.5), flip=True)
    }

    assert isinstance(outcomes["crash.png"], RuntimeError)
    assert str(outcomes["crash.png"]) == "decoder crashed"
    assert isinstance(outcomes["a.png"], ImageResult)
    assert isinstance(outcomes["b.png"], ImageResult)


def test_a_large_jpeg_is_decoded_in_full_whatever_the_overlay_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    y, x = np.mgrid[0:600, 0:900]
    stored = np.stack([x * 255 // 900, y * 255 // 600, (x + y) * 127 // 1500], -1)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned: 600 wide, 900 high
    path = tmp_path / "big.jpg"
    Image.fromarray(stored.astype(np.uint8)).save(path, exif=exif, quality=95)
    loaded = as_loaded(seeded(VolumeHeadNet), window=WINDOW, interpolation="bicubic")
    decoded: list[tuple[int, int]] = []

    def spied(*args: object, **kwargs: object) -> DecodedPhoto:
        photo = read_photo(*args, **kwargs)  # type: ignore[arg-type]
        decoded.append(photo.image.size)
        return photo

    monkeypatch.setattr("heatmap_cli.pipeline.scoring.read_photo", spied)
    full = read_image(path)
    for max_side in (150, 4096):  # a small display copy never makes the network's input coarser
        used = GridEngine(loaded, GridSettings(size=60, device="cpu"))
        reading = PhotoReading(max_display_side=max_side)
        prepared = prepare(ImageInput(path, Path("big")), used, reading=reading)
        geometry = used.plan((900, 600))
        assert decoded[-1] == (600, 900)
        assert prepared.passes[0].geometry == geometry
        want = resize_for_grid(full, geometry.input_size, "bicubic")
        np.testing.assert_array_equal(prepared.passes[0].pixels, want)
        np.testing.assert_array_equal(prepared.display, display_image(full, max_side))
