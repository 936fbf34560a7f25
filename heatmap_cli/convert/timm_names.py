"""Every timm name the conversion depends on, found in one place, and refused loudly when gone.

The graph walkers know some of timm's layers by class (TF-"same" convolutions and pools, batch
norms with an activation, channel norms, VGG's head), and the tracer asks timm's registry which
modules and functions not to trace into. Those are found by name in timm's modules
(:data:`TIMM_CLASSES`, :data:`TIMM_FUNCTIONS`), so a timm release that renames or moves one would
otherwise go unseen: the layer would just not be recognized, and the conversion would differ
(a "same" padding read as static, a norm not folded, a layer traced into). Instead:

* every name is resolved when timm is first needed (:func:`timm_layers`), and the ones that are
  not found are recorded (:attr:`TimmLayers.missing`);
* converting a network that holds any of timm's modules while one is missing raises
  :class:`~heatmap_cli.errors.TimmCouplingError` (:func:`check_timm_coupling`), which names
  them; the command's ``auto`` method then falls back to crops, the unmodified model;
* the attributes read from timm's modules have checked fallbacks where they are read (a
  batch norm without ``act`` is not folded; a flagged "same" convolution without ``same_pad``
  has its receptive field probed instead of analysed).

``tests/convert/test_timm_coupling.py`` pins what is found today, so a timm upgrade that renames
one of them fails there with its name.
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from heatmap_cli.convert.tf_same import BandedSameConv2d, BatchNormAct2d
from heatmap_cli.errors import TimmCouplingError

__all__ = [
    "TIMM_CLASSES",
    "TIMM_FUNCTIONS",
    "TIMM_TESTED",
    "TimmLayers",
    "check_timm_coupling",
    "is_timm_module",
    "timm_layers",
    "timm_not_traced",
]

TIMM_TESTED = "1.0.31"
"""The timm release whose names :data:`TIMM_CLASSES` and :data:`TIMM_FUNCTIONS` were checked on."""

TIMM_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    "same_convs": (("timm.layers", "Conv2dSame"),),
    "same_pools": (
        ("timm.layers.pool2d_same", "MaxPool2dSame"),
        ("timm.layers.pool2d_same", "AvgPool2dSame"),
    ),
    "flagged_same_convs": (
        ("timm.layers", "StdConv2dSame"),
        ("timm.layers", "ScaledStdConv2dSame"),
    ),
    "static_convs": (("timm.layers", "StdConv2d"), ("timm.layers", "ScaledStdConv2d")),
    "channel_norms": (("timm.layers", "LayerNorm2d"), ("timm.layers", "FrozenBatchNormAct2d")),
    "batch_norm_acts": (("timm.layers", "BatchNormAct2d"),),
    "vgg_conv_mlps": (("timm.models.vgg", "ConvMlp"),),
}
"""``TimmLayers`` field -> the ``(module, class name)`` pairs of timm's layers it holds."""

TIMM_FUNCTIONS: tuple[tuple[str, str], ...] = (
    ("timm.layers", "get_notrace_modules"),
    ("timm.layers", "get_notrace_functions"),
)
"""timm's registry of the modules and functions ``torch.fx`` must not trace into."""


@dataclass(frozen=True)
class TimmLayers:
    """The layers that the walkers know by class: timm's, and the package's TF ports.

    The package's own ports of timm's layers (``heatmap_cli.convert.tf_same``, of the default
    model) are always there; timm's are there once timm is imported, which any timm model
    implies.

    Attributes:
        same_convs: Convolutions that always pad TensorFlow-"same" (``Conv2dSame``).
        same_pools: Pools that always pad TensorFlow-"same" (``MaxPool2dSame``...).
        flagged_same_convs: Convolutions that pad "same" when ``same_pad`` is set.
        static_convs: Convolutions that standardize their weight, with static padding.
        channel_norms: Norms over the channels of an ``(N, C, H, W)`` map, per position.
        batch_norm_acts: Batch norms followed by an activation (``BatchNormAct2d``).
        vgg_conv_mlps: timm's VGG head (``timm.models.vgg.ConvMlp``).
        missing: ``module.name`` of every class or function of :data:`TIMM_CLASSES` and
            :data:`TIMM_FUNCTIONS` that the imported timm does not have (empty without timm).
    """

    same_convs: tuple[type[nn.Module], ...] = ()
    same_pools: tuple[type[nn.Module], ...] = ()
    flagged_same_convs: tuple[type[nn.Module], ...] = ()
    static_convs: tuple[type[nn.Module], ...] = ()
    channel_norms: tuple[type[nn.Module], ...] = ()
    batch_norm_acts: tuple[type[nn.Module], ...] = ()
    vgg_conv_mlps: tuple[type[nn.Module], ...] = ()
    missing: tuple[str, ...] = ()


def timm_layers() -> TimmLayers:
    """The layer classes the walkers know: the package's TF ports, and timm's once imported.

    timm is not imported here (it takes seconds): a network with timm's layers was built by it.
    """
    return _known_layers("timm" in sys.modules)


@functools.cache
def _known_layers(with_timm: bool) -> TimmLayers:
    if not with_timm:
        return TimmLayers(same_convs=(BandedSameConv2d,), batch_norm_acts=(BatchNormAct2d,))
    found: dict[str, tuple[type[nn.Module], ...]] = {}
    missing: list[str] = []
    for field, names in TIMM_CLASSES.items():
        classes = [_resolve(module, name, missing) for module, name in names]
        found[field] = tuple(c for c in classes if isinstance(c, type))
    for module, name in TIMM_FUNCTIONS:
        _resolve(module, name, missing)
    found["same_convs"] = (BandedSameConv2d, *found["same_convs"])
    found["batch_norm_acts"] = (BatchNormAct2d, *found["batch_norm_acts"])
    return TimmLayers(**found, missing=tuple(missing))


def _resolve(module_name: str, name: str, missing: list[str]) -> object:
    """``module_name.name``, or None (recorded in ``missing``) when timm has no such thing."""
    try:
        value = getattr(importlib.import_module(module_name), name, None)
    except ImportError:
        value = None
    expected_class = not name.startswith("get_")
    if value is None or (expected_class and not isinstance(value, type)) or not callable(value):
        missing.append(f"{module_name}.{name}")
        return None
    return value


def is_timm_module(module: nn.Module) -> bool:
    """Whether ``module``'s class comes from timm."""
    return type(module).__module__.partition(".")[0] == "timm"


def check_timm_coupling(model: nn.Module) -> None:
    """Refuses to convert a network built from timm's modules when timm lacks a name it needs.

    Args:
        model: The classifier about to be converted.

    Raises:
        TimmCouplingError: ``model`` holds a module of timm's, and the imported timm lacks a
            class or function of :data:`TIMM_CLASSES` or :data:`TIMM_FUNCTIONS`; the message
            names them and the release they were checked on.
    """
    missing = timm_layers().missing
    if not missing or not any(is_timm_module(m) for m in model.modules()):
        return
    version = getattr(sys.modules.get("timm"), "__version__", "?")
    raise TimmCouplingError(
        f"{type(model).__name__} is built from timm's modules, but timm {version} has no "
        f"{', '.join(missing)} (renamed or moved since timm {TIMM_TESTED}, which heatmap-cli "
        "was checked with); converting it without knowing those layers could give a different "
        "grid. Use method='crops', which runs the unmodified model, or a timm release that has "
        "them."
    )


def timm_not_traced() -> tuple[tuple[type[nn.Module], ...], tuple[Callable[..., object], ...]]:
    """The modules and functions timm registers as not to be traced (dynamic shapes inside).

    Read at every trace: timm adds to its registry as its model modules are imported. None while
    timm is not imported (then no model has its layers), or when its registry cannot be found
    (then :func:`check_timm_coupling` has refused every network with timm's modules).
    """
    if "timm" not in sys.modules or timm_layers().missing:
        return (), ()
    from timm.layers import get_notrace_functions, get_notrace_modules

    functions = tuple(f for f in get_notrace_functions() if callable(f))
    return tuple(get_notrace_modules()), functions
