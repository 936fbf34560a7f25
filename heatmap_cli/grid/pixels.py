"""The network's input: uint8 RGB pixels normalized by the model's mean and standard deviation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from heatmap_cli.errors import GeometryError

__all__ = ["normalize"]


def normalize(
    pixels: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Turns uint8 RGB pixels into the network's normalized input.

    Args:
        pixels: uint8 ``(H, W, 3)`` or ``(N, H, W, 3)`` array or tensor, values 0..255.
        mean: Per-channel mean of the model, in the 0..1 range.
        std: Per-channel standard deviation of the model, in the 0..1 range.
        device: Where to build the result (the uint8 data moves, not the float copy).
        dtype: Floating dtype of the result.

    Returns:
        ``(N, 3, H, W)`` tensor, ``(pixels / 255 - mean) / std``.
    """
    if isinstance(pixels, np.ndarray) and not pixels.flags.writeable:
        pixels = (
            pixels.copy()
        )  # PIL-backed arrays are read-only; torch wants to own writable memory
    tensor = torch.as_tensor(pixels)
    if tensor.dtype != torch.uint8 or tensor.shape[-1] != 3 or tensor.dim() not in (3, 4):
        raise GeometryError("pixels must be uint8 with shape (H, W, 3) or (N, H, W, 3)")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    tensor = tensor.to(device=device).permute(0, 3, 1, 2).to(dtype)
    mean_t = torch.tensor(mean, dtype=dtype, device=tensor.device).view(1, 3, 1, 1) * 255
    std_t = torch.tensor(std, dtype=dtype, device=tensor.device).view(1, 3, 1, 1) * 255
    return ((tensor - mean_t) / std_t).contiguous()
