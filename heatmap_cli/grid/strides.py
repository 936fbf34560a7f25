"""Which output strides a native stride allows (plain integers: no torch, no numpy)."""

from __future__ import annotations

from heatmap_cli.errors import GeometryError

__all__ = ["check_stride", "valid_strides"]


def valid_strides(native_stride: int) -> list[int]:
    """Output strides reachable from a native stride: its divisors, largest first."""
    return [d for d in range(native_stride, 0, -1) if native_stride % d == 0]


def check_stride(stride: int, native_stride: int) -> None:
    """Raises ``GeometryError`` unless ``stride`` divides the native stride."""
    if stride <= 0 or native_stride % stride:
        choices = ", ".join(str(s) for s in valid_strides(native_stride))
        raise GeometryError(
            f"stride {stride} does not divide the network's native stride {native_stride}; "
            f"valid strides: {choices}"
        )
