"""Shared pieces of every benchmark: timing, FLOP counting, the matmul peak, memory, models.

The cases (``benchmarks/cases/``, run through :mod:`benchmarks.support.harness`, tables in
:mod:`benchmarks.support.report`) and the studies (``benchmarks/studies/``: exactness, finer
strides, huge images...) build on these parts. Everything runs from the repository root as a
module (``python -m benchmarks.cases.NAME``, ``python -m benchmarks.studies.NAME``).
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.support.paths import ROOT, SAMPLES
from heatmap_cli import ConvolutionalizedNet, convolutionalize
from heatmap_cli.convert.ops import DEFAULT_MATMUL_MAX_CELLS

__all__ = [
    "ROOT",
    "SAMPLES",
    "WINDOW",
    "MatmulPeak",
    "Method",
    "convert",
    "count_flops",
    "cpu_model",
    "log",
    "machine_description",
    "peak_rss_mib",
    "quiet_warnings",
    "random_torchvision",
    "run_interleaved",
    "status_mib",
    "synchronize",
]

WINDOW = (224, 224)
"""The training size of the torchvision classifiers: the window of one cell."""


# ---------------------------------------------------------------------------------------------
# Progress, models
# ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds only the tables."""
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silences the library's one-time warnings (e.g. squeeze-and-excitation notices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def random_torchvision(name: str) -> nn.Module:
    """A torchvision classifier with random weights, seeded (timing does not need trained ones).

    The same name gives the same weights on every call.
    """
    torch.manual_seed(0)
    return torchvision.models.get_model(name, weights=None).eval()


def convert(
    model: nn.Module,
    window: tuple[int, int] = WINDOW,
    *,
    matmul_max_cells: int = DEFAULT_MATMUL_MAX_CELLS,
) -> ConvolutionalizedNet:
    """Converts once, outside every timing, without the library's one-time warnings.

    Args:
        model: The classifier in eval mode (its weights are shared, not copied).
        window: ``(h, w)`` training size of the classifier.
        matmul_max_cells: ``convolutionalize``'s limit between the converted head's matrix
            product and convolution forms; -1 always convolves (the library's form before).

    Returns:
        The converted network.
    """
    with quiet_warnings():
        return convolutionalize(model, window, matmul_max_cells=matmul_max_cells)


# ---------------------------------------------------------------------------------------------
# Process memory
# ---------------------------------------------------------------------------------------------


def status_mib(field_name: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``...) in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, ``ru_maxrss`` (KiB on Linux), in MiB.

    In a child that a big process forked and executed this also carries the parent's peak at
    the fork (``status_mib("VmHWM")`` does not); see :mod:`benchmarks.support.memory_probe`.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# Timing, FLOPs, the matmul peak
# ---------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Waits for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _GlobalOnlyTracker:
    """Stands in for ``FlopCounterMode``'s module tracker: every FLOP goes to ``"Global"``.

    The real tracker (``torch.utils.module_tracker.ModuleTracker``) registers autograd hooks on
    module inputs that require grad, which fails under ``torch.inference_mode`` (which
    ``score_grid`` enters) when a module receives a parameter as input. Only the total is needed
    here, so no per-module attribution is kept.
    """

    parents: frozenset[str] = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnlyTracker:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def count_flops(fn: Callable[[], object], *, first_call: bool = False) -> int:
    """Floating-point operations of one call of ``fn``, as ``FlopCounterMode`` counts them.

    Only matrix products and convolutions are counted, two FLOPs per multiply-accumulate;
    pooling, normalization, activations and elementwise arithmetic are not. The counted call
    really runs, so it doubles as a warm-up.

    Args:
        fn: A callable doing the work once.
        first_call: Count the very first call. By default ``fn`` is called once before the
            counted call: a first call may do one-time work that later calls skip (building and
            checking a dilated network on the meta device, for example, which the counter would
            otherwise add as if it had been computed).

    Returns:
        The total FLOP count of one steady-state call.
    """
    if not first_call:
        fn()
    counter = FlopCounterMode(display=False)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnlyTracker()
    with counter:
        fn()
    return int(counter.get_total_flops())


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call of ``fn``, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class MatmulPeak:
    """This machine's float32 matrix-multiply rate, sampled repeatedly during the run.

    Each sample is the best of ``burst`` back-to-back ``torch.mm`` of two ``n x n`` matrices
    (``2 n^3`` FLOPs each) on the same threads as everything else: the best, because a peak is
    what the machine can do at that moment, and one short product is easily slowed by a burst of
    other work. Samples are taken between the timed runs of every case, so a case's percentage
    of peak compares it with the matmul rate measured next to it, under the same load from other
    processes.

    Args:
        size: ``n``, the side of the square matrices.
        device: Where to multiply.
        dtype: Element type (float32 for the CPU targets).
        burst: Products per sample.
    """

    def __init__(
        self,
        size: int = 2048,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        burst: int = 3,
    ) -> None:
        self.size = size
        self.device = device or torch.device("cpu")
        self.dtype = dtype
        self.burst = burst
        generator = torch.Generator().manual_seed(0)
        self._a = torch.randn(size, size, generator=generator).to(self.device, dtype)
        self._b = torch.randn(size, size, generator=generator).to(self.device, dtype)
        self._out = torch.empty(size, size, device=self.device, dtype=dtype)
        self.samples: list[float] = []
        self.sample(record=False)  # warm-up: first call pays for allocation and packing

    @property
    def flops(self) -> int:
        """FLOPs of one sample (``2 n^3``)."""
        return 2 * self.size**3

    def sample(self, *, record: bool = True) -> float:
        """Runs ``burst`` multiplications.

        Args:
            record: Whether to keep the result among :attr:`samples`.

        Returns:
            The best rate of the burst in GFLOP/s.
        """
        seconds = min(
            _timed(lambda: torch.mm(self._a, self._b, out=self._out), self.device)
            for _ in range(self.burst)
        )
        rate = self.flops / seconds / 1e9
        if record:
            self.samples.append(rate)
        return rate

    def median(self, samples: Sequence[float] | None = None) -> float:
        """Median GFLOP/s of ``samples`` (default: all recorded samples)."""
        values = list(self.samples if samples is None else samples)
        return statistics.median(values) if values else float("nan")


@dataclass
class Method:
    """One way of computing a result, timed alongside the others of its case.

    Attributes:
        label: Short name shown in the table (``"dense"``, ``"crops"``...).
        fn: Does the work once.
        flops: FLOPs one call executes (see ``count_flops``).
        images: Images processed per call (for images/s).
        warmup: Untimed calls before timing.
        budget_s: After the first timed run, no further run starts once this many seconds have
            been spent on this method (so slow methods may get fewer runs than the others).
        times: Wall seconds of the timed runs, filled in by ``run_interleaved``.
        peak_samples: Matmul-peak samples taken in the rounds this method ran in.
    """

    label: str
    fn: Callable[[], object]
    flops: int
    images: int = 1
    warmup: int = 1
    budget_s: float = float("inf")
    times: list[float] = field(default_factory=list)
    peak_samples: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        """Median wall seconds of the timed runs."""
        return statistics.median(self.times) if self.times else float("nan")


def run_interleaved(
    methods: Sequence[Method],
    repeat: int,
    peak: MatmulPeak | None,
    device: torch.device,
) -> None:
    """Times several methods round-robin, with a matmul-peak sample at the start of each round.

    Interleaving spreads slow drifts in machine load (other processes, clock changes) evenly
    over the methods being compared, instead of giving one method the quiet minute and the
    other the busy one.

    Args:
        methods: The methods; their ``times`` and ``peak_samples`` are filled in.
        repeat: Timed runs per method (fewer for a method past its ``budget_s``).
        peak: Sampled once per round, or None.
        device: Drained before and after every timed call.
    """
    for method in methods:
        for _ in range(method.warmup):
            method.fn()
    for round_index in range(repeat):
        active = [m for m in methods if round_index == 0 or sum(m.times) + m.median_s <= m.budget_s]
        if not active:
            break
        rate = peak.sample() if peak is not None else None
        for method in active:
            gc.collect()
            method.times.append(_timed(method.fn, device))
            if rate is not None:
                method.peak_samples.append(rate)


# ---------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """CPU model name, family and model numbers from ``/proc/cpuinfo`` (or ``platform``)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if not line.strip():
                    break  # first processor only
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    name = fields.get("model name", platform.processor() or platform.machine())
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def machine_description() -> str:
    """One line naming the CPU, its cores, torch and its threading, for table headers."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    capability = torch.backends.cpu.get_cpu_capability()
    onednn = (
        "on" if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else "off"
    )
    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {capability}, oneDNN {onednn}, Python {platform.python_version()}"
    )
