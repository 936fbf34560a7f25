"""What ``--device`` means, where that can be told without importing torch.

Importing torch takes a second or more, so the command decides without it whenever the answer
is certain: ``cpu`` is the CPU; ``auto`` is the CPU when this torch has no GPU support (a
CPU-only build, read from ``torch/version.py``) or the machine has no GPU its build could use
(no NVIDIA driver for a CUDA build, no ROCm driver for a ROCm one); ``mps`` is refused off
macOS, and ``cuda`` where it surely cannot work, with the words ``resolve_device`` uses. Where
the answer is not certain (a GPU driver is present, macOS, another device type), None: torch
decides, in :func:`resolve_device`. :func:`compute_precision` says what a network computes in
on a device.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from heatmap_cli.errors import InvalidOptionError, setting

if TYPE_CHECKING:
    import torch

__all__ = ["compute_precision", "device_without_torch", "gpu_support", "resolve_device"]

_BUILD_FIELD = r"^{}\s*(?::[^=]*)?=\s*(.+)$"


def gpu_support() -> str | None:
    """The GPU API the installed torch was built for: ``"cuda"``, ``"rocm"`` or None (CPU only).

    Read from ``torch/version.py`` without importing torch (from torch itself once imported).
    """
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "version"):
        cuda, hip = torch.version.cuda, torch.version.hip
    else:
        import importlib.util

        spec = importlib.util.find_spec("torch")
        locations = spec.submodule_search_locations if spec is not None else None
        if not locations:
            return None
        try:
            text = (Path(locations[0]) / "version.py").read_text(encoding="utf-8")
        except OSError:
            return "cuda"  # unknown: assume a GPU build, so that torch is asked
        cuda, hip = (_build_field(text, name) for name in ("cuda", "hip"))
    if hip:
        return "rocm"
    return "cuda" if cuda else None


def _build_field(text: str, name: str) -> str | None:
    found = re.search(_BUILD_FIELD.format(name), text, re.M)
    value = found.group(1).strip() if found else "None"
    return None if value == "None" else value.strip("'\"")


def _no_gpu_here(api: str | None) -> bool:
    """Whether torch surely sees no GPU: no GPU build, or no driver for its GPU build."""
    if api is None:
        return True
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return True
    if not sys.platform.startswith("linux"):
        return False  # Windows drivers leave no files to look for
    if api == "rocm":
        return not os.path.exists("/dev/kfd")
    # The NVIDIA driver shows itself in /proc (containers included) and WSL's in /dev/dxg.
    return not any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/dxg"))


def device_without_torch(name: str) -> str | None:
    """``"cpu"`` where ``name`` surely means the CPU; None where torch must decide.

    Args:
        name: ``--device``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...

    Returns:
        ``"cpu"``, or None.

    Raises:
        InvalidOptionError: ``cuda`` where torch surely sees no CUDA GPU, or ``mps`` off macOS,
            as :func:`resolve_device` says it.
    """
    if name in ("cpu", "cpu:0"):
        return "cpu"
    if re.fullmatch(r"mps(:\d+)?", name) and sys.platform != "darwin":
        raise InvalidOptionError(
            f"{setting('device')} {name} was asked for, but this torch has no MPS support"
        )
    if name != "auto" and not re.fullmatch(r"cuda(:\d+)?", name):
        return None  # mps on macOS, another device type, a malformed name: torch says
    if not _no_gpu_here(gpu_support()):
        return None
    if name == "auto":
        return None if sys.platform == "darwin" else "cpu"  # macOS: MPS, which torch knows
    raise InvalidOptionError(
        f"{setting('device')} {name} was asked for, but torch sees no CUDA GPU"
    )


def resolve_device(name: str) -> torch.device:
    """Picks the device for ``--device``: ``auto`` prefers CUDA, then MPS, then the CPU.

    Imports torch (where :func:`device_without_torch` cannot tell).

    Raises:
        InvalidOptionError: An unknown device name, or a device this torch cannot use.
    """
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise InvalidOptionError(f"unknown device {name!r}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError(
            f"{setting('device')} {name} was asked for, but torch sees no CUDA GPU"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidOptionError(
            f"{setting('device')} {name} was asked for, but this torch has no MPS support"
        )
    return device


def compute_precision(device_type: str, weights_dtype: str, fp32: bool) -> str:
    """The dtype a network computes in: its weights', or autocast's on CUDA.

    CUDA autocasts float32 networks to bfloat16 (float16 where the GPU has no bfloat16) unless
    ``fp32``; networks already in a lower or higher precision keep theirs.

    Args:
        device_type: ``"cpu"``, ``"cuda"``, ``"mps"``...
        weights_dtype: The network's dtype name, e.g. ``"float32"``.
        fp32: Keep float32 on CUDA.

    Returns:
        The dtype's name, e.g. ``"bfloat16"``.
    """
    if device_type != "cuda" or fp32 or weights_dtype != "float32":
        return weights_dtype
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
