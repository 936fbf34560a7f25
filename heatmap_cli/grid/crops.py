"""The ``crops`` grid method: the unmodified classifier on every window, batched.

The exact reference every other method is measured against (each cell is, by construction, the
classifier's answer on that crop), and the fallback for models that cannot be converted.
"""

from __future__ import annotations

import torch
from torch import nn

from heatmap_cli.convert.network import source_model
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.methods import CROPS

__all__ = ["CROPS", "crops_grid"]


def crops_grid(
    model: nn.Module, x: torch.Tensor, stride: int, window: tuple[int, int], batch_size: int
) -> torch.Tensor:
    """The classifier on every window of ``x``, ``batch_size`` windows per forward pass.

    Args:
        model: The classifier, or a converted network made from one (its source model runs).
        x: ``(N, C, H, W)`` normalized images, ``H, W >= window``.
        stride: Spacing of the windows in pixels (any positive value).
        window: ``(h, w)`` window: the classifier's input size.
        batch_size: Windows per forward pass.

    Returns:
        ``(N, K, rows, cols)`` logits, ``(rows, cols) = grid_shape((H, W), window, stride)``;
        cell ``(i, j)`` is the classifier's answer on the window at ``(i*stride, j*stride)``.
    """
    classifier = source_model(model)
    rows, cols = grid_shape((x.shape[2], x.shape[3]), window, stride)
    corners = [(i * stride, j * stride) for i in range(rows) for j in range(cols)]
    scores: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(corners), batch_size):
            chunk = corners[start : start + batch_size]
            windows = torch.stack(
                [x[:, :, top : top + window[0], left : left + window[1]] for top, left in chunk],
                dim=1,
            )  # (N, len(chunk), C, h, w)
            logits = classifier(windows.flatten(0, 1))
            scores.append(logits.reshape(x.shape[0], len(chunk), -1))
    grid = torch.cat(scores, dim=1)  # (N, rows*cols, K), cells in row-major order
    return grid.permute(0, 2, 1).reshape(x.shape[0], -1, rows, cols)
