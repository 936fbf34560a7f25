"""Photos decoded ahead, during start-up, are what the loader would have decoded itself."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heatmap_cli.errors import ImageReadError
from heatmap_cli.io import ImageInput, read_photo
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.read_ahead import decode_ahead, decoded
from heatmap_cli.pipeline.scoring import ImageResult, score_images
from heatmap_cli.pipeline.settings import PhotoReading
from heatmap_cli.pipeline.thread_warnings import show_library_warnings_every_time
from tests.helpers.nets import WINDOW, VolumeHeadNet, seeded
from tests.helpers.toys import as_loaded


def damaged_exif(path: Path) -> Path:
    """A JPEG whose EXIF block is cut short: Pillow warns while reading it."""
    exif = Image.Exif()
    exif[0x010E] = "a description long enough to be stored at an offset " * 3
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (70, 95, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif.tobytes()[:-60])
    return path


def test_a_photo_decoded_ahead_is_the_one_read_now(tmp_path: Path):
    show_library_warnings_every_time()
    path = damaged_exif(tmp_path / "d.jpg")
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always")
        now = read_photo(path)
    caught: list[str] = []
    ahead = decoded(decode_ahead(path, PhotoReading()), caught)
    assert np.array_equal(np.asarray(ahead.image), np.asarray(now.image))
    assert ahead.original_size == now.original_size
    assert caught == [" ".join(str(raised[0].message).split())]  # its warning goes with it


def test_a_photo_that_cannot_be_read_fails_as_it_would_now(tmp_path: Path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not much of a jpeg")
    with pytest.raises(ImageReadError) as now:
        read_photo(path)
    with pytest.raises(ImageReadError) as ahead:
        decoded(decode_ahead(path, PhotoReading()), [])
    assert str(ahead.value) == str(now.value)


def test_the_loader_scores_a_photo_decoded_ahead_as_its_own(tmp_path: Path):
    show_library_warnings_every_time()  # as the command does: each photo says its damage
    path = damaged_exif(tmp_path / "d.jpg")
    loaded = as_loaded(seeded(VolumeHeadNet), window=WINDOW, interpolation="bicubic")
    # dense: auto's exact cells depend on the time measured, so two runs may differ
    engine = GridEngine(loaded, GridSettings(size=60, device="cpu", method="dense"))
    items = [ImageInput(path, Path("d"))]
    (plain,) = score_images(items, engine)
    ahead = {path: decode_ahead(path, PhotoReading())}
    (early,) = score_images(items, engine, ahead=ahead)
    assert isinstance(plain.result, ImageResult)
    assert isinstance(early.result, ImageResult)
    assert np.array_equal(early.result.grid.logits, plain.result.grid.logits)
    assert np.array_equal(early.result.display, plain.result.display)
    assert early.result.notes == plain.result.notes
    assert early.result.notes  # the damaged EXIF is said for the photo
