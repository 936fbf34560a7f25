"""Snapping sizes and mapping cells to windows in original-image pixels."""

from __future__ import annotations

import numpy as np
import pytest

from heatmap_cli.errors import GeometryError
from heatmap_cli.grid.geometry import GridGeometry, grid_shape, snap_length, snapped_input_size
from heatmap_cli.pipeline.preprocess import plan_geometry


@pytest.mark.parametrize(
    ("length", "expected"), [(224, 224), (239, 224), (241, 256), (384, 384), (100, 224), (400, 416)]
)
def test_snap_length_rounds_to_window_plus_stride_multiples(length, expected):
    assert snap_length(length, 224, 32) == expected


def test_snapped_size_keeps_aspect_within_half_a_stride():
    for height, width in [(300, 451), (1000, 1000), (480, 640), (3000, 200)]:
        h, w = snapped_input_size((height, width), 384, (224, 224), 16)
        assert (h - 224) % 16 == 0 and (w - 224) % 16 == 0
        scale = 384 / min(height, width)
        assert abs(h - max(224, height * scale)) <= 8 and abs(w - max(224, width * scale)) <= 8


def test_centers_map_windows_back_to_original_pixels():
    geometry = GridGeometry(
        input_size=(288, 352), original_size=(576, 1056), window=(224, 224), stride=32
    )
    assert geometry.shape == (3, 5)
    centers = geometry.centers()
    assert centers.shape == (3, 5, 2) and centers.dtype == np.float32
    # cell (2, 4): window [64, 288) x [128, 352) resized; scale (2, 3)
    np.testing.assert_allclose(centers[2, 4], [(128 + 112) * 3, (64 + 112) * 2])
    np.testing.assert_allclose(centers[0, 0], [112 * 3, 112 * 2])
    np.testing.assert_allclose(geometry.window_in_original(), [224 * 3, 224 * 2])


def test_last_window_ends_at_the_image_border():
    geometry = plan_geometry((333, 517), shorter_side=384, window=(224, 224), stride=32)
    rows, cols = geometry.shape
    sy, sx = geometry.scale
    right = ((cols - 1) * 32 + 224) * sx
    bottom = ((rows - 1) * 32 + 224) * sy
    assert right == pytest.approx(517) and bottom == pytest.approx(333)


def test_errors():
    with pytest.raises(GeometryError):
        grid_shape((100, 300), (224, 224), 32)
    with pytest.raises(GeometryError):
        snapped_input_size((0, 10), 384, (224, 224), 32)
    with pytest.raises(GeometryError):
        snapped_input_size((10, 10), 0, (224, 224), 32)
