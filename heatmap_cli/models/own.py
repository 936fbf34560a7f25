"""Classifiers without a library's metadata: the user's own code and model files.

Nothing records their classes, window or normalization, so: the number of classes ``K`` is read
from one forward pass at the window (:func:`probe_scores`), the window is the user's
``--input-size`` (or what the file recorded, else 224), mean and std are ImageNet's, and the
classes are ``class 0`` ... ``class K-1`` unless a labels file names them.

What the model returns is read from its last operations (:func:`model_output`): logits, or
probabilities when its head ends in a softmax or a sigmoid (those must not get a second one), or
log-probabilities after a log-softmax. The torch.fx graph says so for Python models and
``torch.export`` programs, the TorchScript graph for TorchScript; a model that neither can read
is recognized by its scores (rows that are probabilities summing to 1).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn

from heatmap_cli.convert.fx import (
    LOG_SOFTMAX_FUNCTIONS,
    SIGMOID_FUNCTIONS,
    SOFTMAX_FUNCTIONS,
    SQUEEZE_FUNCTIONS,
    is_reshape,
    is_script_module,
    module_of,
    trace_model,
)
from heatmap_cli.errors import ConversionError, ModelFileError, first_line, setting
from heatmap_cli.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LoadedModel,
    ModelFile,
    ModelOutput,
    numbered_classes,
)

__all__ = ["DEFAULT_WINDOW", "model_output", "own_loaded_model", "probe_scores"]

DEFAULT_WINDOW = (224, 224)
"""The window assumed for a model that records none and was given no ``--input-size``."""

_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Flatten)
_IDENTITY_METHODS = frozenset({"contiguous", "float", "squeeze", "view", "reshape", "flatten"})
_IDENTITY_FUNCTIONS = frozenset(
    {F.dropout, torch.dropout, *SQUEEZE_FUNCTIONS}
    | {torch.ops.aten.dropout.default, torch.ops.aten.dropout_.default}
    | {torch.ops.aten.clone.default, torch.ops.aten.alias.default}
)
_SCRIPT_IDENTITIES = frozenset(
    {"aten::squeeze", "aten::view", "aten::reshape", "aten::flatten", "aten::dropout"}
    | {"aten::contiguous", "aten::clone", "aten::feature_dropout"}
)
_SCRIPT_ACTIVATIONS: dict[str, ModelOutput] = {
    "aten::softmax": "softmax",
    "aten::log_softmax": "log_softmax",
    "aten::sigmoid": "sigmoid",
}


def own_loaded_model(
    name: str,
    model: nn.Module,
    *,
    source: str,
    window: tuple[int, int] | None,
    files: tuple[ModelFile, ...] = (),
    notes: tuple[str, ...] = (),
) -> LoadedModel:
    """Describes a model that comes without metadata, after running it once.

    Args:
        name: The model as the user named it.
        model: The classifier; it is put in eval mode.
        source: Where it came from, for the user.
        window: The size it was trained at; None assumes :data:`DEFAULT_WINDOW`, with a note.
        files: The files it was made from.
        notes: What the user should know about how it was loaded.

    Returns:
        The model with ``K`` numbered classes, ImageNet's mean and std, bilinear resizing and
        what it returns.

    Raises:
        ModelFileError: It does not run at the window, or does not return ``(N, K)`` scores.
    """
    if window is None:
        window = DEFAULT_WINDOW
        notes = (
            *notes,
            f"{name} records no input size; assuming {window[1]}x{window[0]} "
            f"(set {setting('input_size')} to the size it was trained at)",
        )
    model.eval()
    scores = probe_scores(model, window, name)
    return LoadedModel(
        name=name,
        model=model,
        categories=numbered_classes(scores.shape[1]),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        input_size=window,
        interpolation="bilinear",
        source=source,
        output=model_output(model, scores),
        files=files,
        notes=notes,
    )


def probe_scores(model: nn.Module, window: tuple[int, int], name: str) -> torch.Tensor:
    """The model's scores for two random images of the window's size.

    Returns:
        float ``(2, K)`` scores (a model returning ``(N,)`` has ``K = 1``).

    Raises:
        ModelFileError: The model does not run on a ``(2, 3, H, W)`` batch, or returns anything
            but ``(N, K)`` or ``(N,)`` scores.
    """
    x = torch.randn(2, 3, *window, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            scores = model(x)
    except Exception as error:  # the user's model may fail in any way
        raise ModelFileError(
            f"{name} does not run on a batch of {window[1]}x{window[0]} images "
            f"({type(error).__name__}: {first_line(error)}); is {setting('input_size')} its "
            "training size?"
        ) from error
    if not isinstance(scores, torch.Tensor) or scores.dim() not in (1, 2) or len(scores) != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ModelFileError(
            f"{name} returns {shape} for 2 images; a classifier returns (N, K) class scores"
        )
    return scores.float().reshape(2, -1)


def model_output(model: nn.Module, scores: torch.Tensor) -> ModelOutput:
    """What a classifier returns: logits, or the output of the activation its head ends with.

    Args:
        model: The classifier.
        scores: Its ``(N, K)`` output on some batch (read only when its graph cannot be).

    Returns:
        ``"softmax"``, ``"log_softmax"`` or ``"sigmoid"`` when that is its last operation
        (reshapes, squeezes and dropout after it do not count), else ``"logits"``.
    """
    if is_script_module(model):
        return _script_output(model)
    try:
        graph_module = model if isinstance(model, fx.GraphModule) else trace_model(model)
    except ConversionError:
        return _scores_output(scores)
    return _graph_output(graph_module)


def _graph_output(graph_module: fx.GraphModule) -> ModelOutput:
    output = next(node for node in graph_module.graph.nodes if node.op == "output")
    for node in _backwards(output.args[0]):
        module = module_of(graph_module, node)
        if isinstance(module, nn.LogSoftmax) or node.target in LOG_SOFTMAX_FUNCTIONS:
            return "log_softmax"
        if isinstance(module, nn.Softmax) or node.target in SOFTMAX_FUNCTIONS:
            return "softmax"
        if isinstance(module, nn.Sigmoid) or node.target in SIGMOID_FUNCTIONS:
            return "sigmoid"
        if node.op == "call_method" and node.target in ("softmax", "log_softmax", "sigmoid"):
            return node.target  # type: ignore[return-value]
        if not (
            isinstance(module, _IDENTITY_MODULES)
            or node.target in _IDENTITY_FUNCTIONS
            or (node.op == "call_method" and node.target in _IDENTITY_METHODS)
            or is_reshape(graph_module, node)
        ):
            break
    return "logits"


def _backwards(value: object) -> Iterator[fx.Node]:
    """The output node and then its first input, and so on, while there is one."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    while isinstance(value, fx.Node):
        yield value
        value = value.all_input_nodes[0] if value.all_input_nodes else None


def _script_output(model: nn.Module) -> ModelOutput:
    graph = model.inlined_graph  # type: ignore[attr-defined]
    value = graph.return_node().inputsAt(0)
    while True:
        kind = value.node().kind()
        if kind in _SCRIPT_ACTIVATIONS:
            return _SCRIPT_ACTIVATIONS[kind]
        if kind not in _SCRIPT_IDENTITIES:
            return "logits"
        value = value.node().inputsAt(0)


def _scores_output(scores: torch.Tensor) -> ModelOutput:
    """Recognizes probabilities by their values: rows of non-negative numbers summing to 1."""
    if scores.shape[1] < 2:
        return "logits"
    if bool((scores >= 0).all()) and torch.allclose(scores.sum(1), torch.ones(2), atol=1e-4):
        return "softmax"
    if bool((scores <= 0).all()):
        totals = scores.exp().sum(1)
        if torch.allclose(totals, torch.ones(2), atol=1e-4):
            return "log_softmax"
    return "logits"
