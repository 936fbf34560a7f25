"""How many windows fit: the cells a window at a stride gives on an input.

A network with window ``(h, w)`` and output stride ``t`` turns an input of ``(h + t*a, w + t*b)``
pixels into ``(a + 1, b + 1)`` cells; cell ``(i, j)`` sees the window whose top-left corner is
``(i*t, j*t)``. This is the one arithmetic both the rewrites and the grid methods rely on.
"""

from __future__ import annotations

from heatmap_cli.errors import GeometryError

__all__ = ["grid_shape"]


def grid_shape(
    input_size: tuple[int, int], window: tuple[int, int], stride: int
) -> tuple[int, int]:
    """Number of whole windows at ``stride`` spacing that fit in an input.

    Args:
        input_size: ``(H, W)`` of the network input in pixels.
        window: ``(h, w)`` window in pixels.
        stride: Spacing of the windows in pixels.

    Returns:
        ``(rows, cols)`` of the score grid.

    Raises:
        GeometryError: If the input is smaller than the window.
    """
    (height, width), (win_h, win_w) = input_size, window
    if height < win_h or width < win_w:
        raise GeometryError(
            f"input {width}x{height} is smaller than the {win_w}x{win_h} window of the network"
        )
    return (height - win_h) // stride + 1, (width - win_w) // stride + 1
