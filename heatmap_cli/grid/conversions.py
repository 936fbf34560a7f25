"""``score_grid``'s side of conversion: the window a model records, and one conversion per model.

A notebook calls ``score_grid(model, x)`` in a loop; tracing and rewriting the model on every call
would cost more than the pass itself. :func:`converted` keeps one conversion per ``(model,
window)`` in a ``weakref.WeakKeyDictionary``: the conversion refers to the model only weakly
(``ConvolutionalizedNet.source_reference``), so the cache never keeps a model alive, and the entry
goes when the model does.

**When a cached conversion is reused.** The conversion shares the model's submodules, parameters
and buffers. It is reused while the model still has the same modules (the same objects, of the
same types, under the same names), each with the same plain settings (numbers, strings, flags,
and which object any other attribute is), and the same parameter and buffer objects, of the same
shape, dtype and device (:func:`model_fingerprint`). Anything else converts again: a head
replaced for fine-tuning (``model.fc = nn.Linear(...)``), ``model.to(...)`` or ``model.half()``
(which replace the buffers), a changed flag read by ``forward``. Values changed in place (a
training step, ``load_state_dict``) need nothing: the conversion reads the same tensors. What it
cannot see is an object changed in place behind an attribute (a list or dict that ``forward``
reads, a method patched on the class): convert explicitly with ``convolutionalize`` after such a
change, or call :func:`forget_conversions`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from typing import Any

from torch import nn

from heatmap_cli.convert.network import ConvolutionalizedNet, convolutionalize
from heatmap_cli.errors import ConversionError

__all__ = ["converted", "forget_conversions", "model_fingerprint", "recorded_window"]

_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}
_PLAIN = (bool, int, float, str, bytes, type(None))

# A failure is kept as its type and arguments: the exception itself would keep, through its
# traceback's frames, the model alive.
_Failure = tuple[type[ConversionError], tuple[Any, ...]]
_Entry = tuple[tuple[Any, ...], ConvolutionalizedNet | _Failure]
_cache: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], _Entry]]
_cache = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def recorded_window(model: object) -> tuple[int, int] | None:
    """The window ``(h, w)`` a model records about itself, or None when it records none.

    Read from, in this order: a converted network's ``window`` (also a dilated or stitched
    one); a loaded model's ``input_size`` (``heatmap_cli.models.LoadedModel``); timm's
    ``pretrained_cfg`` (or the older ``default_cfg``) ``input_size``, ``(C, H, W)``.

    Args:
        model: A classifier, a converted network, or a loaded model.
    """
    window = getattr(model, "window", None)
    if isinstance(model, nn.Module) and _is_pair(window):
        return int(window[0]), int(window[1])
    size = getattr(model, "input_size", None)
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "model", None), nn.Module):
        return (int(size[0]), int(size[1])) if _is_pair(size) else None
    for attribute in ("pretrained_cfg", "default_cfg"):
        config = getattr(model, attribute, None)
        size = config.get("input_size") if isinstance(config, Mapping) else None
        if isinstance(size, (tuple, list)) and len(size) == 3 and _is_pair(size[1:]):
            return int(size[1]), int(size[2])
    return None


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in value)
    )


def model_fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """What a cached conversion of ``model`` depends on (see the module's docstring).

    Returns:
        A tuple that compares equal as long as the conversion may be reused: every module's
        name, identity, type and plain settings, and every parameter's and buffer's name,
        identity, shape, dtype and device.
    """
    modules = tuple(
        (name, id(module), type(module), _settings(module))
        for name, module in model.named_modules()
    )
    tensors = tuple(
        (name, id(tensor), tuple(tensor.shape), tensor.dtype, tensor.device)
        for named in (model.named_parameters(), model.named_buffers())
        for name, tensor in named
    )
    return modules, tensors


def _settings(module: nn.Module) -> tuple[Any, ...]:
    """A module's own attributes: plain values as they are, other objects by identity."""
    return tuple(
        (key, _plain(value)) for key, value in vars(module).items() if key not in _MODULE_INTERNALS
    )


def _plain(value: object) -> object:
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, tuple):
        return tuple(_plain(item) for item in value)
    return type(value), id(value)


def converted(model: nn.Module, window: tuple[int, int]) -> ConvolutionalizedNet:
    """``convolutionalize(model, window)``, converted once while the model stays the same.

    Args:
        model: A classifier in eval mode (checked by the caller).
        window: ``(h, w)`` training input of the classifier.

    Returns:
        The converted network; it holds the model weakly, and is shared by every call that
        finds the model unchanged (a failure to convert is remembered the same way).

    Raises:
        ConversionError: The model cannot be converted (raised again while it stays the same).
    """
    fingerprint = model_fingerprint(model)
    with _lock:
        entry = _conversions(model).get(window)
    if entry is None or entry[0] != fingerprint:
        try:
            entry = (fingerprint, _holding_model_weakly(convolutionalize(model, window), model))
        except ConversionError as error:
            with _lock:
                _conversions(model)[window] = (fingerprint, (type(error), error.args))
            raise
        with _lock:
            _conversions(model)[window] = entry
    if isinstance(entry[1], tuple):
        kind, args = entry[1]
        raise kind(*args)
    return entry[1]


def _conversions(model: nn.Module) -> dict[tuple[int, int], _Entry]:
    try:
        return _cache.setdefault(model, {})
    except TypeError:  # a module that cannot be referred to weakly: nothing is kept
        return {}


def _holding_model_weakly(net: ConvolutionalizedNet, model: nn.Module) -> ConvolutionalizedNet:
    try:
        reference = weakref.ref(model)
    except TypeError:
        return net
    return ConvolutionalizedNet(
        net.graph_module,
        stride=net.stride,
        window=net.window,
        native_stride=net.native_stride,
        global_context=net.global_context,
        source_model=reference,
    )


def forget_conversions(model: nn.Module | None = None) -> None:
    """Drops the cached conversions of ``model`` (None: of every model)."""
    with _lock:
        if model is None:
            _cache.clear()
        else:
            _cache.pop(model, None)
