"""Colormap names checked without matplotlib where the shipped list answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import ListedColormap

from heatmap_cli.errors import UnknownColormapError
from heatmap_cli.render import check_cmap
from heatmap_cli.render.colormaps import (
    NAMES_FILE,
    builtin_colormaps,
    live_colormaps,
    shipped_palette,
)
from heatmap_cli.render.colour import colormap_palette, matplotlib_palette

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_names_are_matplotlibs():
    # Fails after a matplotlib upgrade: run `python -m heatmap_cli.render.colormap_writer`.
    shipped = json.loads(NAMES_FILE.read_text(encoding="utf-8"))
    live = live_colormaps()
    assert shipped["matplotlib"] == live["matplotlib"]
    registered_here = set(live["names"]) - set(shipped["names"])  # by other tests, if any
    assert [name for name in live["names"] if name not in registered_here] == shipped["names"]
    assert builtin_colormaps() == tuple(shipped["names"])


@pytest.mark.parametrize("name", ["infrno", "Inferno", "RdBU_r", "nope"])
def test_without_matplotlib_the_answer_is_matplotlibs(name: str):
    with pytest.raises(UnknownColormapError) as with_matplotlib:
        check_cmap(name)
    script = (
        "import sys\n"
        "from heatmap_cli.render import check_cmap\n"
        "check_cmap('inferno'); check_cmap('RdBu_r')\n"
        f"try:\n    check_cmap({name!r})\nexcept Exception as error:\n    print(error)\n"
        "print('matplotlib' in sys.modules, 'numpy' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    message, imported = done.stdout.strip().splitlines()
    assert message == str(with_matplotlib.value)
    assert imported == "False False"


def test_a_colormap_a_program_registers_is_accepted():
    name = "heatmap_test_greys"
    matplotlib.colormaps.register(
        ListedColormap(np.linspace(0, 1, 256)[:, None].repeat(3, 1)), name=name
    )
    try:
        check_cmap(name)
    finally:
        matplotlib.colormaps.unregister(name)
    with pytest.raises(UnknownColormapError):
        check_cmap(name)


def test_the_shipped_palettes_are_the_ones_matplotlib_gives():
    for name in builtin_colormaps():
        assert shipped_palette(name) is not None
        assert np.array_equal(colormap_palette(name), matplotlib_palette(name)), name


def test_drawing_a_built_in_colormap_imports_no_matplotlib():
    script = (
        "import sys\n"
        "import numpy as np\n"
        "from heatmap_cli.render import render_class_overlay\n"
        "photo = np.full((64, 80, 3), 120, np.uint8)\n"
        "values = np.linspace(0, 1, 6).reshape(2, 3)\n"
        "centers = np.stack(np.meshgrid([20.0, 40, 60], [20.0, 44]), -1)\n"
        "render_class_overlay(photo, values, centers, label='espresso 0.9', cmap='RdBu_r')\n"
        "print('matplotlib' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert done.stdout.strip() == "False"
