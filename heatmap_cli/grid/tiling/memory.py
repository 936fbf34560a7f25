"""Memory estimates for huge images, and the largest tile that fits a budget.

Peak memory is that of one tile's pass: :func:`estimate_activation_bytes` predicts it from a
shape-only run and :func:`choose_tile` picks the largest tile that fits a budget. The one
image-sized output is the grid itself, ``K x rows x cols`` float32 (250 MB for 1000 classes over
an 8192-pixel square at stride 32), counted by :func:`grid_bytes`. The price of small tiles is
the overlap: a padded network's field is far larger than its window (1043 pixels for the default
model's 224), so small tiles recompute much of their neighbours' pixels
(``TilePlan.overhead``).

The quick "does this image need tiling at all?" answer rests on one figure per network structure
(activation bytes per input pixel), which takes a shape pass to measure. Where to keep it across
runs is the caller's choice: a :class:`FigureStore` handed in (the command hands in the disk cache
of ``heatmap_cli.io.figure_cache``); without one it is measured once per network object.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from heatmap_cli.convert.shapes import meta_clone
from heatmap_cli.errors import GeometryError
from heatmap_cli.grid.geometry import grid_shape
from heatmap_cli.grid.tiling.field import lattice_period, net_geometry
from heatmap_cli.grid.tiling.plan import minimum_tile

__all__ = [
    "CUDA_BUDGET_FRACTION",
    "DEFAULT_CPU_BUDGET",
    "MAX_BYTES_PER_PIXEL",
    "MEMORY_SAFETY_FACTOR",
    "FigureStore",
    "choose_tile",
    "default_memory_budget",
    "estimate_activation_bytes",
    "grid_bytes",
]

DEFAULT_CPU_BUDGET = 4 * 2**30
"""Default activation memory budget on the CPU (bytes), capped at half the available RAM."""

CUDA_BUDGET_FRACTION = 0.7
"""Default budget on a CUDA device, as a fraction of its free memory."""

MEMORY_SAFETY_FACTOR = 1.3
"""Measured peak memory over :func:`estimate_activation_bytes`, rounded up (see the benchmark)."""


class FigureStore(Protocol):
    """Keeps figures that depend only on what a network computes, not on its weights."""

    def figures(
        self,
        kind: str,
        net: nn.Module,
        extra: Sequence[str],
        measure: Callable[[], Mapping[str, float]],
        plausible: Callable[[Mapping[str, float]], bool] | None = None,
    ) -> Mapping[str, float]:
        """The figures of ``kind`` for ``net`` (and ``extra``), from ``measure`` on a miss.

        Args:
            kind: What the figures are, e.g. ``"activation-bytes"``.
            net: The network they describe (its structure is the key, with ``extra``).
            extra: Anything else they depend on, e.g. the dtype they were measured in.
            measure: Measures them (a shape pass: about a second).
            plausible: Whether figures kept earlier can be believed; a store measures again
                (and keeps the new figures) instead of returning figures it refuses.

        Returns:
            The figures by name. A store may return what it kept earlier; the caller checks
            them again and measures itself when they are still not plausible.
        """
        ...


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensors alive at once while a network runs on meta tensors.

    Every operator's fresh outputs (not views, not in-place results) are counted until the
    Python object holding them dies, which on meta tensors happens exactly when it would for
    real ones; the peak of the sum is the peak of tensor memory, less the operators' internal
    scratch buffers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: no new memory
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                size = tensor.untyped_storage().nbytes()
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(tensor, self._free, size)
        return out

    def _free(self, size: int) -> None:
        self.live -= size


def estimate_activation_bytes(
    net: nn.Module,
    input_size: tuple[int, int],
    *,
    dtype: torch.dtype = torch.float32,
) -> int:
    """Peak bytes of tensors one forward pass holds at once, from a shape-only run.

    The network runs on storage-less meta tensors while every operator's outputs are counted
    from creation until they are freed; the input is counted throughout (the caller holds it).
    Weights, the Python/torch runtime and operators' internal scratch buffers are not included:
    multiply by :data:`MEMORY_SAFETY_FACTOR` for a budget (measured on the CPU with the default
    model; see ``benchmarks/studies/huge_images.py``).

    Args:
        net: Any module ``(N, 3, H, W) -> (N, K, h, w)`` that runs on meta tensors.
        input_size: ``(H, W)`` of the input.
        dtype: Floating dtype of the input and activations.

    Returns:
        Estimated peak activation bytes for a batch of one.
    """
    return _MetaRun(net, dtype).peak(input_size)


class _MetaRun:
    """A storage-less copy of a network for repeated shape-only passes.

    One pass of the default model takes about a second, most of it in batch norm's meta kernels.
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype) -> None:
        self.meta = meta_clone(net).to(dtype)
        self.dtype = dtype
        self.grid_shape: tuple[int, ...] = ()

    def peak(self, input_size: tuple[int, int]) -> int:
        """Peak live tensor bytes of a pass, input included; records the output's shape."""
        tracker = _LiveTensorBytes()
        x = torch.empty(1, 3, *input_size, device="meta", dtype=self.dtype)
        with torch.inference_mode(), tracker:
            out = self.meta(x)
            self.grid_shape = tuple(out.shape)
            del out
        return int(tracker.peak + x.numel() * x.element_size())


def grid_bytes(
    net: nn.Module,
    input_size: tuple[int, int],
    dtype: torch.dtype,
    figures: FigureStore | None = None,
) -> int:
    """Bytes of the full ``(1, K, rows, cols)`` score grid for an input size (shape-only).

    Args:
        net: The converted network.
        input_size: ``(H, W)`` of the input.
        dtype: Floating dtype of the grid.
        figures: Where the network's per-pixel figures are kept (see :class:`FigureStore`).
    """
    stride, window = net_geometry(net)
    rows, cols = grid_shape(input_size, window, stride)
    return _per_pixel(net, dtype, figures)[0] * rows * cols * _element_size(dtype)


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# Per network and dtype: (classes K, activation bytes per input pixel at a modest size), for a
# quick answer to "does this image need tiling at all?" without a shape pass per image.
_PER_PIXEL: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, tuple[int, float]]] = (
    weakref.WeakKeyDictionary()
)


def _per_pixel(
    net: nn.Module, dtype: torch.dtype, figures: FigureStore | None = None
) -> tuple[int, float]:
    """``(K, activation bytes per input pixel)``, measured once per network structure.

    The measurement is a shape pass (0.7 s for the default model, most of it importing
    ``torch._dynamo`` for the meta kernels), so a caller may keep it across runs in a
    :class:`FigureStore`, keyed by the network's structure and the dtype.
    """
    cached = _PER_PIXEL.setdefault(net, {})
    if dtype not in cached:

        def measure() -> dict[str, float]:
            return _measure_per_pixel(net, dtype)

        def plausible(found: Mapping[str, float]) -> bool:
            return _plausible_per_pixel(found, net, dtype)

        found: Mapping[str, float] | None = None
        if figures is not None:
            extra = (str(dtype), _ESTIMATE_REVISION)
            found = figures.figures("activation-bytes", net, extra, measure, plausible)
        if found is None or not plausible(found):
            found = measure()
        cached[dtype] = (int(found["classes"]), float(found["bytes_per_pixel"]))
    return cached[dtype]


MAX_BYTES_PER_PIXEL = 2**20
"""The most activation bytes per input pixel believed of a stored figure (1 MiB: 50 GB for one
224 x 224 window, far beyond any classifier; real ones take a few kilobytes)."""


def _plausible_per_pixel(found: Mapping[str, float], net: nn.Module, dtype: torch.dtype) -> bool:
    """Whether stored per-pixel figures can be those of ``net``, without a shape pass.

    ``classes`` must be a whole number that is the leading size of one of the network's
    parameters or buffers (a classifier's last layer has ``K`` outputs), and ``bytes_per_pixel``
    at least the input's own bytes per pixel and at most :data:`MAX_BYTES_PER_PIXEL`.
    """
    classes, per_pixel = found.get("classes"), found.get("bytes_per_pixel")
    numbers = [value for value in (classes, per_pixel) if isinstance(value, int | float)]
    if len(numbers) != 2 or any(isinstance(v, bool) or not math.isfinite(v) for v in numbers):
        return False
    input_bytes = 3 * _element_size(dtype)
    if not input_bytes <= per_pixel <= MAX_BYTES_PER_PIXEL:  # type: ignore[operator]
        return False
    if classes != int(classes) or classes < 1:  # type: ignore[arg-type]
        return False
    leading = {
        tensor.shape[0]
        for tensor in itertools.chain(net.parameters(), net.buffers())
        if tensor.dim() >= 1
    }
    return not leading or int(classes) in leading  # type: ignore[arg-type]


_ESTIMATE_REVISION = "live tensor bytes on meta, window + 8 lattice periods"
"""Part of the disk cache's key: changing how the figure is measured makes a new key."""


def _measure_per_pixel(net: nn.Module, dtype: torch.dtype) -> dict[str, float]:
    stride, window = net_geometry(net)
    lattice = stride * lattice_period(net, stride)
    size = (window[0] + 8 * lattice, window[1] + 8 * lattice)
    run = _MetaRun(net, dtype)
    peak = run.peak(size)
    return {"classes": run.grid_shape[1], "bytes_per_pixel": peak / (size[0] * size[1])}


def default_memory_budget(device: torch.device | str | None = None) -> int:
    """A sensible activation memory budget for a device, in bytes.

    Args:
        device: ``"cpu"`` (default) or a CUDA device.

    Returns:
        On CUDA, ``CUDA_BUDGET_FRACTION`` of the device's free memory; on the CPU,
        ``DEFAULT_CPU_BUDGET`` (4 GiB) or half the available RAM if that is less.
    """
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    budget = DEFAULT_CPU_BUDGET
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    budget = min(budget, int(line.split()[1]) * 1024 // 2)
                    break
    except OSError:
        pass  # not Linux: keep the fixed default
    return budget


def choose_tile(
    net: nn.Module,
    input_size: tuple[int, int],
    memory_budget_bytes: int,
    *,
    dtype: torch.dtype = torch.float32,
    safety_factor: float = MEMORY_SAFETY_FACTOR,
    figures: FigureStore | None = None,
) -> int | None:
    """The largest tile whose pass fits a memory budget, or None if the whole image fits.

    Images far below the budget are answered from a per-network bytes-per-pixel figure (one
    shape pass per network, cached); others take a few shape passes of about a second each for
    the default model: the whole image, the smallest tile, and two or three around the size that
    interpolating between those two predicts.

    Args:
        net: The converted network (``.stride``, ``.window``).
        input_size: ``(H, W)`` of the snapped input.
        memory_budget_bytes: Bytes the activations of one pass and the full output grid may
            take together. The process also holds the runtime (about 0.8 GiB for torch, timm
            and the default model) and the decoded uint8 image.
        dtype: Floating dtype of the activations.
        safety_factor: Multiplies :func:`estimate_activation_bytes`, for the operators' scratch
            memory that the estimate does not see (the default is measured for tiles in
            channels-last layout on the CPU, :func:`tiled_score_grid`'s default there; NCHW on
            the CPU needs about 1.45).
        figures: Where the network's per-pixel figure is kept across runs (see
            :class:`FigureStore`); None measures it once per network object.

    Returns:
        None if the untiled pass fits; else a tile side, at least :func:`minimum_tile`, to pass
        to :func:`tiled_score_grid`.

    Raises:
        GeometryError: If even the smallest tile does not fit the budget (the message says how
            much it needs), or if the network cannot be tiled exactly.
    """
    stride, _ = net_geometry(net)
    height, width = int(input_size[0]), int(input_size[1])
    available = memory_budget_bytes - grid_bytes(net, (height, width), dtype, figures)
    per_pixel = _per_pixel(net, dtype, figures)[1]
    if per_pixel * height * width * safety_factor * 2 <= available:
        return None  # far below the budget (the per-pixel figure over-counts for larger inputs)
    cost = _TileCost(_MetaRun(net, dtype), height, width, safety_factor)
    largest = max(height, width)
    need_full = cost.needed(largest)
    if need_full <= available:
        return None
    smallest = minimum_tile(net, (height, width))
    need_min = cost.needed(smallest)
    if need_min > available:
        raise GeometryError(
            f"a memory budget of {_gib(memory_budget_bytes)} is too small for a "
            f"{width}x{height} input: even the smallest tile ({smallest} pixels) needs about "
            f"{_gib(need_min + memory_budget_bytes - available)}"
        )
    return cost.largest_fitting((smallest, need_min), (largest, need_full), stride, available)


@dataclass(frozen=True)
class _TileCost:
    """The memory a square tile of some side needs, for one image size."""

    run: _MetaRun
    height: int
    width: int
    safety_factor: float

    def area(self, side: int) -> int:
        return min(side, self.height) * min(side, self.width)

    def needed(self, side: int) -> int:
        """Bytes of one pass over a tile (a shape pass, about a second for the default model)."""
        size = (min(side, self.height), min(side, self.width))
        return int(self.run.peak(size) * self.safety_factor)

    def largest_fitting(
        self, low_end: tuple[int, int], high_end: tuple[int, int], stride: int, available: int
    ) -> int:
        """The largest side ``smallest + stride * k`` below ``largest`` that fits ``available``.

        Activations grow with the tile's area: interpolate between the two ends, given as
        ``(side, bytes needed)``, then check the neighbourhood of the prediction.
        """
        (smallest, need_min), (largest, need_full) = low_end, high_end
        slope = (need_full - need_min) / max(1, self.area(largest) - self.area(smallest))
        low, high = 0, (largest - smallest) // stride  # largest k with a predicted fit
        while low < high:
            middle = (low + high + 1) // 2
            side = smallest + stride * middle
            if need_min + slope * (self.area(side) - self.area(smallest)) <= available:
                low = middle
            else:
                high = middle - 1
        side = smallest + stride * low
        while side > smallest and self.needed(side) > available:
            side -= stride
        while side + stride < largest and self.needed(side + stride) <= available:
            side += stride
        return side


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"
