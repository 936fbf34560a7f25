"""Models saved with their code: ``--model FILE`` for TorchScript, torch.export and pickles.

* A ``torch.export`` archive (``torch.export.save``, ``.pt2``): its program's module is an fx
  graph of ATen operators, so it converts where the graph allows (:func:`exported_module`); its
  window is the input size it was exported at.
* A TorchScript archive (``torch.jit.save`` of ``torch.jit.script``/``trace``): torch.fx cannot
  trace its code, so torch.export's TorchScript converter makes it an fx graph of ATen operators
  (:mod:`~heatmap_cli.models.torchscript`), which converts like an exported program's; where the
  converter fails, it runs window by window (``crops``), with a note that says why.
* A full-model pickle (``torch.save(model)``): unpickling runs code stored in the file, so it
  is refused unless ``allow_pickle`` (``--allow-pickle``) asks for it on purpose.

The kind is told by the archive's contents, not its name. Files without a recorded window run at
``--input-size`` (default 224, with a note).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import fx, nn

from heatmap_cli.convert.fx import RESHAPE_FUNCTIONS
from heatmap_cli.errors import ModelFileError, WeightsMismatchError, first_line
from heatmap_cli.models.base import LoadedModel, LoadRequest, ModelFile, ModelSource
from heatmap_cli.models.own import DEFAULT_WINDOW, own_loaded_model
from heatmap_cli.models.torchscript import (
    load_torchscript,
    program_graph_module,
    torchscript_graph,
)
from heatmap_cli.models.weights import PICKLE_REFUSAL, file_sha256, read_file

__all__ = ["ArchiveSource", "archive_kind", "exported_module"]

_SUFFIXES = frozenset({".pt", ".pth", ".pt2", ".ts", ".jit", ".torchscript", ".ptl", ".pkl"})
_WRAPPERS = ("model_ema", "ema", "model", "module", "net")


class ArchiveSource(ModelSource):
    """A model file: a TorchScript or ``torch.export`` archive, or (opted in) a pickled model."""

    family = "file"
    hint = "a model file is a TorchScript or torch.export (.pt2) archive"

    def claims(self, name: str) -> bool:
        """Whether ``name`` is an existing file, or a path with a model file's suffix."""
        path = Path(name)
        return path.suffix.lower() in _SUFFIXES or path.is_file()

    def load(self, name: str, request: LoadRequest) -> LoadedModel:
        """Loads the archive and describes it by one forward pass at its window."""
        path = Path(name)
        if not path.is_file():
            raise ModelFileError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
        if request.weights is not None:
            raise ModelFileError(
                f"{path} holds its weights; --weights is for an architecture's name or "
                "file.py:callable"
            )
        kind, window = archive_kind(path), request.input_size
        notes: tuple[str, ...] = ()
        described = kind
        if kind == "export":
            model, recorded = exported_module(path)
            window = window or recorded
        elif kind == "torchscript":
            conversion = torchscript_graph(load_torchscript(path), window or DEFAULT_WINDOW, name)
            model, notes = conversion.model, conversion.notes
            described = "torchscript, converted to a graph" if conversion.converted else kind
        else:
            model = _load_pickled_module(path, request.allow_pickle)
        files = (ModelFile("model", path, file_sha256(path)),)
        return own_loaded_model(
            name, model, source=f"{path} ({described})", window=window, files=files, notes=notes
        )


def archive_kind(path: Path) -> str:
    """``"export"``, ``"torchscript"`` or ``"pickle"``: what a model file holds.

    Raises:
        ModelFileError: It is none of them (not a zip archive of PyTorch's, or a corrupt one).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.partition("/")[2] for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as error:
        names = set()
        reason = first_line(error)
    else:
        reason = "no model in it"
    if "archive_format" in names or any(name.startswith("models/") for name in names):
        return "export"
    if "constants.pkl" in names or any(name.startswith("code/") for name in names):
        return "torchscript"
    if "data.pkl" in names:
        return "pickle"
    raise ModelFileError(
        f"{path}: not a TorchScript archive, a torch.export archive (.pt2) or a torch.save "
        f"file ({reason})"
    )


def _load_pickled_module(path: Path, allow_pickle: bool) -> nn.Module:
    """The module in a ``torch.save(model)`` file (or a checkpoint holding one)."""
    if not allow_pickle:
        try:
            read_file(path)
        except WeightsMismatchError:
            raise ModelFileError(
                f"{path}: is a pickled Python object (torch.save(model)); {PICKLE_REFUSAL}"
            ) from None
        raise ModelFileError(
            f"{path}: holds only weights; name its architecture: --model ARCH --weights {path}"
        )
    try:
        loaded = read_file(path, allow_pickle=True)
    except WeightsMismatchError as error:
        raise ModelFileError(str(error)) from None
    if isinstance(loaded, dict):
        loaded = next(
            (loaded[k] for k in _WRAPPERS if isinstance(loaded.get(k), nn.Module)), loaded
        )
    if not isinstance(loaded, nn.Module):
        raise ModelFileError(
            f"{path}: holds a {type(loaded).__name__}, not a model; for weights, name their "
            f"architecture: --model ARCH --weights {path}"
        )
    return loaded


def exported_module(path: Path) -> tuple[fx.GraphModule, tuple[int, int] | None]:
    """A ``torch.export`` archive's program as a plain fx graph module, and its window.

    The program's own module checks every call against the input shape it was exported at;
    the plain graph leaves that out (the converted network runs at other sizes), and where the
    graph spells out the exported batch size in a reshape (``view(x, [1, 512])``), it is made
    ``-1``, so the module takes batches of any size.

    Returns:
        The graph module (its weights the program's), and ``(H, W)`` of the exported input, or
        None when that was dynamic.

    Raises:
        ModelFileError: The archive cannot be read.
    """
    try:
        program = torch.export.load(str(path))
    except Exception as error:  # a damaged archive fails in the deserializer
        reason = f"{type(error).__name__}: {first_line(error)}"
        raise ModelFileError(
            f"{path}: cannot be read as a torch.export archive ({reason})"
        ) from error
    shape = _user_input_shape(program)
    graph_module = program_graph_module(program)
    if shape is not None:
        _free_batch_dimension(graph_module, shape[0])
    window = shape[2:] if shape is not None and len(shape) == 4 else None
    return graph_module, window  # type: ignore[return-value]


def _user_input_shape(program: torch.export.ExportedProgram) -> tuple[int, ...] | None:
    """The static shape of the program's one image input, or None if dynamic or several."""
    inputs = program.graph_signature.user_inputs
    shapes = [
        getattr(node.meta.get("val"), "shape", None)
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in inputs
    ]
    if len(shapes) != 1 or shapes[0] is None or not all(isinstance(s, int) for s in shapes[0]):
        return None
    return tuple(shapes[0])


def _free_batch_dimension(graph_module: fx.GraphModule, batch: int) -> None:
    """``view(x, [batch, ...])`` -> ``view(x, [-1, ...])`` wherever the rest is spelled out."""
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in RESHAPE_FUNCTIONS:
            continue
        shape = node.args[1] if len(node.args) > 1 else None
        if isinstance(shape, (list, tuple)) and shape and shape[0] == batch and -1 not in shape[1:]:
            node.args = (node.args[0], [-1, *shape[1:]], *node.args[2:])
    graph_module.recompile()
