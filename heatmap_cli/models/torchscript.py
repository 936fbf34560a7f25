"""TorchScript archives made into fx graphs, so that they convert to dense networks like any other.

torch.fx cannot trace TorchScript's code, so a TorchScript model used to run window by window
(``crops``). torch.export's TorchScript converter (``torch._export.converter.TS2EPConverter``)
translates a scripted or traced module's graph into an exported program of ATen operators, with
dynamic batch and spatial sizes; its module is a plain fx graph that
:func:`~heatmap_cli.convert.convolutionalize` rewrites like a ``.pt2`` archive's.

The converted graph is trusted only after it gives the TorchScript module's own scores on a
random batch at the window (:func:`torchscript_graph`). Where the converter fails (data-dependent
shapes, operators it does not know) or the scores differ, the TorchScript module is kept, and it
runs as crops, with a note that says why.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn

from heatmap_cli.convert.fx import trace_model
from heatmap_cli.convert.lifting import lift_modules
from heatmap_cli.errors import ModelFileError, first_line

__all__ = [
    "SCORE_TOLERANCE",
    "ScriptConversion",
    "load_torchscript",
    "program_graph_module",
    "torchscript_graph",
]

SCORE_TOLERANCE = 1e-4
"""Largest difference between the converted graph's and the TorchScript module's scores,
relative to the largest score (at least 1): float reordering stays far below it."""

_PROBE_BATCH = 2  # a batch of 1 would let the converter fix the batch size at 1
_REASON_CHARS = 160  # the converter's messages can spell out whole symbolic shape expressions


@dataclass(frozen=True)
class ScriptConversion:
    """What became of a TorchScript module.

    Attributes:
        model: The fx graph module with the TorchScript module's weights (converted), or the
            TorchScript module itself (not converted).
        converted: Whether ``model`` is the converted graph.
        notes: Why it was not converted, for the user (empty when it was).
    """

    model: nn.Module
    converted: bool
    notes: tuple[str, ...] = ()


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    """The TorchScript module saved in ``path``, on the CPU.

    Raises:
        ModelFileError: The archive cannot be read as TorchScript.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # a damaged archive fails deep inside TorchScript's reader
        reason = f"{type(error).__name__}: {first_line(error)}"
        raise ModelFileError(f"{path}: cannot be read as TorchScript ({reason})") from error


def torchscript_graph(script: nn.Module, window: tuple[int, int], name: str) -> ScriptConversion:
    """Converts a TorchScript module into an fx graph of ATen operators, checked on its scores.

    Args:
        script: A scripted or traced module in eval mode (never modified).
        window: ``(H, W)`` the model was trained at: the converter runs it on a random batch of
            that size, and the graph's scores are compared with the module's there.
        name: The model as the user named it, for the notes.

    Returns:
        The graph module (eval mode, any batch and input size) when it converts and gives the
        module's scores to :data:`SCORE_TOLERANCE`; else the TorchScript module with a note.
    """
    sample = torch.randn(_PROBE_BATCH, 3, *window, generator=torch.Generator().manual_seed(0))
    try:
        graph_module = _convert(script, sample)
        with torch.inference_mode():
            expected, got = script(sample), graph_module(sample)
    except Exception as error:  # the converter fails in many ways on code it cannot express
        return _not_converted(script, name, _brief(error))
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor):
        return _not_converted(script, name, "it does not return one tensor")
    if got.shape != expected.shape:
        return _not_converted(script, name, f"its graph returns {tuple(got.shape)}")
    scale = max(1.0, float(expected.abs().max()))
    difference = float((got.float() - expected.float()).abs().max())
    if not difference <= SCORE_TOLERANCE * scale:
        return _not_converted(script, name, f"its graph's scores differ by {difference:.3g}")
    return ScriptConversion(graph_module, converted=True)


def _convert(script: nn.Module, sample: torch.Tensor) -> fx.GraphModule:
    # Imported here: the converter pulls in torch.export's tracing machinery (about a second).
    from torch._export.converter import TS2EPConverter

    with warnings.catch_warnings(), _quiet_export():
        # "Manually populate ...num_batches_tracked into state_dict": buffers the graph never uses.
        warnings.simplefilter("ignore")
        program = TS2EPConverter(script, (sample,)).convert()
        return program_graph_module(program)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Keeps torch.export's own reports of a failure off the terminal: the note says it once.

    On a failure torch.export logs errors and prints the partial graph to ``sys.stderr``
    (hundreds of lines); on success it may log a warning about a specialized dimension.
    """
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def program_graph_module(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """An exported program's module as a plain fx graph module in eval mode.

    The program's own module checks every call against the input shapes it was exported for;
    the plain graph leaves that out (the converted network runs at other sizes). Its ATen
    convolutions and batch norms are made modules again (:func:`lift_modules`), so that the
    batch norms fold into the convolutions as a Python model's do.

    Raises:
        ConversionError: torch.fx cannot trace the program's module.
    """
    try:
        module = program.module(check_guards=False)  # type: ignore[call-arg]
    except TypeError:  # torch before 2.9 checks shapes only in a pre-hook
        module = program.module()
    graph_module = trace_model(module).eval()  # a plain GraphModule: no hooks or pytree wrapping
    lift_modules(graph_module)
    return graph_module


def _brief(error: Exception) -> str:
    reason = f"{type(error).__name__}: {first_line(error)}"
    return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."


def _not_converted(script: nn.Module, name: str, reason: str) -> ScriptConversion:
    # The engine then says that it falls back to crops; this says why.
    note = (
        f"{name}: TorchScript not converted to a graph by torch.export's converter ({reason}), "
        "so it cannot run dense"
    )
    return ScriptConversion(script, converted=False, notes=(note,))
