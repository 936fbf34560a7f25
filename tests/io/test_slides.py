"""Slides read by region: every layout, both readers, microns per pixel, thumbnails, bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from heatmap_cli.errors import SlideReadError
from tests.helpers.slides import require_slides, slide_pixels, write_slide

require_slides()

from heatmap_cli.io.slides import is_slide, open_slide  # noqa: E402
from heatmap_cli.io.slides.openslide import OpenSlideSlide  # noqa: E402
from heatmap_cli.io.slides.tiff import ome_mpp, resolution_mpp  # noqa: E402

SIZE = (600, 800)


@pytest.mark.parametrize(
    ("layout", "name", "vendor", "mpp", "levels"),
    [
        ("aperio", "a.svs", "aperio", (0.5, 0.5), 3),
        ("generic", "g.tif", "generic-tiff", None, 3),
        ("ome", "o.ome.tif", "ome", (0.5, 0.5), 3),
        ("strips", "s.tif", "flat-tiff", None, 1),
    ],
)
def test_every_layout_reads_the_same_pixels_by_region(tmp_path, layout, name, vendor, mpp, levels):
    path = write_slide(tmp_path / name, SIZE, layout=layout, compression="zlib")
    reference = slide_pixels(SIZE)
    with open_slide(path) as slide:
        assert slide.reader == "tifffile"
        assert slide.vendor == vendor
        assert slide.mpp == mpp
        assert len(slide.levels) == levels
        assert slide.size == SIZE
        region = slide.read(0, 123, 301, 77, 150)
        np.testing.assert_array_equal(region, reference[123:200, 301:451])
        if levels > 1:
            assert slide.levels[1].downsample == pytest.approx(4.0)
            coarse = slide_pixels(SIZE, downsample=4)
            np.testing.assert_array_equal(slide.read(1, 10, 20, 30, 40), coarse[10:40, 20:60])


def test_openslide_reads_what_tifffile_reads(tmp_path):
    path = write_slide(tmp_path / "a.svs", SIZE, compression="zlib")
    with open_slide(path) as first, OpenSlideSlide(path) as second:
        assert second.vendor == "aperio"
        assert second.mpp == (0.5, 0.5)
        assert [lvl.size for lvl in second.levels] == [lvl.size for lvl in first.levels]
        for level in (0, 1):
            np.testing.assert_array_equal(
                second.read(level, 5, 7, 64, 96), first.read(level, 5, 7, 64, 96)
            )


def test_the_thumbnail_is_the_slide_shrunk_in_bands(tmp_path, monkeypatch):
    import heatmap_cli.io.slides.base as base

    path = write_slide(tmp_path / "s.tif", SIZE, layout="strips", compression=None)
    monkeypatch.setattr(base, "THUMBNAIL_BAND_PIXELS", 800 * 40)  # many bands
    with open_slide(path) as slide:
        thumbnail, downsample = slide.thumbnail(200)
    assert thumbnail.shape == (150, 200, 3)
    assert downsample == pytest.approx(4.0)
    whole = np.asarray(Image.fromarray(slide_pixels(SIZE)).resize((200, 150), Image.Resampling.BOX))
    assert np.abs(thumbnail.astype(int) - whole).max() <= 1


def test_slide_extensions_are_found_in_folders():
    from heatmap_cli.io import IMAGE_EXTENSIONS
    from heatmap_cli.io.slides import SLIDE_EXTENSIONS

    # but .dcm: a DICOM slide is a folder of instances, read by giving one of them
    assert SLIDE_EXTENSIONS - {"dcm"} <= IMAGE_EXTENSIONS


def test_which_files_are_slides(tmp_path):
    svs = write_slide(tmp_path / "a.svs", (300, 400))
    flat = write_slide(tmp_path / "flat.tif", (300, 400), layout="strips", compression=None)
    photo = tmp_path / "p.jpg"
    Image.new("RGB", (10, 10)).save(photo)
    assert is_slide(svs, 10**9)
    assert not is_slide(flat, 10**9)  # a small flat TIFF is a photo...
    assert is_slide(flat, 1000)  # ...and a slide once above the photo decoding limit
    assert not is_slide(photo, 1)


def test_microns_per_pixel_from_resolution_tags_and_ome():
    assert resolution_mpp(3, (20000, 1), (20000, 1)) == pytest.approx((0.5, 0.5))  # px per cm
    assert resolution_mpp(2, (50800, 1), (50800, 1)) == pytest.approx((0.5, 0.5))  # px per inch
    assert resolution_mpp(2, (72, 1), (72, 1)) is None  # a 72 dpi default: not a measurement
    assert resolution_mpp(1, (1, 1), (1, 1)) is None
    xml = (
        '<Pixels PhysicalSizeX="0.25" PhysicalSizeXUnit="µm" '
        'PhysicalSizeY="250" PhysicalSizeYUnit="nm"/>'
    )
    assert ome_mpp(xml) == pytest.approx((0.25, 0.25))


def test_a_truncated_slide_is_one_line_naming_it(tmp_path):
    path = write_slide(tmp_path / "cut.svs", SIZE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    def read_everything() -> None:
        with open_slide(path) as slide:
            for level in range(len(slide.levels)):
                rows, cols = slide.levels[level].size
                slide.read(level, 0, 0, rows, cols)

    with pytest.raises(SlideReadError) as caught:
        read_everything()
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert "again" in message  # what to do


def test_a_corrupt_tile_is_one_line_naming_the_place(tmp_path):
    import tifffile

    path = write_slide(tmp_path / "bad.svs", SIZE)
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(data))
    with open_slide(path) as slide, pytest.raises(SlideReadError) as caught:
        slide.read(0, 0, 0, 600, 800)
    assert "cannot decode level 0" in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["scan.mrxs", "scan.svs", "empty.ndpi"])
def test_an_unsupported_or_empty_file_says_what_to_do(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name.startswith("empty") else b"not a slide at all" * 10)
    with pytest.raises(SlideReadError) as caught:
        open_slide(path)
    assert str(path) in str(caught.value)
    if not name.startswith("empty"):
        assert "convert it" in str(caught.value)


def test_regions_outside_the_level_are_refused(tmp_path):
    path = write_slide(tmp_path / "a.svs", (300, 400))
    with open_slide(path) as slide, pytest.raises(SlideReadError, match="leaves level 0"):
        slide.read(0, 250, 0, 100, 10)


def test_grey_16_bit_and_many_band_tiffs_become_rgb(tmp_path):
    import tifffile

    from heatmap_cli.io.slides.tiff import as_rgb8

    grey16 = (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 13) % 65535
    path = tmp_path / "grey16.tif"
    tifffile.imwrite(path, grey16, tile=(32, 32))
    with open_slide(path) as slide:
        region = slide.read(0, 8, 16, 20, 30)
    np.testing.assert_array_equal(region, np.repeat((grey16[8:28, 16:46] >> 8)[..., None], 3, 2))
    bands = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    np.testing.assert_array_equal(as_rgb8(bands), bands[..., :3])
