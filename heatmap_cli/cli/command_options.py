"""The command's parsed options, one field per click parameter (plain values, no imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["CommandOptions"]


@dataclass(frozen=True)
class CommandOptions:
    """The command's parsed options, one field per click parameter (``heatmap_cli.cli.options``)."""

    inputs: tuple[Path, ...]
    class_specs: tuple[str, ...]
    top_k: int
    model: str
    weights: Path | None
    labels: Path | None
    input_size: str | None
    mean: str | None
    std: str | None
    activation: str
    allow_pickle: bool
    size: int | str
    stride: int | None
    method: str
    fidelity: int
    scores: str
    device: str
    fp32: bool
    compile: bool
    alpha: float
    cmap: str
    colorbar: bool
    scale: str
    vmin: float | None
    vmax: float | None
    label: str
    outputs: tuple[str, ...]
    image_format: str
    npz_classes: str
    npz_dtype: str
    out: Path
    batch_size: int
    max_pixels: int | None
    max_overlay_side: int
    tile: int | None
    memory_budget: float | None
    max_input_pixels: int
    max_aspect: float
    scales: str | None
    flip: bool
    pooling: str
    mpp: float | None
    slide_mpp: float | None
    tissue: str
    slide_context: int | None
    grid_format: str
    skip_existing: bool
    report: bool
    ray: bool
    ray_address: str | None
    workers: int | None
    quiet: int
    debug: bool
