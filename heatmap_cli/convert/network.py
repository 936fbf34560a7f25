"""Rewrite a classifier's fully-connected head as convolutions ("convolutionalization").

The classifier is traced into a ``torch.fx`` graph (``heatmap_cli.convert.fx``). The nodes that fold
the feature map into one vector per image (global pools, ``flatten``) and feed only the classifier
start the *head*; global pools whose result flows back into the feature map (the
squeeze-and-excitation blocks of MobileNetV3 or EfficientNet-B*) stay global. The head is
rewritten (``heatmap_cli.convert.head``, with the layers of ``heatmap_cli.convert.ops``) so that it
computes, at every position of a larger feature map, what the original head computed on the one
window of the training input:

* a global average (or max) pool over the ``(fh, fw)`` feature map of the training input becomes
  a sliding ``avg_pool2d(kernel=(fh, fw), stride=1)`` (or ``max_pool2d``);
* ``flatten`` of a ``(C, h, w)`` volume disappears, and the ``Linear(C*h*w, K)`` that reads it
  becomes ``conv2d`` with kernel ``(h, w)`` and the Linear's weight reshaped to ``(K, C, h, w)``,
  a view of the same storage; later Linears become 1x1 convolutions (computed as a matrix product
  when the grid is small, where that is faster);
* ``BatchNorm1d`` and ``LayerNorm`` over the vector act per position over the channels;
* an adaptive pool that is the identity at the training size (torchvision's VGG and AlexNet)
  disappears, otherwise every input would collapse back to one cell.

The converted network shares its weights with the model it came from (nothing is copied and
nothing is written to them); its own module hierarchy is new, so replacing or moving its modules
does not touch the caller's model, but ``.to(device)`` or ``.train()`` on the converted network
reaches the shared parameters and submodules, exactly as on the original.
"""

from __future__ import annotations

import numbers
import operator
import warnings
import weakref
from collections.abc import Iterable, Sequence

import torch
from torch import fx, nn

from heatmap_cli.convert.fx import PROBE_SPAN, describe, module_of, trace_model
from heatmap_cli.convert.head import rewrite_head
from heatmap_cli.convert.ops import DEFAULT_MATMUL_MAX_CELLS
from heatmap_cli.convert.shapes import meta_clone, shape_pass
from heatmap_cli.convert.windows import grid_shape
from heatmap_cli.errors import ConversionError, GeometryError, TrainingModeError, first_line

__all__ = [
    "ConvolutionalizedNet",
    "check_classifier",
    "convolutionalize",
    "source_model",
    "window_size",
]


# --- Arguments ----------------------------------------------------------------------------------


def window_size(input_size: object) -> tuple[int, int]:
    """``input_size`` as an ``(h, w)`` pair of pixels: an int is a square window.

    Raises:
        TypeError: Neither an int nor a pair of ints.
        GeometryError: A side that is not positive.
    """
    if isinstance(input_size, numbers.Integral) and not isinstance(input_size, bool):
        pair: tuple[object, ...] = (input_size, input_size)
    elif isinstance(input_size, Sequence) and not isinstance(input_size, str):
        pair = tuple(input_size)
    else:
        pair = ()
    if len(pair) != 2 or not all(
        isinstance(side, numbers.Integral) and not isinstance(side, bool) for side in pair
    ):
        raise TypeError(f"input_size must be an int or an (h, w) pair of ints, got {input_size!r}")
    window = (int(pair[0]), int(pair[1]))  # type: ignore[call-overload]
    if window[0] <= 0 or window[1] <= 0:
        raise GeometryError(f"input_size must be positive, got {input_size!r}")
    return window


def source_model(model: nn.Module) -> nn.Module:
    """The unmodified classifier behind a converted network (``.source_model``), or ``model``."""
    source = getattr(model, "source_model", None)
    return source if isinstance(source, nn.Module) else model


def check_classifier(model: object) -> nn.Module:
    """Checks that ``model`` is a module in eval mode (behind a converted network: its source).

    A model in training mode is refused rather than scored: its dropout would make the grid
    random, and its batch norms would update their running statistics, changing the caller's
    model. Switching it to eval mode here would change it too, so the caller decides.

    Returns:
        ``model``.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        TrainingModeError: A module of the classifier is in training mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    classifier = source_model(model)
    training = [name or "the model itself" for name, m in classifier.named_modules() if m.training]
    if training:
        raise TrainingModeError(
            f"{type(classifier).__name__} is in training mode ({len(training)} modules, e.g. "
            f"{training[0]!r}): its dropout would make the grid random and scoring it would "
            "update its batch-norm statistics; call model.eval() first (heatmap-cli never "
            "changes the mode or the weights of a model it is given)"
        )
    return model


# --- Attention ----------------------------------------------------------------------------------


def _refuse_attention(graph_module: fx.GraphModule, model_name: str) -> None:
    """Raises if any operation mixes all positions of the feature map with each other."""
    input_dependent: set[fx.Node] = set()
    for node in graph_module.graph.nodes:
        if node.op == "placeholder" or any(a in input_dependent for a in node.all_input_nodes):
            input_dependent.add(node)
        if node not in input_dependent:
            continue
        module = module_of(graph_module, node)
        if module is not None:
            label = type(module).__name__
        else:
            label = getattr(node.target, "__name__", str(node.target))
        is_attention = "attention" in label.lower()
        if node.target in (torch.matmul, torch.bmm, torch.einsum, operator.matmul) or (
            node.op == "call_method" and node.target in ("matmul", "bmm")
        ):
            operands = [a for a in node.all_input_nodes if a in input_dependent]
            is_attention = is_attention or len(operands) >= 2
        if is_attention:
            raise ConversionError(
                f"{model_name} uses attention ({describe(graph_module, node)}), which mixes "
                "every position of the image with every other; its answer on a window cannot be "
                "computed by sliding convolutions. Use method='crops', which runs the unmodified "
                "model on every window."
            )


# --- The converted network ----------------------------------------------------------------------


class ConvolutionalizedNet(nn.Module):
    """A classifier whose head slides over the feature map: ``(N,3,H,W) -> (N,K,h,w)``.

    Cell ``(i, j)`` of the output holds the classifier's logits for the ``window``-sized part of
    the input whose top-left corner is ``(i * stride, j * stride)``, as far as zero padding allows
    (see docs/methods.md: the dense pass sees real neighbours where a crop would see zeros).

    Attributes:
        graph_module: The rewritten ``fx.GraphModule`` that computes the grid (``forward`` runs
            it and nothing else).
        stride: Output stride in input pixels, measured from the network.
        window: ``(h, w)`` window of one cell: the training input size.
        native_stride: The stride of the network at its native resolution; its computation
            repeats every ``native_stride`` pixels (``stride`` unless made finer, see
            ``heatmap_cli.grid.dilate``).
        global_context: Names of global pools left inside the body (squeeze-and-excitation);
            empty when every cell depends only on its own window.
        source_model: The unmodified model it was converted from (shared, not copied); None
            when unknown, or once a model held weakly (``score_grid``'s cache) is gone.
        source_reference: How it holds that model: the model itself, or a ``weakref.ref`` to
            it (a cached conversion must not keep the model alive).
    """

    def __init__(
        self,
        graph_module: fx.GraphModule,
        *,
        stride: int,
        window: tuple[int, int],
        native_stride: int | None = None,
        global_context: Iterable[str] = (),
        source_model: nn.Module | weakref.ReferenceType[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.graph_module = graph_module
        # A plain reference, not a submodule: the weights are already registered through the
        # graph module, and crops evaluation needs the unmodified model.
        object.__setattr__(self, "_source", source_model)
        self.stride = stride
        self.window = window
        self.native_stride = stride if native_stride is None else native_stride
        self.global_context = tuple(global_context)

    @property
    def source_model(self) -> nn.Module | None:
        """The unmodified model it was converted from, if known and alive."""
        held = self.source_reference
        return held() if isinstance(held, weakref.ReferenceType) else held

    @property
    def source_reference(self) -> nn.Module | weakref.ReferenceType[nn.Module] | None:
        """The model it was converted from, or a weak reference to it, as it was given."""
        return self.__dict__.get("_source")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the class-score grid.

        Args:
            x: ``(N, 3, H, W)`` normalized images with ``H, W >= window``.

        Returns:
            ``(N, K, h, w)`` logits, ``h = (H - window_h) // stride + 1`` for inputs snapped to
            ``window + stride * k``.

        Raises:
            GeometryError: An input smaller than the window (it has no whole window to score).
        """
        if x.dim() == 4:
            grid_shape((x.shape[2], x.shape[3]), self.window, self.stride)
        return self.graph_module(x)

    def grid_size(self, input_size: tuple[int, int]) -> tuple[int, int]:
        """Output ``(h, w)`` for an input size, computed without running the network."""
        return _output_sizes(meta_clone(self.graph_module), [input_size])[0]  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        """Shown by ``print(net)``."""
        native = f" (native {self.native_stride})" if self.native_stride != self.stride else ""
        return f"stride={self.stride}{native}, window={self.window}"


def _output_sizes(
    meta_module: fx.GraphModule, input_sizes: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """Grid sizes of a meta-device network for several input sizes (shapes only)."""
    sizes = []
    for size in input_sizes:
        out = shape_pass(meta_module, size)
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            raise ConversionError("the converted network does not return an (N, K, h, w) grid")
        sizes.append((int(out.shape[2]), int(out.shape[3])))
    return sizes


def _measure_stride(graph_module: fx.GraphModule, window: tuple[int, int]) -> int:
    """Native stride: how many input pixels move the grid by one cell, measured on shapes."""
    meta_module = meta_clone(graph_module)
    span = PROBE_SPAN
    at_window, (rows, _) = _output_sizes(meta_module, [window, (window[0] + span, window[1])])  # type: ignore[arg-type]
    if at_window != (1, 1):
        raise ConversionError(
            f"at its training size {window[1]}x{window[0]} the converted network does not give a "
            "single cell; is input_size the size the model was trained at?"
        )
    if rows <= 1 or span % (rows - 1):
        raise ConversionError(f"could not measure a whole-pixel stride ({rows} cells over {span})")
    stride = span // (rows - 1)
    (check,) = _output_sizes(meta_module, [(window[0] + 2 * stride, window[1] + 3 * stride)])  # type: ignore[arg-type]
    if check != (3, 4):
        raise ConversionError(f"inconsistent geometry: stride {stride} gives a {check} grid")
    return stride


def _propagate_shapes(graph_module: fx.GraphModule, window: tuple[int, int]) -> None:
    """Records every node's output shape at the training size, without computing anything."""
    meta_module = meta_clone(graph_module)
    try:
        shape_pass(meta_module, window)  # type: ignore[arg-type]
    except Exception as error:
        raise ConversionError(
            f"{graph_module.__class__.__name__} does not run on a {window[1]}x{window[0]} "
            f"input ({type(error).__name__}: {first_line(error)})"
        ) from error
    for node, meta_node in zip(graph_module.graph.nodes, meta_module.graph.nodes, strict=True):
        if "tensor_meta" in meta_node.meta:
            node.meta["tensor_meta"] = meta_node.meta["tensor_meta"]


def convolutionalize(
    model: nn.Module,
    input_size: tuple[int, int] = (224, 224),
    *,
    matmul_max_cells: int = DEFAULT_MATMUL_MAX_CELLS,
) -> ConvolutionalizedNet:
    """Converts a classifier into a network that outputs a grid of class scores.

    Args:
        model: A classifier in eval mode, ``(N, 3, h, w) -> (N, K)`` at its training size
            ``input_size``, in any floating dtype. It is not modified; the result shares its
            weights (no copy) and computes in their dtype.
        input_size: ``(h, w)`` the model was trained at, or one int for a square; the window
            each cell sees.
        matmul_max_cells: Converted heads whose output has at most this many cells (images x
            rows x columns) run as a matrix product, larger ones as a convolution (the faster
            form for each; the same values up to float rounding). Negative: always convolve.

    Returns:
        A ``ConvolutionalizedNet`` mapping ``(N, 3, H, W) -> (N, K, h', w')``, with ``stride``
        and ``window`` derived from the network. At ``input_size`` its 1x1 grid equals the
        original logits.

    Raises:
        TypeError: ``model`` is not a module, or ``input_size`` neither an int nor a pair.
        TrainingModeError: The model is in training mode (call ``model.eval()`` first).
        ConversionError: If the model cannot be traced, uses attention over positions, or has a
            head operation with no per-position equivalent. The message names the operation
            and points to ``method="crops"``.
    """
    check_classifier(model)
    window = window_size(input_size)
    name = type(model).__name__
    graph_module = trace_model(model)
    _refuse_attention(graph_module, name)
    _propagate_shapes(graph_module, window)
    context = rewrite_head(graph_module, name, matmul_max_cells)
    stride = _measure_stride(graph_module, window)
    if context:
        warnings.warn(
            f"{name} has global pooling inside its body ({len(context)} "
            f"squeeze-and-excitation style pools, e.g. '{context[0]}'): every cell of the "
            "dense grid also sees image-wide context, so it departs from per-window crops more "
            "than zero padding alone explains",
            stacklevel=2,
        )
    return ConvolutionalizedNet(
        graph_module, stride=stride, window=window, global_context=context, source_model=model
    )
