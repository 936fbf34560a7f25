"""The settings an image's json records: every option that changes a number or a file.

:func:`run_settings` is what ``--skip-existing`` compares (``heatmap_cli.cli.resume``). It reads
only plain values, from a :class:`RunChoices`: the command's engine once the model is converted,
or the run's plan before that (``heatmap_cli.cli.preflight``), so that a resume whose every image
is done answers without loading the model. Neither torch nor numpy is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from heatmap_cli.models.base import Interpolation, ModelFile
from heatmap_cli.pipeline.settings import (
    DEFAULT_READING,
    GridSettings,
    OutputOptions,
    PhotoReading,
)

__all__ = ["ModelDescription", "RunChoices", "model_settings", "run_settings", "size_json"]


class ModelDescription(Protocol):
    """What :func:`model_settings` reads of a model (a ``LoadedModel`` or a ``ModelCard``)."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def family(self) -> str: ...  # noqa: D102
    @property
    def files(self) -> tuple[ModelFile, ...]: ...  # noqa: D102
    @property
    def num_classes(self) -> int: ...  # noqa: D102
    @property
    def input_size(self) -> tuple[int, int]: ...  # noqa: D102
    @property
    def mean(self) -> tuple[float, float, float]: ...  # noqa: D102
    @property
    def std(self) -> tuple[float, float, float]: ...  # noqa: D102
    @property
    def interpolation(self) -> Interpolation: ...  # noqa: D102
    @property
    def source(self) -> str: ...  # noqa: D102


class RunChoices(Protocol):
    """What :func:`run_settings` reads of a run: a ``GridEngine``, or a plan of one."""

    @property
    def loaded(self) -> ModelDescription: ...  # noqa: D102
    @property
    def settings(self) -> GridSettings: ...  # noqa: D102
    @property
    def stride(self) -> int: ...  # noqa: D102
    @property
    def method(self) -> str: ...  # noqa: D102
    @property
    def precision(self) -> str: ...  # noqa: D102


def size_json(size: tuple[int, int]) -> dict[str, int]:
    """``(H, W)`` as the json writes sizes: ``{"width", "height"}``."""
    return {"width": size[1], "height": size[0]}


def run_settings(
    engine: RunChoices,
    options: OutputOptions,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    reading: PhotoReading = DEFAULT_READING,
) -> dict[str, object]:
    """Every option that changes a number or a file of an image's outputs: the json's settings.

    This is what ``--skip-existing`` compares (``heatmap_cli.cli.resume``). Values are as they take
    effect: the method and stride resolved, classes as indices, the floating type the network
    computes in. Options that only change how the same numbers are computed, equal to float
    rounding, are left out, so that resuming with another batch size, tile side or memory
    budget, or with ``--compile``, does not redo finished images.

    Args:
        engine: The converted model and its settings (a ``GridEngine``), or what they will be
            (``heatmap_cli.cli.preflight.RunPlan``, before the model is loaded).
        options: What is drawn and written, and how.
        scales: The factors of ``--size`` the passes use, in order.
        flip: Whether each scale's mirror image is averaged in.
        reading: How the photos were decoded (the overlays' largest side).

    Returns:
        A JSON-ready dict.
    """
    grid = engine.settings
    return {
        **model_settings(engine),
        "weights": engine.loaded.source,
        "size": grid.size,
        "stride": engine.stride,
        "method": engine.method,
        "scales": [float(scale) for scale in scales],
        "flip": flip,
        "precision": engine.precision,
        "max_overlay_side": reading.max_display_side,
        "classes": [int(index) for index in options.classes],
        "top_k": options.top_k,
        "pooling": options.pooling,
        "scores": options.scores,
        "scale": options.scale,
        "vmin": options.vmin,
        "vmax": options.vmax,
        "cmap": options.cmap,
        "alpha": options.alpha,
        "colorbar": options.colorbar,
        "label": options.label,
        "sheet": options.sheet,
        "outputs": list(options.outputs),
        "format": options.image_format,
        "npz_classes": options.npz_classes,
        "npz_dtype": options.npz_dtype,
        "fidelity": options.fidelity,
    }


def model_settings(engine: RunChoices) -> dict[str, object]:
    """The model's part of the json's ``settings``: what was loaded, and how it reads photos.

    Args:
        engine: The engine that scored the images (its model and settings), or the plan of one.

    Returns:
        ``model`` and ``model_source`` (the source that loaded it), ``model_files`` (role ->
        ``{path, sha256}``: the model file or code, ``--weights``, ``--labels``),
        ``num_classes``, ``input_size`` (the window), ``mean``, ``std``, ``interpolation`` and
        ``activation`` (as asked for: ``"auto"``...).
    """
    loaded = engine.loaded
    return {
        "model": loaded.name,
        "model_source": loaded.family,
        "model_files": {f.role: {"path": str(f.path), "sha256": f.sha256} for f in loaded.files},
        "num_classes": loaded.num_classes,
        "input_size": size_json(loaded.input_size),
        "mean": list(loaded.mean),
        "std": list(loaded.std),
        "interpolation": loaded.interpolation,
        "activation": engine.settings.activation,
    }
