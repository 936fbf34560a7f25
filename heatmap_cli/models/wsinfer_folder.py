"""WSInfer model folders: ``config.json`` beside a TorchScript file (``--model DIR``).

WSInfer (0.6.1, and its model zoo on the Hugging Face Hub) describes a patch classifier in a
``config.json`` checked against its schema ``model-config.schema.json``:

* ``num_classes`` (integer >= 1) and ``class_names`` (as many unique strings);
* ``patch_size_pixels`` (integer >= 1) at ``spacing_um_px`` (micrometres per pixel, > 0): the
  patch WSInfer cuts from level 0, ``round(patch_size_pixels * spacing_um_px / slide_mpp)``
  slide pixels wide, is that many micrometres wide;
* ``transform``: a list of ``{"name", "arguments"}`` items from ``Resize``, ``ToTensor`` and
  ``Normalize``, which WSInfer builds as a torchvision ``Compose`` and applies to each patch;
* ``architecture`` and ``spec_version``: informative only.

The zoo's folders hold the TorchScript module as ``torchscript_model.pt``; a folder with another
name for it is read if it holds exactly one TorchScript archive. ``--model`` may also name the
``config.json`` itself when the TorchScript file lies beside it.

What the network sees is what WSInfer feeds it: the window is ``Resize``'s size (the patch size
without a ``Resize``), mean and std are ``Normalize``'s (0 and 1 without one), and the model's
micrometres per pixel (:attr:`~heatmap_cli.models.base.LoadedModel.mpp`) is
``spacing_um_px * patch_size_pixels / window``: a 350-pixel patch at 0.25 um/px resized to 224
is a 224-pixel window at 0.390625 um/px. The TorchScript module is converted to an fx graph
(:mod:`~heatmap_cli.models.torchscript`), so it runs dense like any other model; WSInfer turns
its scores into probabilities with a softmax (a sigmoid for one score), as ``auto`` does here.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heatmap_cli.errors import ModelFileError, first_line, setting
from heatmap_cli.models.archives import archive_kind
from heatmap_cli.models.base import (
    Interpolation,
    LoadedModel,
    LoadRequest,
    ModelFile,
    ModelSource,
    as_interpolation,
)
from heatmap_cli.models.own import own_loaded_model
from heatmap_cli.models.torchscript import load_torchscript, torchscript_graph
from heatmap_cli.models.weights import file_sha256

__all__ = [
    "CONFIG_NAME",
    "TORCHSCRIPT_NAME",
    "WSInferConfig",
    "WSInferSource",
    "read_wsinfer_config",
]

CONFIG_NAME = "config.json"
"""The name of the configuration in a WSInfer model folder."""
TORCHSCRIPT_NAME = "torchscript_model.pt"
"""The name WSInfer's model zoo gives the TorchScript module."""

_TRANSFORMS = ("Resize", "ToTensor", "Normalize")
_SCRIPT_SUFFIXES = frozenset({".pt", ".pth", ".ts", ".jit", ".torchscript", ".ptl"})
# PIL's filter numbers, which torchvision's Resize also accepts, and its mode names.
_PIL_FILTERS: dict[int, str] = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_FILTER_NAMES = frozenset({"nearest", "nearest-exact", "bilinear", "bicubic"})
_RESIZE_ARGUMENTS = frozenset({"size", "interpolation", "max_size", "antialias"})
_NORMALIZE_ARGUMENTS = frozenset({"mean", "std", "inplace"})


@dataclass(frozen=True)
class WSInferConfig:
    """A WSInfer model configuration, read and checked.

    Attributes:
        path: The ``config.json`` it was read from.
        class_names: The ``K`` class names, in the order of the model's scores.
        patch_size: ``patch_size_pixels``: the side of a patch in pixels at :attr:`spacing`.
        spacing: ``spacing_um_px``: micrometres per pixel of the patch.
        window: ``(H, W)`` of the network's input after the transform's ``Resize``.
        mean: ``Normalize``'s per-channel mean of RGB values in ``[0, 1]``.
        std: ``Normalize``'s per-channel standard deviation.
        interpolation: ``Resize``'s filter.
        architecture: The ``architecture`` the configuration names (informative), or ``""``.
    """

    path: Path
    class_names: tuple[str, ...]
    patch_size: int
    spacing: float
    window: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation
    architecture: str = ""

    @property
    def mpp(self) -> float:
        """Micrometres per pixel of the network's input: the patch's width over the window's."""
        return self.spacing * self.patch_size / self.window[1]


class WSInferSource(ModelSource):
    """A WSInfer model folder (or its ``config.json``) beside a TorchScript file."""

    family = "wsinfer"
    hint = f"a model folder holds WSInfer's {CONFIG_NAME} and its TorchScript file"

    def claims(self, name: str) -> bool:
        """Whether ``name`` is a folder (or is spelled as one), or a ``.json`` file."""
        path = Path(name)
        if path.is_dir() or name.endswith(("/", os.sep)):
            return True
        return path.suffix.lower() == ".json" and path.is_file()

    def load(self, name: str, request: LoadRequest) -> LoadedModel:
        """Reads the configuration, converts the TorchScript module and checks they agree."""
        config_path = _config_path(Path(name))
        if request.weights is not None:
            raise ModelFileError(
                f"{config_path.parent}: a WSInfer model folder holds its weights; "
                f"{setting('weights')} is for an architecture's name or file.py:callable"
            )
        config = read_wsinfer_config(config_path)
        script_path = _torchscript_file(config_path.parent)
        conversion = torchscript_graph(load_torchscript(script_path), config.window, name)
        described = "converted to a graph" if conversion.converted else "TorchScript"
        files = (
            ModelFile("config", config_path, file_sha256(config_path)),
            ModelFile("model", script_path, file_sha256(script_path)),
        )
        loaded = own_loaded_model(
            name,
            conversion.model,
            source=f"{config_path.parent} (WSInfer {config.architecture or 'model'}, {described})",
            window=config.window,
            files=files,
            notes=(*conversion.notes, *_scale_notes(config)),
        )
        if loaded.num_classes != len(config.class_names):
            raise ModelFileError(
                f"{script_path}: returns {loaded.num_classes} scores per patch, but {config_path} "
                f"names {len(config.class_names)} classes"
            )
        return replace(
            loaded,
            categories=config.class_names,
            mean=config.mean,
            std=config.std,
            interpolation=config.interpolation,
            mpp=config.mpp,
        )


def read_wsinfer_config(path: Path) -> WSInferConfig:
    """Reads and checks a WSInfer ``config.json`` as WSInfer 0.6.1's schema does, and more.

    Beyond the schema, it checks what running the model needs: ``class_names`` has
    ``num_classes`` names, ``Normalize`` comes after ``ToTensor`` and has three values per
    channel, and ``Resize`` keeps the patch square.

    Raises:
        ModelFileError: The file cannot be read, is not JSON, or breaks a rule; the message names
            the file and the field.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ModelFileError(f"{path}: cannot be read as JSON ({first_line(error)})") from None
    if not isinstance(document, dict):
        raise ModelFileError(f"{path}: not a WSInfer model configuration (a JSON object)")
    fields = _Fields(path, document)
    count = fields.integer("num_classes")
    names = fields.names("class_names", count)
    patch_size = fields.integer("patch_size_pixels")
    spacing = fields.positive_number("spacing_um_px")
    steps = _transform_steps(path, fields.require("transform"))
    resize = steps.get("Resize", {})
    normalize = steps.get("Normalize", {})
    architecture = document.get("architecture")
    return WSInferConfig(
        path=path,
        class_names=names,
        patch_size=patch_size,
        spacing=spacing,
        window=_resized_window(path, resize.get("size"), patch_size),
        mean=_channels(path, "mean", normalize.get("mean", (0.0, 0.0, 0.0))),
        std=_channels(path, "std", normalize.get("std", (1.0, 1.0, 1.0)), positive=True),
        interpolation=_interpolation(path, resize.get("interpolation", "bilinear")),
        architecture=architecture if isinstance(architecture, str) else "",
    )


@dataclass(frozen=True)
class _Fields:
    """Reads the configuration's fields, naming the file and field in every refusal."""

    path: Path
    document: dict[str, Any]

    def require(self, key: str) -> Any:
        if key not in self.document:
            raise ModelFileError(f"{self.path}: no {key!r}; a WSInfer model configuration has one")
        return self.document[key]

    def integer(self, key: str) -> int:
        value = self.require(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelFileError(f"{self.path}: {key!r} must be a whole number >= 1, got {value!r}")
        return value

    def positive_number(self, key: str) -> float:
        value = self.require(key)
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not valid or not math.isfinite(value) or value <= 0:
            raise ModelFileError(f"{self.path}: {key!r} must be a number > 0, got {value!r}")
        return float(value)

    def names(self, key: str, count: int) -> tuple[str, ...]:
        value = self.require(key)
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise ModelFileError(f"{self.path}: {key!r} must be a list of names")
        if len(set(value)) != len(value):
            raise ModelFileError(f"{self.path}: {key!r} names a class twice")
        if len(value) != count:
            raise ModelFileError(
                f"{self.path}: {key!r} has {len(value)} names for num_classes {count}"
            )
        return tuple(value)


def _transform_steps(path: Path, transform: object) -> dict[str, dict[str, Any]]:
    """The transform's steps by name, in WSInfer's order (``Normalize`` after ``ToTensor``)."""
    if not isinstance(transform, list):
        raise ModelFileError(f"{path}: 'transform' must be a list of steps")
    steps: dict[str, dict[str, Any]] = {}
    for step in transform:
        name = step.get("name") if isinstance(step, dict) else None
        if name not in _TRANSFORMS:
            raise ModelFileError(
                f"{path}: transform step {step!r} is not one of WSInfer's "
                f"({', '.join(_TRANSFORMS)})"
            )
        if name in steps:
            raise ModelFileError(f"{path}: the transform has {name} twice")
        arguments = step.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise ModelFileError(f"{path}: the arguments of {name} must be an object")
        known = {"Resize": _RESIZE_ARGUMENTS, "Normalize": _NORMALIZE_ARGUMENTS}.get(name, set())
        unknown = sorted(set(arguments) - known)
        if unknown:
            raise ModelFileError(f"{path}: {name} has arguments not supported here: {unknown}")
        steps[name] = arguments
    if "ToTensor" not in steps:
        raise ModelFileError(f"{path}: the transform has no ToTensor, so the model gets no tensor")
    order = [step["name"] for step in transform]
    if "Normalize" in steps and order.index("Normalize") < order.index("ToTensor"):
        raise ModelFileError(f"{path}: the transform normalizes before ToTensor")
    return steps


def _resized_window(path: Path, size: object, patch_size: int) -> tuple[int, int]:
    """``Resize``'s output for a square patch: ``(size, size)``, or the patch without one."""
    if size is None:
        return patch_size, patch_size
    sides = size if isinstance(size, list) else [size]
    valid = all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides)
    if not valid or len(sides) not in (1, 2):
        raise ModelFileError(f"{path}: Resize's size must be PIXELS or [H, W], got {size!r}")
    if len(set(sides)) != 1:
        raise ModelFileError(
            f"{path}: Resize to {sides[0]}x{sides[1]} stretches the square patches; "
            "only square windows have one micrometres-per-pixel scale"
        )
    return sides[0], sides[0]


def _channels(
    path: Path, key: str, values: object, *, positive: bool = False
) -> tuple[float, float, float]:
    numbers = values if isinstance(values, (list, tuple)) else [values]
    valid = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)
    if not valid or len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise ModelFileError(f"{path}: Normalize's {key} must be three numbers, got {values!r}")
    if positive and not all(v > 0 for v in numbers):
        raise ModelFileError(f"{path}: Normalize's {key} must be positive, got {values!r}")
    first, second, third = (float(v) for v in numbers)
    return first, second, third


def _interpolation(path: Path, value: object) -> Interpolation:
    """Resize's filter: a PIL number (2 = bilinear) or a name ("bilinear", "bicubic"...)."""
    name = _PIL_FILTERS.get(value) if isinstance(value, int) else value
    if isinstance(name, str) and name.lower() in _FILTER_NAMES:
        return as_interpolation(name)
    raise ModelFileError(
        f"{path}: Resize's interpolation {value!r} is not supported here "
        "(nearest, bilinear or bicubic; PIL's 0, 2 or 3)"
    )


def _config_path(path: Path) -> Path:
    """The configuration a folder (or a path to the file itself) names."""
    if path.suffix.lower() == ".json" and not path.is_dir():
        if not path.is_file():
            raise ModelFileError(f"{path}: no such file")
        return path
    if not path.is_dir():
        raise ModelFileError(f"{path}: no such folder")
    config = path / CONFIG_NAME
    if not config.is_file():
        raise ModelFileError(
            f"{path}: no {CONFIG_NAME} in it; a model folder is WSInfer's: {CONFIG_NAME} and "
            "its TorchScript file"
        )
    return config


def _torchscript_file(folder: Path) -> Path:
    """The zoo's ``torchscript_model.pt``, or the folder's only TorchScript archive."""
    named = folder / TORCHSCRIPT_NAME
    if named.is_file():
        return named
    found = [
        path
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in _SCRIPT_SUFFIXES and path.is_file() and _is_torchscript(path)
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ModelFileError(
            f"{folder}: no TorchScript file beside {CONFIG_NAME} (WSInfer names it "
            f"{TORCHSCRIPT_NAME})"
        )
    names = ", ".join(path.name for path in found)
    raise ModelFileError(
        f"{folder}: several TorchScript files ({names}); name the model {TORCHSCRIPT_NAME}"
    )


def _is_torchscript(path: Path) -> bool:
    try:
        return archive_kind(path) == "torchscript"
    except ModelFileError:
        return False


def _scale_notes(config: WSInferConfig) -> tuple[str, ...]:
    """Says how WSInfer's patch becomes the window, where a Resize changes its size."""
    if config.window[1] == config.patch_size:
        return ()
    return (
        f"{config.path}: WSInfer resizes {config.patch_size}-pixel patches at "
        f"{config.spacing:g} um/px to {config.window[1]} pixels: the model's window is "
        f"{config.window[1]} pixels at {config.mpp:g} um/px",
    )
