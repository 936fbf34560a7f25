"""End-to-end placement: a class that fires on a red square peaks on the square.

The network is built by hand so that what it sees is known exactly: a 1x1 convolution computes
"redness" ``relu(R - (G + B) / 2 - 0.25)`` per pixel, an 8x8 average pool sets the native stride
to 8, and the head averages the map over the 64x64 window and scales it into the logit of class 1
("red square"); class 0 ("background") is a constant. No layer pads, so every cell of the grid is
exactly the classifier's answer on its window, and the window that best covers a square of the
window's size is the one centred on it. Photos of several sizes and aspect ratios (and one whose
EXIF orientation rotates it) go through the command; the peak in the json, and the maximum of the
heat map as it is drawn, must fall within one stride of the square's centre in original pixels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from heatmap_cli.cli.options import main
from heatmap_cli.models import LoadedModel
from heatmap_cli.render import cell_values_to_image
from tests.helpers.toys import as_loaded

WINDOW = 64
NATIVE_STRIDE = 8
SIZE = 128  # --size: shorter sides become 128 = 64 + 8 * 8
RED = (230, 20, 30)


class RedSquareNet(nn.Module):
    """Class 1's logit is 10x the mean redness over the window; class 0's is a constant 2."""

    def __init__(self) -> None:
        super().__init__()
        self.redness = nn.Conv2d(3, 1, 1)
        self.pool = nn.AvgPool2d(NATIVE_STRIDE)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.redness.weight.copy_(torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1))
            self.redness.bias.fill_(-0.25)
            self.fc.weight.copy_(torch.tensor([[0.0], [10.0]]))
            self.fc.bias.copy_(torch.tensor([2.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.pool(torch.relu(self.redness(x)))
        return self.fc(features.mean([2, 3]))


def red_square_loaded() -> LoadedModel:
    return as_loaded(
        RedSquareNet(),
        window=(WINDOW, WINDOW),
        categories=("background", "red square"),
        name="red-square",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        source="hand-built",
    )


@pytest.fixture
def red_square_model(serve_model) -> None:
    """Serves RedSquareNet as the model ``red-square``."""
    serve_model("red-square", red_square_loaded)


def scene(width: int, height: int, centre: tuple[int, int], seed: int) -> Image.Image:
    """A noisy, nowhere-red background with a green distractor and one red square.

    The square's side is one window at ``--size SIZE``: ``WINDOW * min(width, height) / SIZE``.
    """
    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[..., 0] = rng.integers(0, 120, (height, width))
    pixels[..., 1:] = rng.integers(80, 256, (height, width, 2))
    side = round(WINDOW * min(width, height) / SIZE)
    left, top = centre[0] - side // 2, centre[1] - side // 2
    assert left >= 0 and left + side <= width and top >= 0 and top + side <= height
    pixels[top : top + side, left : left + side] = RED
    # A green block of the same size far from the square: it must not attract the peak.
    gx = 0 if centre[0] > width / 2 else width - side // 2
    gy = 0 if centre[1] > height / 2 else height - side // 2
    pixels[gy : gy + side // 2, gx : gx + side // 2] = (20, 220, 40)
    return Image.fromarray(pixels)


# (width, height) as displayed, and the square's centre in displayed pixels.
SCENES = {
    "wide": ((300, 200), (187, 121)),
    "tall": ((160, 480), (70, 355)),
    "square": ((640, 640), (420, 230)),
    "odd": ((333, 187), (95, 101)),
}


def write_scenes(folder: Path) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
    """Writes the scenes as PNG, plus one JPEG stored sideways with an EXIF orientation."""
    folder.mkdir()
    expected = dict(SCENES)
    for seed, (name, ((width, height), centre)) in enumerate(SCENES.items()):
        scene(width, height, centre, seed).save(folder / f"{name}.png")
    # Stored rotated 90 degrees counter-clockwise; orientation 6 tells viewers to turn it back.
    displayed = scene(240, 360, (150, 250), seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6
    displayed.transpose(Image.Transpose.ROTATE_90).save(
        folder / "rotated.jpg", quality=95, exif=exif
    )
    expected["rotated"] = ((240, 360), (150, 250))
    return expected


@pytest.mark.parametrize(
    ("options", "method", "stride"),
    [
        (["--method", "dense"], "dense", NATIVE_STRIDE),
        (["--stride", "4", "--method", "dilate"], "dilate", 4),
        (["--stride", "4", "--method", "stitch"], "stitch", 4),
        (["--method", "crops"], "crops", NATIVE_STRIDE),
    ],
    ids=["dense", "dilate", "stitch", "crops"],
)
def test_heat_peaks_on_the_red_square(
    red_square_model, tmp_path: Path, options: list[str], method: str, stride: int
) -> None:
    photos, out = tmp_path / "photos", tmp_path / "out"
    expected = write_scenes(photos)

    result = CliRunner().invoke(
        main,
        [
            *(str(photos), "--out", str(out), "--class", "red square"),
            *("--size", str(SIZE), "--device", "cpu", "-q", "--model", "red-square", *options),
        ],
    )

    assert result.exit_code == 0, result.output
    for name, ((width, height), (cx, cy)) in expected.items():
        record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        assert (record["method"], record["stride"]) == (method, stride)
        assert record["original_size"] == {"width": width, "height": height}, name
        # One stride in original pixels, per axis.
        tolerance_x = stride * width / record["input_size"]["width"]
        tolerance_y = stride * height / record["input_size"]["height"]

        [entry] = record["classes"]
        assert (entry["index"], entry["name"]) == (1, "red square")
        assert entry["peak"] > 0.9, name
        assert abs(entry["x"] - cx) <= tolerance_x, (name, entry, cx, cy)
        assert abs(entry["y"] - cy) <= tolerance_y, (name, entry, cx, cy)

        with np.load(out / f"{name}.npz") as data:
            probs, centers = data["probs"], data["centers"]
        assert probs[1].min() < 0.2, name  # the map is not hot everywhere
        heat = cell_values_to_image(probs[1], centers, (height, width))
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        assert abs(col + 0.5 - cx) <= tolerance_x, (name, col, row, cx, cy)
        assert abs(row + 0.5 - cy) <= tolerance_y, (name, col, row, cx, cy)

        with Image.open(out / f"{name}_1_red_square.png") as overlay:
            assert overlay.size == (width, height)


def test_heat_is_drawn_where_the_square_is(red_square_model, tmp_path: Path) -> None:
    """The overlay changes the photo most over the square, far less over the background."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    (width, height), (cx, cy) = SCENES["wide"]
    plain = np.full((height, width, 3), 128, dtype=np.uint8)
    side = round(WINDOW * min(width, height) / SIZE)
    plain[cy - side // 2 : cy + side // 2, cx - side // 2 : cx + side // 2] = RED
    Image.fromarray(plain).save(photos / "plain.png")

    result = CliRunner().invoke(
        main,
        [
            *(str(photos), "--out", str(out), "--class", "1", "--size", str(SIZE)),
            *("--device", "cpu", "--model", "red-square"),
        ],
    )

    assert result.exit_code == 0, result.output
    with Image.open(out / "plain_1_red_square.png") as image:
        overlay = np.asarray(image.convert("RGB"), dtype=float)
    change = np.abs(overlay - plain).sum(axis=2)
    at_square = change[cy - 10 : cy + 10, cx - 10 : cx + 10].mean()
    # The bottom-right corner is far from the square and from the label box at the top left.
    far_corner = change[-30:, -30:].mean()
    assert at_square > 4 * far_corner + 20
