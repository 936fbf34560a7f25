"""Tests of heatmap_cli.io: reading every kind of input, finding files, atomic writes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps, features

from heatmap_cli.errors import ImageReadError, OutputWriteError, command_line_names
from heatmap_cli.io import (
    DEFAULT_MAX_PIXELS,
    ImageInput,
    atomic_writer,
    find_images,
    is_temporary_name,
    output_path,
    read_image,
    read_photo,
    remove_stale_temporaries,
    staged_files,
    write_json,
    write_npz,
    write_png,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def close_to(actual: object, expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, dtype=int) - np.asarray(expected)) <= tolerance))


def read_error(path: Path, **kwargs: object) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)  # type: ignore[arg-type]
    assert info.value.path == path
    assert str(info.value) == f"{path}: {info.value.reason}"
    return info.value


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------
# read_image: modes
# --------------------------------------------------------------------------------------


def test_default_limit_is_pillows_default() -> None:
    assert DEFAULT_MAX_PIXELS == 89_478_485
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_rgb_jpeg_is_returned_detached_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (30, 20), (10, 200, 30)).save(path, quality=95)
    image = read_image(path)
    assert image.mode == "RGB"
    assert image.size == (30, 20)
    assert close_to(image.getpixel((15, 10)), (10, 200, 30))
    path.unlink()  # the result no longer needs the file
    assert image.copy().size == (30, 20)


def test_grayscale(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), mode="L").save(path)
    array = pixels(read_image(path))
    assert array.shape == (1, 3, 3)
    assert array[0].tolist() == [[0, 0, 0], [100, 100, 100], [255, 255, 255]]


def test_one_bit(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    Image.fromarray(np.array([[False, True]])).convert("1").save(path)
    assert pixels(read_image(path))[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    rgba = np.array([[[255, 0, 0, 0], [255, 0, 0, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(path)
    array = pixels(read_image(path))[0]
    assert array[0].tolist() == list(WHITE)  # fully transparent red: white, not red/black
    assert array[1].tolist() == list(RED)
    assert close_to(array[2], (127, 127, 127), tolerance=1)  # half-transparent black


def test_la_is_composited_over_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), mode="LA").save(path)
    assert pixels(read_image(path))[0].tolist() == [list(WHITE), [0, 0, 0]]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"palette{suffix}"
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putdata([0, 1])
    image.save(path, transparency=0)
    assert pixels(read_image(path))[0].tolist() == [list(WHITE), list(BLUE)]


def test_palette_without_transparency(tmp_path: Path) -> None:
    path = tmp_path / "palette.bmp"
    image = Image.new("P", (2, 1))
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putdata([0, 1])
    image.save(path)
    assert pixels(read_image(path))[0].tolist() == [list(RED), list(BLUE)]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    cmyk = np.zeros((8, 32, 4), dtype=np.uint8)
    cmyk[:, 0:8] = (0, 255, 255, 0)  # red
    cmyk[:, 8:16] = (255, 0, 0, 0)  # cyan
    cmyk[:, 16:24] = (0, 0, 0, 255)  # black
    cmyk[:, 24:32] = (0, 0, 0, 0)  # paper white
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
        assert "adobe" in raw.info  # Pillow writes (and must undo) Adobe's inverted CMYK
    image = read_image(path)
    assert close_to(image.getpixel((4, 4)), RED)
    assert close_to(image.getpixel((12, 4)), (0, 255, 255))
    assert close_to(image.getpixel((20, 4)), (0, 0, 0))
    assert close_to(image.getpixel((28, 4)), WHITE)


def test_sixteen_bit_png_uses_the_full_range(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 1024).round().astype(np.uint16)
    Image.fromarray(np.tile(ramp, (2, 1))).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    array = pixels(read_image(path))
    grey = array[0, :, 0]
    assert (array == grey[None, :, None]).all()
    assert grey[0] == 0
    assert grey[-1] == 255
    assert (np.diff(grey) >= 0).all()
    assert len(np.unique(grey)) == 256  # scaled, not clipped at 255
    assert abs(grey[512] - 128) <= 1


def test_32_bit_integer_outside_16_bits_is_stretched(tmp_path: Path) -> None:
    path = tmp_path / "int.tif"
    values = np.array([[-1000, 0, 1_000_000]], dtype=np.int32)
    Image.fromarray(values, mode="I").save(path)
    assert pixels(read_image(path))[0, :, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1: scaled
        ([-2.0, 0.0, 2.0], [0, 128, 255]),  # elsewhere: stretched
        ([np.nan, 0.0, 1.0], [0, 0, 255]),
    ],
)
def test_float_images(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([values], dtype=np.float32), mode="F").save(path)
    assert pixels(read_image(path))[0, :, 0].tolist() == expected


def test_lab_tiff_is_converted_to_rgb(tmp_path: Path) -> None:
    from PIL import ImageCms

    path = tmp_path / "lab.tif"
    srgb_to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    ImageCms.applyTransform(Image.new("RGB", (4, 4), (200, 30, 30)), srgb_to_lab).save(path)
    assert close_to(read_image(path).getpixel((1, 1)), (200, 30, 30), tolerance=5)


# --------------------------------------------------------------------------------------
# read_image: orientation, frames, names
# --------------------------------------------------------------------------------------

# What each EXIF orientation asks a viewer to do to the stored pixels, in numpy terms.
DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_lossless(tmp_path: Path, orientation: int) -> None:
    stored = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "oriented.png"
    Image.fromarray(stored).save(path, exif=exif)
    image = read_image(path)
    np.testing.assert_array_equal(np.asarray(image), DISPLAY[orientation](stored))
    with Image.open(path) as raw:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(raw)), image)
    assert "exif" not in image.info  # applied, so it must not be applied again


@pytest.mark.parametrize(
    ("orientation", "marker_at"),
    [(6, (35, 4)), (8, (4, 75)), (3, (75, 35))],  # (x, y) in the displayed image
)
def test_exif_rotated_jpeg(tmp_path: Path, orientation: int, marker_at: tuple[int, int]) -> None:
    stored = np.full((40, 80, 3), 255, dtype=np.uint8)  # 80 wide, 40 high
    stored[:8, :8] = RED  # marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    image = read_image(path)
    assert image.size == ((80, 40) if orientation == 3 else (40, 80))
    assert close_to(image.getpixel(marker_at), RED, tolerance=40)
    assert not close_to(image.getpixel((4, 4)), RED, tolerance=40)


def smooth_photo(width: int, height: int) -> np.ndarray:
    """uint8 (height, width, 3): gradients with a marker, like a photo at a modest zoom."""
    y, x = np.mgrid[0:height, 0:width]
    stored = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    stored[: height // 8, : width // 8] = RED  # a marker in the stored top-left corner
    return stored.astype(np.uint8)


@pytest.mark.parametrize("orientation", [1, 6, 8, 3])
def test_read_photo_decodes_a_jpeg_no_larger_than_needed(
    tmp_path: Path, orientation: int
) -> None:
    stored = smooth_photo(1024, 640)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "big.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    full = read_image(path)
    asked: list[tuple[int, int]] = []

    def needed(size: tuple[int, int]) -> tuple[int, int]:
        asked.append(size)
        return size[0] // 4, size[1] // 4

    photo = read_photo(path, needed=needed)
    shown = (full.height, full.width)
    assert asked == [shown] and photo.original_size == shown
    assert (photo.image.height, photo.image.width) == (shown[0] // 4, shown[1] // 4)
    # The same picture as the full decode shrunk: within a few levels of 255 on gradients.
    shrunk = np.asarray(full.resize(photo.image.size, Image.Resampling.BOX)).astype(int)
    assert np.abs(pixels(photo.image) - shrunk).mean() < 2
    assert photo.image.info == {} and photo.image.mode == "RGB"


def test_read_photo_never_decodes_below_what_is_needed(tmp_path: Path) -> None:
    path = tmp_path / "odd.jpg"
    Image.fromarray(smooth_photo(1001, 603)).save(path, quality=90)
    for least in [(603, 1001), (302, 501), (301, 500), (75, 125), (1, 1)]:
        image = read_photo(path, needed=lambda _, least=least: least).image
        assert image.height >= least[0] and image.width >= least[1]
        scale = round(1001 / image.width)
        assert scale in (1, 2, 4, 8) and image.size == (-(-1001 // scale), -(-603 // scale))
        # Not needlessly large: within twice the need on a side, unless at libjpeg's 1/8 already
        assert scale == 8 or image.width <= 2 * least[1] or image.height <= 2 * least[0]


def test_read_photo_decodes_other_formats_in_full(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    stored = smooth_photo(256, 128)
    Image.fromarray(stored).save(path)
    photo = read_photo(path, needed=lambda size: (size[0] // 8, size[1] // 8))
    assert photo.original_size == (128, 256)
    np.testing.assert_array_equal(np.asarray(photo.image), stored)


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_animation_gives_the_first_frame(tmp_path: Path, suffix: str) -> None:
    if suffix == ".webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    path = tmp_path / f"animated{suffix}"
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 255, 0), BLUE)]
    options = {"lossless": True} if suffix == ".webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, **options)
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 3
    assert close_to(read_image(path).getpixel((8, 8)), RED, tolerance=2)


def test_non_ascii_file_name(tmp_path: Path) -> None:
    path = tmp_path / "café_猫.jpg"
    Image.new("RGB", (8, 8), BLUE).save(path)
    assert close_to(read_image(path).getpixel((4, 4)), BLUE)
    assert find_images([tmp_path]) == [ImageInput(path, Path("café_猫"))]


def test_odd_extension_is_decoded_by_content(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (4, 4), RED).save(path, format="PNG")
    assert read_image(path).getpixel((0, 0)) == RED


def test_rgb_icc_profile_is_kept_for_outputs(tmp_path: Path) -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "tagged.png"
    Image.new("RGB", (4, 4), RED).save(path, icc_profile=profile)
    assert read_image(path).info == {"icc_profile": profile}


# --------------------------------------------------------------------------------------
# read_image: failures
# --------------------------------------------------------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    assert read_error(path).reason == "empty file"


def test_text_with_an_image_extension(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a photo\n", encoding="utf-8")
    assert read_error(path).reason == "not an image (unrecognized format)"


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image(tmp_path: Path, suffix: str) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(noise).save(full)
    data = full.read_bytes()
    half = tmp_path / f"half{suffix}"
    half.write_bytes(data[: len(data) // 2])
    assert read_error(half).reason == "truncated or corrupt image data"
    header_only = tmp_path / f"header{suffix}"
    header_only.write_bytes(data[:40])  # too short even to identify: still "corrupt"
    assert read_error(header_only).reason == "truncated or corrupt image data"


def bomb_png(path: Path, width: int, height: int) -> Path:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b""))
    return path


def test_decompression_bomb_fails_on_the_header(tmp_path: Path) -> None:
    path = bomb_png(tmp_path / "bomb.png", 40_000, 40_000)
    start = time.perf_counter()
    error = read_error(path)
    assert time.perf_counter() - start < 1.0
    assert error.reason == (
        "image has 40000 x 40000 = 1600000000 pixels, above the limit of 89478485; "
        "raise it with max_pixels"
    )
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS


def test_max_pixels_is_checked_exactly(tmp_path: Path) -> None:
    path = tmp_path / "ten_by_ten.png"
    Image.new("RGB", (10, 10)).save(path)
    assert read_image(path, max_pixels=100).size == (10, 10)
    assert read_error(path, max_pixels=99).reason == (
        "image has 10 x 10 = 100 pixels, above the limit of 99; raise it with max_pixels"
    )
    with command_line_names():  # as the command says it
        assert read_error(path, max_pixels=99).reason.endswith("raise it with --max-pixels")
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(path, max_pixels=0)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".gif", ".jpg"])
def test_max_pixels_overrides_pillows_global_without_changing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    path = tmp_path / f"big{suffix}"
    Image.new("RGB", (40, 30), BLUE).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would refuse 1200 > 2 * 100
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert read_image(path, max_pixels=None).size == (40, 30)
    assert read_image(path, max_pixels=5000).size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_concurrent_reads_keep_pillows_global(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    paths = []
    for index, size in enumerate([(10, 10), (40, 40), (20, 30), (60, 10)]):
        path = tmp_path / f"{index}.tif"
        Image.new("RGB", size, RED).save(path)
        paths.append(path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        sizes = list(pool.map(lambda p: read_image(p, max_pixels=None).size, paths * 25))
    assert sizes == [(10, 10), (40, 40), (20, 30), (60, 10)] * 25
    assert Image.MAX_IMAGE_PIXELS == 500


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert read_error(tmp_path / "nope.jpg").reason == "no such file or directory"
    assert read_error(tmp_path).reason == "is a directory"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    assert read_error(path).reason == "not a regular file"


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod does not stop root, so simulate the refusal the operating system would give.
    path = tmp_path / "secret.jpg"
    Image.new("RGB", (4, 4)).save(path)
    real_open = Path.open

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", refuse)
    assert read_error(path).reason == "permission denied"


# --------------------------------------------------------------------------------------
# find_images
# --------------------------------------------------------------------------------------


def touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="PNG")
    return path


def test_find_images_nested_folder_and_explicit_files(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for name in ["a/x.jpg", "b/x.jpg", "b/x.png", "b/deep/y.JPEG", "UPPER.JPG", "z.tiff"]:
        touch_image(photos / name)
    touch_image(photos / ".hidden.jpg")
    touch_image(photos / ".cache" / "thumb.jpg")
    touch_image(photos / "b" / ".x.jpg.123-0123abcd.tmp")
    (photos / "notes.txt").write_text("skip me", encoding="utf-8")
    odd = touch_image(tmp_path / "elsewhere" / "scan.dat")
    explicit = touch_image(tmp_path / "elsewhere" / "x.jpg")

    found = find_images([photos, odd, explicit])
    assert [(p.relative_to(tmp_path).as_posix(), s.as_posix()) for p, s in found] == [
        ("photos/UPPER.JPG", "UPPER"),
        ("photos/a/x.jpg", "a/x"),
        ("photos/b/deep/y.JPEG", "b/deep/y"),
        ("photos/b/x.jpg", "b/x.jpg"),  # same stem in one folder: extensions kept
        ("photos/b/x.png", "b/x.png"),
        ("photos/z.tiff", "z"),
        ("elsewhere/scan.dat", "scan"),  # explicit: odd extension accepted
        ("elsewhere/x.jpg", "x"),
    ]
    assert all(isinstance(item, ImageInput) for item in found)
    assert find_images([photos, odd, explicit]) == found  # deterministic


def test_single_file_input(tmp_path: Path) -> None:
    path = touch_image(tmp_path / "deep" / "photo.v2.jpg")
    assert find_images([path]) == [(path, Path("photo.v2"))]


def test_same_name_given_as_two_files(tmp_path: Path) -> None:
    first = touch_image(tmp_path / "a" / "x.jpg")
    second = touch_image(tmp_path / "b" / "x.jpg")
    third = touch_image(tmp_path / "c" / "x.jpg")
    stems = [stem.as_posix() for _, stem in find_images([first, second, third])]
    assert stems == ["x.jpg", "x.jpg~2", "x.jpg~3"]


def test_same_tree_under_two_folder_inputs(tmp_path: Path) -> None:
    touch_image(tmp_path / "one" / "a" / "x.jpg")
    touch_image(tmp_path / "two" / "a" / "x.jpg")
    stems = [s.as_posix() for _, s in find_images([tmp_path / "one", tmp_path / "two"])]
    assert stems == ["a/x.jpg", "a/x.jpg~2"]


def test_stems_that_differ_only_in_case_or_normalisation(tmp_path: Path) -> None:
    touch_image(tmp_path / "Cat.png")
    touch_image(tmp_path / "cat.jpg")
    touch_image(tmp_path / "cafe\u0301.jpg")  # decomposed é
    touch_image(tmp_path / "caf\u00e9.png")  # composed é
    stems = sorted(s.as_posix() for _, s in find_images([tmp_path]))
    assert stems == sorted(["Cat.png", "cat.jpg", "cafe\u0301.jpg", "caf\u00e9.png"])


def test_disambiguation_does_not_create_new_collisions(tmp_path: Path) -> None:
    for name in ["x.jpg", "x.png", "x.jpg.png"]:
        touch_image(tmp_path / name)
    found = find_images([tmp_path])
    stems = [s.as_posix() for _, s in found]
    assert len({stem.casefold() for stem in stems}) == 3
    assert dict(zip([p.name for p, _ in found], stems, strict=True)) == {
        "x.jpg": "x.jpg",
        "x.jpg.png": "x.jpg~2",
        "x.png": "x.png",
    }


def test_a_file_reached_twice_is_kept_once(tmp_path: Path) -> None:
    photo = touch_image(tmp_path / "photos" / "a" / "x.jpg")
    found = find_images([tmp_path / "photos", photo, tmp_path / "photos" / "a"])
    assert found == [(tmp_path / "photos" / "a" / "x.jpg", Path("a/x"))]


def test_symlink_loops_end(tmp_path: Path) -> None:
    touch_image(tmp_path / "photos" / "x.jpg")
    (tmp_path / "photos" / "loop").symlink_to(tmp_path / "photos", target_is_directory=True)
    assert [s for _, s in find_images([tmp_path / "photos"])] == [Path("x")]


def test_broken_link_is_listed_so_reading_reports_it(tmp_path: Path) -> None:
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    [(path, stem)] = find_images([tmp_path])
    assert stem == Path("gone")
    assert read_error(path).reason == "no such file or directory"


def test_output_folder_inside_input_is_excluded(tmp_path: Path) -> None:
    touch_image(tmp_path / "x.jpg")
    touch_image(tmp_path / "out" / "x_cat.png")
    assert [s for _, s in find_images([tmp_path], exclude=[tmp_path / "out"])] == [Path("x")]
    assert len(find_images([tmp_path])) == 2


def test_missing_input_is_reported(tmp_path: Path) -> None:
    touch_image(tmp_path / "x.jpg")
    with pytest.raises(ImageReadError) as info:
        find_images([tmp_path, tmp_path / "typo"])
    assert info.value.path == tmp_path / "typo"
    assert info.value.reason == "no such file or directory"


def test_empty_folder_gives_no_images(tmp_path: Path) -> None:
    assert find_images([tmp_path]) == []


def test_output_path_keeps_dots_in_stems(tmp_path: Path) -> None:
    assert output_path(tmp_path, Path("a/x.jpg"), ".npz") == tmp_path / "a" / "x.jpg.npz"
    assert output_path(tmp_path, Path("photo.v2"), "_cat.png") == tmp_path / "photo.v2_cat.png"


# --------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------


def test_write_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for channels in (3, 4):
        image = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)
        path = tmp_path / "nested" / "deeper" / f"out{channels}.png"
        write_png(path, image)
        with Image.open(path) as written:
            np.testing.assert_array_equal(np.asarray(written), image)
    assert no_temporaries(tmp_path)


def test_write_png_embeds_a_profile(tmp_path: Path) -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    write_png(tmp_path / "p.png", np.zeros((2, 2, 3), np.uint8), icc_profile=profile)
    with Image.open(tmp_path / "p.png") as written:
        assert written.info["icc_profile"] == profile


@pytest.mark.parametrize(
    ("array", "error"),
    [
        (np.zeros((4, 4, 3), np.float32), TypeError),
        (np.zeros((4, 4), np.uint8), ValueError),
        (np.zeros((4, 4, 2), np.uint8), ValueError),
        (np.zeros((0, 4, 3), np.uint8), ValueError),
    ],
)
def test_write_png_validates(tmp_path: Path, array: np.ndarray, error: type) -> None:
    with pytest.raises(error):
        write_png(tmp_path / "bad.png", array)
    assert list(tmp_path.iterdir()) == []


def test_write_npz_keeps_the_name_and_loads_without_pickle(tmp_path: Path) -> None:
    logits = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_npz(tmp_path / "x.npz", logits=logits, stride=np.int64(32), classes=["cat", "café"])
    write_npz(tmp_path / "no_extension", logits=logits)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_extension", "x.npz"]
    with np.load(tmp_path / "x.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["logits"], logits)
        assert data["logits"].dtype == np.float32
        assert int(data["stride"]) == 32
        assert data["classes"].tolist() == ["cat", "café"]
    with np.load(tmp_path / "no_extension", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["logits"], logits)


def test_write_npz_refuses_object_arrays(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="pickle"):
        write_npz(tmp_path / "x.npz", classes=np.array(["a", None], dtype=object))
    assert list(tmp_path.iterdir()) == []


def test_write_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    obj = {
        "name": "café 猫",
        "peak": np.float32(0.5),
        "index": np.int64(281),
        "ok": np.bool_(True),
        "size": (224, 224),
        "grid": np.arange(3),
        np.int64(7): "numpy key",
        "path": Path("a/b"),
    }
    write_json(path, obj)
    text = path.read_text(encoding="utf-8")
    assert "café 猫" in text  # not \u escapes
    assert text.endswith("}\n")
    assert json.loads(text) == {
        "name": "café 猫",
        "peak": 0.5,
        "index": 281,
        "ok": True,
        "size": [224, 224],
        "grid": [0, 1, 2],
        "7": "numpy key",
        "path": "a/b",
    }
    assert text.startswith('{\n  "name"')


def test_write_json_refuses_nan_before_touching_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("old", encoding="utf-8")
    with pytest.raises(ValueError, match="JSON"):
        write_json(path, {"peak": np.float32("nan")})
    assert path.read_text(encoding="utf-8") == "old"
    assert no_temporaries(tmp_path)


def test_atomic_writer_text_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    with atomic_writer(path, "w") as file:
        file.write("line\n")
    assert path.read_bytes() == b"line\n"
    with pytest.raises(ValueError, match="mode"):
        atomic_writer(path, "a")  # type: ignore[call-overload]


def test_temporary_file_is_hidden_and_in_the_same_folder(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.npz"
    with atomic_writer(path) as file:
        [temporary] = list((tmp_path / "sub").iterdir())
        assert temporary.name.startswith(".x.npz.")
        assert temporary.name.endswith(".tmp")
        assert is_temporary_name(temporary.name)
        assert not path.exists()
        file.write(b"data")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.npz"]


def test_final_file_gets_normal_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "x.json", {})
    finally:
        os.umask(umask)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def write_then_raise(path: Path, interruption: BaseException) -> None:
    with atomic_writer(path) as file:
        file.write(b"half of the new content")
        file.flush()
        raise interruption


@pytest.mark.parametrize("interruption", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_write_leaves_no_temporary_and_keeps_the_old_file(
    tmp_path: Path, interruption: BaseException
) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"previous complete file")
    with pytest.raises(type(interruption)):
        write_then_raise(path, interruption)
    assert path.read_bytes() == b"previous complete file"
    assert no_temporaries(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_interrupted_write_of_a_new_file_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        write_then_raise(tmp_path / "new.npz", KeyboardInterrupt())
    assert list(tmp_path.iterdir()) == []


def test_interrupt_inside_a_writer_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"old")

    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        write_png(path, np.zeros((4, 4, 3), np.uint8))
    assert path.read_bytes() == b"old"
    assert no_temporaries(tmp_path)


def test_parent_path_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    with pytest.raises(OutputWriteError) as info:
        write_json(blocker / "x.json", {})
    assert str(info.value) == (
        f"cannot write {blocker / 'x.json'}: {blocker} or one of its parents is not a folder"
    )
    with pytest.raises(OutputWriteError, match="not a folder"):
        write_json(blocker / "deeper" / "x.json", {})


def test_target_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "x.png").mkdir()
    with pytest.raises(OutputWriteError) as info:
        write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8))
    assert str(info.value) == f"cannot write {tmp_path / 'x.png'}: is a directory"
    assert no_temporaries(tmp_path)


def test_permission_denied_on_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod does not stop root, so make the rename fail the way a read-only folder would.
    path = tmp_path / "x.json"
    path.write_text("old", encoding="utf-8")

    def refuse(source: object, target: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputWriteError) as info:
        write_json(path, {"new": 1})
    assert str(info.value) == f"cannot write {path}: permission denied"
    assert path.read_text(encoding="utf-8") == "old"
    assert no_temporaries(tmp_path)


def test_unwritable_folder_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def read_only(path: object, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT:
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputWriteError, match="read-only file system"):
        write_npz(tmp_path / "x.npz", a=np.zeros(2))


def test_disk_full_inside_the_block_is_an_output_error(tmp_path: Path) -> None:
    with (
        pytest.raises(OutputWriteError, match="no space left on device"),
        atomic_writer(tmp_path / "x.bin"),
    ):
        raise OSError(28, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_to_one_folder(tmp_path: Path) -> None:
    def write(index: int) -> None:
        write_json(tmp_path / "shared" / f"{index % 5}.json", {"index": index})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [
        f"{i}.json" for i in range(5)
    ]
    for i in range(5):
        assert json.loads((tmp_path / "shared" / f"{i}.json").read_text())["index"] % 5 == i


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    running = os.getpid()  # a process that runs: only age makes its temporaries stale
    old = tmp_path / "a" / f".x.png.{running}-0123abcd.tmp"
    young = tmp_path / f".y.json.{running}-89abcdef.tmp"
    unrelated = [tmp_path / ".keep.tmp", tmp_path / "a" / "x.png", tmp_path / "notes.tmp"]
    for path in [old, young, *unrelated]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    two_hours_ago = time.time() - 7200
    for path in [old, *unrelated]:
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert remove_stale_temporaries(tmp_path) == [old]
    assert not old.exists()
    assert young.exists()
    assert all(path.exists() for path in unrelated)
    assert remove_stale_temporaries(tmp_path / "missing") == []
    assert remove_stale_temporaries(tmp_path, min_age_s=0) == [young]


def test_temporaries_of_a_process_that_is_gone_are_stale_at_once(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    file = tmp_path / f".x.json.{gone.pid}-0123abcd.tmp"
    folder = tmp_path / "a" / f".x.{gone.pid}-89abcdef.tmp"  # a staging folder, with content
    (folder / "deeper").mkdir(parents=True)
    (folder / "deeper" / "x.npz").write_bytes(b"npz")
    file.write_bytes(b"")
    live = tmp_path / f".y.json.{os.getpid()}-0123abcd.tmp"
    live.write_bytes(b"")

    removed = remove_stale_temporaries(tmp_path)

    assert sorted(removed) == sorted([file, folder])
    assert not file.exists() and not folder.exists()
    assert live.exists()


def test_unreachable_input_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod does not stop root, so make stat fail the way a folder without "x" would.
    hidden = tmp_path / "locked" / "x.jpg"
    real_stat = Path.stat

    def refuse(self: Path, **kwargs: object) -> os.stat_result:
        if self == hidden:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", refuse)
    with pytest.raises(ImageReadError) as info:
        find_images([hidden])
    assert info.value.reason == "permission denied"


def test_unlistable_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch_image(tmp_path / "photos" / "sub" / "x.jpg")
    real_scandir = os.scandir

    def refuse(path: object) -> object:
        if Path(path) == tmp_path / "photos" / "sub":  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(ImageReadError) as info:
        find_images([tmp_path / "photos"])
    assert info.value.path == tmp_path / "photos" / "sub"
    assert info.value.reason == "cannot list folder: permission denied"


def test_explicit_broken_link_is_kept(tmp_path: Path) -> None:
    link = tmp_path / "gone.jpg"
    link.symlink_to(tmp_path / "missing.jpg")
    assert find_images([link]) == [(link, Path("gone"))]


def test_write_json_escapes_names_that_are_not_utf8(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.jpg")  # what Python makes of a Latin-1 name on a UTF-8 system
    path = tmp_path / os.fsdecode(b"caf\xe9.json")

    write_json(path, {"image": name, "plain": "café"})

    raw = (tmp_path / "caf\udce9.json").read_bytes()
    assert b'"caf\\udce9.jpg"' in raw and "café".encode() in raw
    raw.decode("utf-8")  # valid UTF-8
    assert json.loads(raw)["image"] == name
    assert os.fsencode(json.loads(raw)["image"]) == b"caf\xe9.jpg"


def test_find_images_reports_unreadable_entries_and_goes_on(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    touch_image(photos / "a.jpg")
    touch_image(photos / "sub" / "b.jpg")
    (photos / "x").symlink_to("x")
    (photos / "y.jpg").symlink_to("y.jpg")
    (tmp_path / "loop.png").symlink_to("loop.png")
    problems: list[ImageReadError] = []

    found = find_images([tmp_path / "loop.png", photos], on_error=problems.append)

    assert [stem.as_posix() for _, stem in found] == ["a", "sub/b"]
    assert [(p.path, p.reason) for p in problems] == [
        (tmp_path / "loop.png", "too many levels of symbolic links"),
        (photos / "x", "too many levels of symbolic links"),
        (photos / "y.jpg", "too many levels of symbolic links"),
    ]
    with pytest.raises(ImageReadError, match="too many levels"):  # without on_error
        find_images([photos])
    with pytest.raises(ImageReadError, match="no such file"):  # a missing input, always
        find_images([tmp_path / "typo"], on_error=problems.append)


def test_staged_files_are_moved_into_place_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    moves: list[str] = []
    real_replace = os.replace

    def replace(source: object, destination: object) -> None:
        if Path(str(destination)).parent == out:
            moves.append(Path(str(destination)).name)
        real_replace(source, destination)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    with staged_files(out, "x") as staging:
        assert staging.folder.parent == out
        assert is_temporary_name(staging.folder.name)
        for name in ("x.npz", "x.json"):
            (staging.folder / name).write_text(name, encoding="utf-8")
        paths = staging.commit(["x.npz", "x.json"])

    assert moves == ["x.npz", "x.json"]
    assert paths == [out / "x.npz", out / "x.json"]
    assert sorted(p.name for p in out.iterdir()) == ["x.json", "x.npz"]


def _stage_and_interrupt(out: Path) -> None:
    with staged_files(out, "x") as staging:
        (staging.folder / "x.png").write_text("this run's", encoding="utf-8")
        (staging.folder / "x.npz").write_text("this run's", encoding="utf-8")
        staging.commit(["x.npz"])
        raise KeyboardInterrupt


def test_leaving_staging_removes_only_the_private_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_text("another run's finished overlay", encoding="utf-8")

    with pytest.raises(KeyboardInterrupt):
        _stage_and_interrupt(out)

    assert sorted(p.name for p in out.iterdir()) == ["x.npz", "x.png"]
    assert (out / "x.png").read_text(encoding="utf-8") == "another run's finished overlay"


def _stage_and_commit(out: Path, name: str) -> None:
    with staged_files(out, "x") as staging:
        (staging.folder / name).write_bytes(b"data")
        staging.commit([name])


def test_a_file_that_cannot_be_moved_into_place_is_named(tmp_path: Path) -> None:
    (tmp_path / "x.npz").mkdir()  # a folder where the file should go

    with pytest.raises(OutputWriteError) as info:
        _stage_and_commit(tmp_path, "x.npz")

    assert str(info.value) == f"cannot write {tmp_path / 'x.npz'}: is a directory"
    assert no_temporaries(tmp_path)
