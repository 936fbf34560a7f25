"""The command's model cards: what a model is, known before loading it, kept between runs.

Loading a model imports torch (a second or more) and reads its weights; converting it takes
longer. What the command checks options against and records as an image's settings is a
:class:`~heatmap_cli.models.card.ModelCard`: after every run that built a model, its card is kept
in the cache folder (:mod:`~heatmap_cli.io.disk_cache`), keyed by what the user asked for (the
model name, the digests of ``--weights`` and ``--labels``, ``--input-size``, ``--mean``,
``--std``) and by what could change the answer (the versions of heatmap-cli, torch, torchvision
and timm, the default model's weights file). The default model's card also ships with the
package, so its first run on a new machine checks every option without loading it too.

Only the built-in sources whose models the key identifies get cards: the default model,
torchvision and timm names, model files (by their digest). Models given as code
(``file.py:callable``, ``package.module:callable``) get none, as their code may change without
any file the key could see, and neither do the models of sources a program registers.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import replace
from pathlib import Path

from heatmap_cli.io.disk_cache import read_cached, write_cached
from heatmap_cli.models.base import LoadedModel, ModelFile, ModelSource
from heatmap_cli.models.card import ModelCard
from heatmap_cli.models.catalog import default_card, imagenet_categories, torchvision_models
from heatmap_cli.models.default import PACKAGE_NAME, package_weights_file
from heatmap_cli.models.files import file_sha256
from heatmap_cli.models.label_files import check_label_count
from heatmap_cli.models.wsinfer_folder import folder_config
from heatmap_cli.versions import installed_version

__all__ = ["ModelRequest", "card_key", "find_card", "keep_card", "known_categories", "known_window"]

_CARD_FAMILIES = frozenset({"default", "torchvision", "timm", "file"})
_LIBRARIES = ("torch", "torchvision", "timm")  # the default model's weights: by their file


class ModelRequest:
    """What the user asked of a model: its name, files and overrides.

    Args:
        name: ``--model`` as given.
        source: The model source that claims it.
        weights: ``--weights``, or None.
        labels: ``--labels``, or None, with its names read.
        input_size: ``--input-size`` parsed, or None.
        mean: ``--mean`` parsed, or None.
        std: ``--std`` parsed, or None.
        allow_pickle: ``--allow-pickle``.
    """

    def __init__(
        self,
        name: str,
        source: ModelSource,
        *,
        weights: Path | None = None,
        labels: tuple[Path, tuple[str, ...]] | None = None,
        input_size: tuple[int, int] | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        allow_pickle: bool = False,
    ) -> None:
        self.name, self.source, self.weights, self.labels = name, source, weights, labels
        self.input_size, self.mean, self.std = input_size, mean, std
        self.allow_pickle = allow_pickle

    @property
    def plain(self) -> bool:
        """Whether the model comes as its source ships it (no weights file, no other window)."""
        return self.weights is None and self.input_size is None

    @functools.cached_property
    def key(self) -> str | None:
        """The cache key of its card (:func:`card_key`), computed once."""
        return card_key(self)


def card_key(request: ModelRequest) -> str | None:
    """The cache key of a request's card; None without cards (code), or a file that is not there.

    Paths count as given as well as by content: the json records them so (``model_files``).
    """
    if request.source.family not in _CARD_FAMILIES:
        return None
    parts: dict[str, object] = {
        "name": request.name,
        "family": request.source.family,
        "input_size": request.input_size,
        "mean": request.mean,
        "std": request.std,
        "allow_pickle": request.allow_pickle,
        "versions": {name: installed_version(name) for name in ("heatmap_cli", *_LIBRARIES)},
        "code": _code_fingerprint(),
    }
    try:
        files = {"weights": request.weights, "labels": request.labels and request.labels[0]}
        if request.source.family == "file":
            files["model"] = Path(request.name)
        given = {role: path for role, path in files.items() if path is not None}
        parts["files"] = {role: [str(path), file_sha256(path)] for role, path in given.items()}
        shipped = package_weights_file() if request.source.family == "default" else None
        if shipped is not None:
            status = shipped.stat()
            parts["package_weights"] = [str(shipped), status.st_size, status.st_mtime_ns]
    except OSError:
        return None
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()[:32]


@functools.cache
def _code_fingerprint() -> str:
    """The package's Python files by size and modification time: a changed file, a new card."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        status = path.stat()
        line = f"{path.relative_to(package)} {status.st_size} {status.st_mtime_ns}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _cache_name(key: str) -> str:
    return f"model-card-{key}.json"


def find_card(request: ModelRequest) -> ModelCard | None:
    """The card of what ``request`` loads: kept by an earlier run, or shipped; None if unknown.

    Raises:
        LabelsFileError: ``--labels`` names another number of classes than the model has.
    """
    key = request.key
    stored = read_cached(_cache_name(key)) if key is not None else None
    card = None
    if isinstance(stored, dict):
        try:
            card = ModelCard.from_json(stored).renamed(request.name)
        except (KeyError, TypeError, ValueError):
            card = None
    if card is None and request.source.family == "default" and request.plain:
        card = _shipped_default_card(request)
    return card


def _shipped_default_card(request: ModelRequest) -> ModelCard | None:
    """The default model's shipped card, with the request's labels, mean and std."""
    path = package_weights_file()
    if path is None or not path.is_file():
        return None  # loading says what is missing
    shipped = default_card()
    if shipped["num_classes"] != len(imagenet_categories()):
        return None
    height, width = shipped["input_size"]
    mean, std = request.mean or tuple(shipped["mean"]), request.std or tuple(shipped["std"])
    card = ModelCard(
        name=request.name,
        family=request.source.family,
        categories=imagenet_categories(),
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        input_size=(int(height), int(width)),
        interpolation=shipped["interpolation"],
        source=f"{PACKAGE_NAME} package ({path.name})",
        output=shipped["output"],
        files=(),
        native_stride=shipped["native_stride"],
        dtype=shipped["dtype"],
    )
    if request.labels is None:
        return card
    path, names = request.labels
    check_label_count(names, card.num_classes, path)
    labels = ModelFile("labels", path, file_sha256(path))
    return replace(card, categories=names, files=(labels,))


def keep_card(request: ModelRequest, loaded: LoadedModel, card: ModelCard) -> None:
    """Keeps the card of what ``request`` loaded, for the next run (never an error)."""
    key = request.key
    if key is not None and loaded.family in _CARD_FAMILIES:
        write_cached(_cache_name(key), card.to_json())


def known_categories(request: ModelRequest) -> tuple[str, ...] | None:
    """The class names a request's model has, known without a card; None if unknown."""
    if request.labels is not None:
        return request.labels[1]
    if request.weights is None and request.source.family == "wsinfer":
        return folder_config(request.name).class_names  # its config.json, read as loading does
    if request.weights is None and request.source.family in ("default", "torchvision"):
        listed = torchvision_models().get(request.name.strip().lower(), {}).get("categories")
        if request.source.family == "default" or listed == "imagenet":
            return imagenet_categories()
    return None


def known_window(request: ModelRequest) -> tuple[int, int] | None:
    """The window a request's model has, known without a card; None if unknown."""
    if request.input_size is not None:
        return request.input_size
    if request.weights is None and request.source.family == "wsinfer":
        return folder_config(request.name).window
    if request.weights is None and request.source.family == "torchvision":
        height, width = torchvision_models()[request.name.strip().lower()]["input_size"]
        return int(height), int(width)
    return None
