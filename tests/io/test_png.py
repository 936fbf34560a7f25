"""The PNG writer: every picture decodes back to the same pixels, whichever deflate is used."""

import io

import numpy as np
import pytest
from PIL import Image

from heatmap_cli.io import png


@pytest.fixture(params=["installed", "zlib"])
def deflate(request, monkeypatch):
    """The deflate the writer picks (ISA-L where installed), and the standard library's."""
    if request.param == "zlib":
        monkeypatch.setattr(png, "_FAST_ZLIB", None)
    return png.deflate_backend()


def _pictures(channels: int) -> list[np.ndarray]:
    rng = np.random.default_rng(channels)
    noise = rng.integers(0, 256, (37, 53, channels), dtype=np.uint8)
    ramp = np.linspace(0, 255, 64 * 48 * channels).reshape(48, 64, channels).astype(np.uint8)
    one_pixel = rng.integers(0, 256, (1, 1, channels), dtype=np.uint8)
    strided = rng.integers(0, 256, (20, 30, channels + 1), dtype=np.uint8)[:, ::2, :channels]
    return [noise, ramp, one_pixel, strided]


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("level", [0, 1, 3, 6, 9])
def test_decodes_to_the_same_pixels(deflate, channels, level):
    for picture in _pictures(channels):
        decoded = Image.open(io.BytesIO(png.encode_png(picture, level=level)))
        assert decoded.mode == ("RGB" if channels == 3 else "RGBA")
        np.testing.assert_array_equal(np.asarray(decoded), picture)


def test_keeps_the_colour_profile(deflate):
    profile = bytes(range(256)) * 3
    picture = _pictures(3)[0]
    decoded = Image.open(io.BytesIO(png.encode_png(picture, icc_profile=profile)))
    assert decoded.info["icc_profile"] == profile
    np.testing.assert_array_equal(np.asarray(decoded), picture)


@pytest.mark.parametrize(
    ("picture", "level", "reason"),
    [
        (np.zeros((4, 4, 3), np.float32), 1, "expected a uint8"),
        (np.zeros((4, 4), np.uint8), 1, "expected a uint8"),
        (np.zeros((4, 4, 2), np.uint8), 1, "expected a uint8"),
        (np.zeros((0, 4, 3), np.uint8), 1, "empty image"),
        (np.zeros((4, 4, 3), np.uint8), 10, "level must be"),
    ],
)
def test_refuses_what_it_cannot_write(picture, level, reason):
    with pytest.raises(ValueError, match=reason):
        png.encode_png(picture, level=level)
