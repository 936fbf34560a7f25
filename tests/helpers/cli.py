"""The command in-process for tests: a tiny served model, photos, and reading what it wrote.

Most command tests serve :class:`TinyNet`, a padding-free network, as the model ``tiny`` (the
``tiny`` fixture in conftest.py, through ``serve_model``), so they take milliseconds.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner, Result
from PIL import Image
from torch import nn

from heatmap_cli.cli.manifest import MANIFEST_NAME
from heatmap_cli.cli.options import main
from heatmap_cli.models import LoadedModel
from tests.helpers.toys import as_loaded

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "sample_images"

WINDOW = 32
NATIVE_STRIDE = 8
# Exact names, unique substrings and ambiguous substrings all occur among these.
CATEGORIES = ("background", "cat", "tabby cat", "tiger cat", "espresso", "espresso maker")
SUMMARY_RE = re.compile(
    r"^(\d+) done, (\d+) failed(?:, (\d+) skipped \(already done\))? in \d+\.\ds "
    r"\(tiny, (\w+), stride (\d+), cpu\); outputs in (.+)$"
)


class TinyNet(nn.Module):
    """Padding-free classifier: 32x32 -> 3x3 features (native stride 8), mean pool, Linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2),  # 14
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2),  # 6
            nn.ReLU(),
            nn.AvgPool2d(2),  # 3
        )
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean([2, 3]))


class NoisyNet(TinyNet):
    """TinyNet that warns while it is traced: once about itself, and twice about other things."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("NoisyNet has global pooling inside its body", UserWarning, stacklevel=2)
        warnings.warn("some library API is deprecated", DeprecationWarning, stacklevel=2)
        warnings.warn("unclosed file <_io.FileIO name='x.png'>", ResourceWarning, stacklevel=2)
        return super().forward(x)


def tiny_model(net_class: type[TinyNet] = TinyNet) -> LoadedModel:
    torch.manual_seed(0)
    net = net_class(len(CATEGORIES))
    return as_loaded(net, window=(WINDOW, WINDOW), categories=CATEGORIES, source="test network")


def run(*args: object) -> Result:
    """Invokes the command in-process on the CPU; stdout and stderr are kept apart."""
    return CliRunner().invoke(main, [str(a) for a in args] + ["--device", "cpu"])


def run_tiny(*args: object) -> Result:
    """``run`` with ``--model tiny``."""
    return run(*args, "--model", "tiny")


def stderr_lines(result: Result) -> list[str]:
    """Non-empty stderr lines, with progress-bar redraws (carriage returns) split off."""
    return [line.strip() for line in re.split(r"[\r\n]+", result.stderr) if line.strip()]


def summary(result: Result) -> re.Match[str]:
    matches = [m for m in map(SUMMARY_RE.match, stderr_lines(result)) if m]
    assert len(matches) == 1, result.stderr
    return matches[0]


def save_photo(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0, **options: object):
    """Writes a random RGB photo of ``size`` (width, height); returns the path."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, closing it (an open file would warn when collected)."""
    with Image.open(path) as image:
        return image.size


def output_files(folder: Path) -> set[str]:
    """Every file below ``folder`` (hidden ones included) but the run's manifest, as posix paths
    relative to it."""
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    return files - {MANIFEST_NAME}


def complete_outputs(out: Path, stem: str) -> bool:
    """Whether an image's json, npz and at least one overlay exist (json written last)."""
    folder, name = (out / stem).parent, Path(stem).name
    overlays = list(folder.glob(f"{glob_escape(name)}_*_*.png"))
    return (
        (folder / f"{name}.json").is_file()
        and (folder / f"{name}.npz").is_file()
        and bool(overlays)
    )


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)
