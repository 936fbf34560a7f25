"""Your own architecture: ``--model path/to/file.py:callable`` or ``package.module:callable``.

The callable (a function or a class) returns the classifier, an ``nn.Module``. It is called with
no arguments, or, with ``--weights``, with ``num_classes=K`` when it takes that argument and the
file's classifier has ``K`` outputs (:mod:`~heatmap_cli.models.fitting`); the weights are then
loaded strictly. This imports and runs the user's code: it is their choice, made by naming it.
A file's folder is on ``sys.path`` while it is imported and called, so it can import its
neighbours; a package module is looked up from the current folder too, as ``python -m`` would.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from torch import nn

from heatmap_cli.errors import ModelFileError, first_line
from heatmap_cli.models.base import LoadedModel, LoadRequest, ModelFile, ModelSource
from heatmap_cli.models.fitting import build_for_checkpoint
from heatmap_cli.models.own import DEFAULT_WINDOW, own_loaded_model
from heatmap_cli.models.weights import file_sha256, read_checkpoint

__all__ = ["OwnCodeSource"]

_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_SPEC = re.compile(rf"(?P<module>.+\.py|{_DOTTED}):(?P<attribute>{_DOTTED})")

ClassesParameter = Literal["none", "optional", "required"]


class OwnCodeSource(ModelSource):
    """``path/to/file.py:callable`` and ``package.module:callable``."""

    family = "python"
    hint = "your own model code is path/to/file.py:callable or package.module:callable"

    def claims(self, name: str) -> bool:
        """Whether ``name`` is ``MODULE:CALLABLE`` (a ``.py`` path or a dotted module)."""
        return _SPEC.fullmatch(name) is not None

    def load(self, name: str, request: LoadRequest) -> LoadedModel:
        """Imports the callable, calls it, and loads ``request.weights`` into what it returns."""
        module_name, attribute = name.rsplit(":", 1)
        path = Path(module_name) if module_name.endswith(".py") else None
        with _importable_from(path.parent if path is not None else Path.cwd()):
            factory = _import_callable(module_name, attribute, path)
            parameter = _classes_parameter(factory)
            if request.weights is None:
                if parameter == "required":
                    raise ModelFileError(
                        f"{name} needs num_classes; pass --weights FILE, whose classifier says it"
                    )
                model, notes, source = _call(factory, name, parameter, None), (), name
            else:
                checkpoint = read_checkpoint(request.weights, allow_pickle=request.allow_pickle)
                build = functools.partial(_call, factory, name, parameter)
                fitted = build_for_checkpoint(build, checkpoint, name, probe_on_meta=False)
                model, source = fitted.model, str(request.weights)
        files = (ModelFile("code", path, file_sha256(path)),) if path is not None else ()
        window = request.input_size
        if request.weights is not None:  # the size the file records, else assumed with a note
            window, notes = fitted.window(DEFAULT_WINDOW, request.input_size, None)
        return own_loaded_model(name, model, source=source, window=window, files=files, notes=notes)


@contextlib.contextmanager
def _importable_from(folder: Path) -> Iterator[None]:
    """Puts ``folder`` first on ``sys.path`` for the block (the user's code imports from it)."""
    entry = str(folder.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _import_callable(module_name: str, attribute: str, path: Path | None) -> Callable[..., object]:
    """Imports ``module_name`` (a file or a dotted module) and returns its ``attribute``."""
    where = str(path) if path is not None else module_name
    try:
        module = importlib.import_module(module_name) if path is None else _import_file(path)
    except ModelFileError:
        raise
    except ModuleNotFoundError as error:
        if error.name != module_name.partition(".")[0] and error.name != module_name:
            raise ModelFileError(f"{where}: importing it failed ({first_line(error)})") from error
        raise ModelFileError(
            f"no Python module {module_name!r}: run heatmap from the folder that holds it, "
            "install it, or name its file (path/to/file.py:callable)"
        ) from None
    except Exception as error:  # the user's module may raise anything while it is imported
        reason = f"{type(error).__name__}: {first_line(error)}"
        raise ModelFileError(f"{where}: importing it raised {reason}") from error
    try:
        found = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError:
        raise ModelFileError(f"{where} has no {attribute!r}") from None
    if not callable(found):
        raise ModelFileError(f"{where}: {attribute} is a {type(found).__name__}, not a callable")
    return found


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    module_name = f"heatmap_user_code.{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelFileError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # classes defined there can then be pickled, inspected
    spec.loader.exec_module(module)
    return module


def _classes_parameter(factory: Callable[..., object]) -> ClassesParameter:
    """Whether ``factory`` takes ``num_classes`` (a ``**kwargs`` counts), and if it must."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return "none"
    parameter = parameters.get("num_classes")
    if parameter is None:
        keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        return "optional" if keywords else "none"
    return "required" if parameter.default is inspect.Parameter.empty else "optional"


def _call(
    factory: Callable[..., object], name: str, parameter: ClassesParameter, num_classes: int | None
) -> nn.Module:
    """``factory()`` or ``factory(num_classes=K)``; what it returns must be a module."""
    if num_classes is None and parameter == "required":
        num_classes = 1  # a reference build only: its head's shape is read, then rebuilt
    if num_classes is not None and parameter == "none":
        raise ModelFileError(
            f"{name} takes no num_classes argument, but the weights file has {num_classes} "
            "classes where it builds another number"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = factory(**kwargs)
    except Exception as error:  # the user's code may raise anything
        reason = f"{type(error).__name__}: {first_line(error)}"
        raise ModelFileError(f"{name}: calling it raised {reason}") from error
    if not isinstance(model, nn.Module):
        raise ModelFileError(
            f"{name} returned a {type(model).__name__}, not a torch.nn.Module classifier"
        )
    return model
