"""What a run will be, decided before any model is loaded: every check that needs no weights.

The command calls :func:`plan_run` after finding its inputs and before importing torch. It makes
the checks that loading and converting the model would make, in the same order and with the same
messages (:mod:`heatmap_cli.models`, :mod:`heatmap_cli.pipeline.settings`): the model's name, the
``--input-size``, ``--mean``, ``--std`` and ``--labels`` given, ``--class`` against the class
names, the output options, ``--activation``, ``--device``, ``--size`` against the window and
``--method``/``--stride`` against the native stride. What it needs of the model comes from its
card (:mod:`heatmap_cli.cli.model_cards`), or, without one, from what the catalog knows (the
ImageNet names of the default and torchvision models, torchvision's windows); a check whose
answer is unknown is left to the load, which makes every check again anyway.

When everything is known (a card, and the device: surely the CPU, or, for a resume, as torch
tells it), the result is a :class:`PlannedRun`: what
:func:`~heatmap_cli.cli.run_settings.run_settings` reads, so that a resume whose every image is
done answers without loading the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from heatmap_cli.cli.command_options import CommandOptions
from heatmap_cli.cli.model_cards import ModelRequest, find_card, known_categories, known_window
from heatmap_cli.grid.registry import get_method
from heatmap_cli.models.card import ModelCard
from heatmap_cli.models.files import check_weights_file
from heatmap_cli.models.label_files import read_labels
from heatmap_cli.models.overrides import check_input_size, parse_channels, parse_input_size
from heatmap_cli.models.registry import get_source
from heatmap_cli.pipeline.classes import resolve_classes
from heatmap_cli.pipeline.devices import compute_precision, device_without_torch, resolve_device
from heatmap_cli.pipeline.settings import (
    CROPS_FALLBACK_STRIDE,
    REFINING,
    GridSettings,
    OutputOptions,
    check_grid_settings,
    check_size_fits,
    choose_method,
    resolve_activation,
)

_READS_WEIGHTS_FIRST = frozenset({"default", "torchvision"})
"""Sources whose loading reads ``--weights`` before anything else can fail."""

__all__ = ["PlannedRun", "grid_settings", "model_request", "output_options", "plan_run"]


@dataclass(frozen=True)
class PlannedRun:
    """A run as it will be once the model is loaded (what ``run_settings`` reads of an engine).

    Attributes:
        loaded: The model's card.
        settings: The grid settings.
        rendering: What is drawn and written.
        method: The grid method that will run (``auto`` resolved).
        stride: Its output stride.
        precision: The dtype it will compute in.
        device_type: Where it will run (``"cpu"``).
    """

    loaded: ModelCard
    settings: GridSettings
    rendering: OutputOptions
    method: str
    stride: int
    precision: str
    device_type: str


def model_request(options: CommandOptions) -> ModelRequest:
    """The model asked for, checked as loading it would: overrides parsed, name known, labels read.

    Raises:
        InvalidOptionError: A window, mean or std that is not valid.
        UnknownModelError: No source knows the name (with close matches).
        WeightsMismatchError: ``--weights`` is not a file (for the default and torchvision
            models, which read it first).
        LabelsFileError: The labels file cannot be read.
    """
    text = options.input_size
    window = None if text is None else parse_input_size(text, "--input-size")
    mean = None if options.mean is None else parse_channels(options.mean, "--mean")
    std = None if options.std is None else parse_channels(options.std, "--std", positive=True)
    source = get_source(options.model)
    if window is not None:
        window = check_input_size(window)
    if options.weights is not None and source.family in _READS_WEIGHTS_FIRST:
        check_weights_file(options.weights)
    labels = None if options.labels is None else (options.labels, read_labels(options.labels))
    return ModelRequest(
        options.model,
        source,
        weights=options.weights,
        labels=labels,
        input_size=window,
        mean=mean,
        std=std,
        allow_pickle=options.allow_pickle,
    )


def output_options(options: CommandOptions, classes: list[int]) -> OutputOptions:
    """What is rendered and written, from the options (``--class`` resolved to ``classes``)."""
    return OutputOptions(
        classes=classes,
        top_k=options.top_k,
        scores=options.scores,
        cmap=options.cmap,
        alpha=options.alpha,
        colorbar=options.colorbar,
        pooling=options.pooling,
        scale=options.scale,
        vmin=options.vmin,
        vmax=options.vmax,
        label=options.label,
        outputs=options.outputs,
        image_format=options.image_format,
        npz_classes=options.npz_classes,
        npz_dtype=options.npz_dtype,
        fidelity=options.fidelity,
    )


def grid_settings(options: CommandOptions) -> GridSettings:
    """How images become grids, from the options."""
    budget = options.memory_budget
    return GridSettings(
        size=options.size,
        stride=options.stride,
        method=options.method,
        device=options.device,
        fp32=options.fp32,
        compile=options.compile,
        batch_size=options.batch_size,
        tile=options.tile,
        memory_budget=None if budget is None else round(budget * 2**30),
        max_input_pixels=options.max_input_pixels,
        max_aspect=options.max_aspect,
        activation=options.activation,
    )


def plan_run(
    options: CommandOptions, request: ModelRequest, scales: tuple[float, ...]
) -> PlannedRun | None:
    """Checks everything that needs no model; the run it will be, when that is all known.

    Args:
        options: The parsed options.
        request: The model asked for (:func:`model_request`).
        scales: ``--scales`` parsed.

    Returns:
        The planned run; None when the model must be loaded to know it (no card), or when only
        torch can tell the device and the run is no ``--skip-existing`` (whose images may all be
        done: then torch is imported to tell, but the model is not loaded).

    Raises:
        UsageError: Any check that fails, with the message loading the model would give.
    """
    card = find_card(request)
    categories = card.categories if card is not None else known_categories(request)
    classes = None if categories is None else resolve_classes(options.class_specs, categories)
    rendering = output_options(options, classes or [])
    settings = grid_settings(options)
    check_grid_settings(settings)
    if card is not None:
        activation = resolve_activation(settings.activation, card.num_classes, card.output)
        if rendering.probabilities and activation == "none" and card.output == "logits":
            rendering = replace(rendering, scores="logits")  # as the command does once loaded
    # Under --ray the devices are the workers': the driver cannot tell (check_ray checks it).
    device_type = None if options.ray else device_without_torch(settings.device)
    window = card.input_size if card is not None else known_window(request)
    if window is not None:
        check_size_fits(settings.size, scales, window)
    if card is None:
        return None
    chosen = _method_and_stride(settings, card.native_stride)
    if chosen is None or classes is None or settings.tile is not None:
        return None  # a --tile is checked against the network's receptive field, loaded
    if device_type is None:
        if not options.skip_existing or options.ray:
            return None  # only a finished resume gains from knowing it now
        device_type = resolve_device(settings.device).type  # imports torch, not the model
    precision = compute_precision(device_type, card.dtype, settings.fp32)
    return PlannedRun(card, settings, rendering, *chosen, precision, device_type)


def _method_and_stride(settings: GridSettings, native_stride: int | None) -> tuple[str, int] | None:
    """The method and stride the engine will choose; None where converting must fail first.

    Raises:
        GeometryError: A stride the method does not accept.
    """
    if native_stride is not None:
        method, stride = choose_method(settings.method, settings.stride, native_stride)
        # the engine names a refined method as asked (its refiner decides image by image)
        return (settings.method if settings.method in REFINING else method), stride
    if settings.method != "auto" and get_method(settings.method).needs_converted:
        return None  # converting fails at load, with the converter's reason
    return "crops", settings.stride or CROPS_FALLBACK_STRIDE  # the engine's fallback
