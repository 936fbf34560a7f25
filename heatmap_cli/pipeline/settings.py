"""The pipeline's settings: every option value parsed and checked, without torch or numpy.

What a run will do is decided here, from plain values, before anything heavy is imported: the
command checks every option (and answers a run with nothing to compute) in a fraction of a
second, and the modules that compute (``engine``, ``rendering``, ``ranking``, ``activations``,
``scoring``) take these settings and re-export them under their old names.

* :class:`GridSettings`, :func:`parse_size`, :func:`method_choices`: how images become grids;
* :class:`OutputOptions`, :func:`parse_outputs`, :func:`parse_npz_classes`: what is drawn and
  written;
* :data:`POOLINGS`, :data:`ACTIVATIONS` and :func:`resolve_activation`: rankings and scores;
* :class:`PhotoReading`: how photos are decoded;
* :func:`parse_scales`, :func:`check_size_fits`: ``--scales``, and a size against a model's
  window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from heatmap_cli.errors import GeometryError, InvalidOptionError, setting
from heatmap_cli.grid.registry import get_method, method_names
from heatmap_cli.io.formats import DEFAULT_MAX_PIXELS, IMAGE_FORMATS
from heatmap_cli.pipeline.limits import DEFAULT_MAX_ASPECT, DEFAULT_MAX_INPUT_PIXELS
from heatmap_cli.render.colormaps import check_cmap
from heatmap_cli.render.scale import DEFAULT_SCALE, check_scale

__all__ = [
    "ACTIVATIONS",
    "CROPS_FALLBACK_STRIDE",
    "DEFAULT_FIDELITY",
    "DEFAULT_READING",
    "LABELS",
    "NATIVE_SIZE",
    "NPZ_DTYPES",
    "OUTPUTS",
    "POOLINGS",
    "REFINING",
    "Activation",
    "GridSettings",
    "OutputOptions",
    "PhotoReading",
    "Pooling",
    "check_grid_settings",
    "check_pooling",
    "check_scales",
    "check_size_fits",
    "choose_method",
    "method_choices",
    "parse_npz_classes",
    "parse_outputs",
    "parse_scales",
    "parse_size",
    "resolve_activation",
]

DEFAULT_FIDELITY = 8
"""Cells checked per image besides the rendered classes' peaks (``--fidelity``). With the default
three classes, 11 windows: one batch of exact windows (docs/fidelity.md gives its cost)."""

NATIVE_SIZE = "native"
"""``size`` for scoring each photo at its own resolution (its shorter side, snapped)."""


def parse_size(text: str) -> int | str:
    """Parses ``--size``: a positive number of pixels, or ``native``.

    Raises:
        InvalidOptionError: Anything else (the message reads after the option's name).
    """
    value = str(text).strip().lower()
    if value == NATIVE_SIZE:
        return NATIVE_SIZE
    try:
        pixels = int(value)
    except ValueError:
        raise InvalidOptionError(f"must be a number of pixels or 'native', got {text!r}") from None
    if pixels <= 0:
        raise InvalidOptionError(f"must be positive, got {pixels}")
    return pixels


def method_choices() -> tuple[str, ...]:
    """``--method`` values: ``auto`` (the most faithful map the time allows) and every method.

    ``heatmap_cli.grid.registry.register_method`` adds one.
    """
    return ("auto", *method_names())


@dataclass(frozen=True)
class GridSettings:
    """How images are turned into grids.

    Attributes:
        size: Shorter side of the resized image in pixels, before snapping, at least the
            window's shorter side; or :data:`NATIVE_SIZE` for the photo's own shorter side
            (for objects about as large, in pixels, as the window).
        stride: Output stride in resized pixels; None for the native stride.
        method: ``"auto"`` (the dense grid, made exact where the time allows:
            ``heatmap_cli.pipeline.methods``), or a ``score_grid`` method.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``...
        fp32: Keep float32 on accelerators (otherwise CUDA runs under autocast).
        batch_size: Images per forward pass (and windows per pass for crops).
        tile: Evaluate in tiles of at most this many pixels per side (exact); None tiles only
            when the untiled pass would not fit ``memory_budget``.
        memory_budget: Activation memory allowed for one pass, in bytes; None picks a default
            for the device (``tiling.default_memory_budget``).
        compile: Run untiled passes through ``torch.compile`` (inductor, weights frozen as
            constants): compiling costs seconds once per input size, each later pass is faster.
            Falls back to the plain network, with a note, if compiling fails.
        max_input_pixels: Largest network input of one pass (``H * W``); :meth:`GridEngine.plan`
            refuses larger ones before anything is allocated (``heatmap_cli.pipeline.limits``).
        max_aspect: Largest ratio of a network input's longer side to its shorter one.
        activation: What makes scores of the logits: ``"auto"`` (sigmoid for one output,
            softmax for several, nothing for a model that returns probabilities),
            ``"softmax"``, ``"sigmoid"`` or ``"none"``.
    """

    size: int | str = 384
    stride: int | None = None
    method: str = "auto"
    device: str = "auto"
    fp32: bool = False
    batch_size: int = 8
    tile: int | None = None
    memory_budget: int | None = None
    compile: bool = False
    max_input_pixels: int = DEFAULT_MAX_INPUT_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
    activation: str = "auto"


def parse_scales(text: str) -> tuple[float, ...]:
    """Parses ``--scales``: comma-separated positive factors of ``--size``.

    Args:
        text: E.g. ``"1,1.5,2"``.

    Returns:
        The factors in the order given, e.g. ``(1.0, 1.5, 2.0)``.

    Raises:
        InvalidOptionError: On an empty list, an empty item, a non-number or a factor that is
            not a finite positive number.
    """
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise InvalidOptionError(
            f"scales must be comma-separated numbers like 1,1.5,2; got {text!r}"
        )
    scales: list[float] = []
    for item in items:
        try:
            scales.append(float(item))
        except ValueError:
            raise InvalidOptionError(f"scale {item!r} is not a number") from None
    check_scales(scales)
    return tuple(scales)


def check_scales(scales: Sequence[float]) -> None:
    """Raises ``InvalidOptionError`` unless ``scales`` is non-empty and all finite and > 0."""
    if len(scales) == 0:
        raise InvalidOptionError("at least one scale is needed")
    for scale in scales:
        if not (math.isfinite(scale) and scale > 0):
            raise InvalidOptionError(f"scales must be positive numbers, got {scale!r}")


def check_grid_settings(settings: GridSettings) -> None:
    """Raises on settings that can never work, before anything is built.

    Raises:
        GeometryError: A size that is neither a positive number nor :data:`NATIVE_SIZE`.
        InvalidOptionError: A batch size, input limit or aspect limit below 1, or an unknown
            method.
    """
    size = settings.size
    if size != NATIVE_SIZE and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise GeometryError(f"size must be a positive number of pixels or 'native', got {size!r}")
    if settings.batch_size <= 0:
        raise InvalidOptionError(f"batch size must be positive, got {settings.batch_size}")
    if settings.max_input_pixels < 1:
        raise InvalidOptionError(
            f"max_input_pixels must be positive, got {settings.max_input_pixels}"
        )
    if not settings.max_aspect >= 1 or math.isinf(settings.max_aspect):  # NaN fails the first
        raise InvalidOptionError(f"max_aspect must be a number >= 1, got {settings.max_aspect}")
    if settings.method != "auto":
        get_method(settings.method)  # raises for an unknown method, naming the choices


REFINING = ("auto", "refine")
"""The ``--method`` choices that add exact windows to a dense grid, image by image: the engine's
method is then the one asked for (each image's json says what ran:
``heatmap_cli.pipeline.methods``)."""

CROPS_FALLBACK_STRIDE = 32
"""The stride of crops for a model that cannot be converted (it has no derived stride)."""


def choose_method(method: str, stride: int | None, native_stride: int) -> tuple[str, int]:
    """The method and stride a convertible model runs at: ``auto`` and a missing stride resolved.

    Args:
        method: ``"auto"`` (dense at the native stride, else dilate) or a registered method.
        stride: The stride asked for, or None for the native one.
        native_stride: The converted network's own stride.

    Returns:
        ``(method, stride)``.

    Raises:
        InvalidOptionError: An unknown method.
        GeometryError: A stride the method does not accept (the message lists the choices).
    """
    if method == "auto":
        method = "dense" if stride in (None, native_stride) else "dilate"
    return method, get_method(method).resolve_stride(stride, native_stride)


def check_size_fits(size: int | str, scales: Sequence[float], window: tuple[int, int]) -> None:
    """Refuses a size (or a scale of it) whose resized shorter side would fall below the window.

    A pass resized below the window would be stretched back up to it, so it would not be the
    scale asked for (``--size 100`` would squeeze a photo into one window).

    Args:
        size: Pixels of the resized shorter side, or :data:`NATIVE_SIZE` (each photo's own:
            never refused).
        scales: Factors of ``size``.
        window: ``(h, w)`` of the model's window.

    Raises:
        GeometryError: For such a scale.
    """
    smallest = min(window)
    if size == NATIVE_SIZE:
        return
    for scale in scales:
        if round(int(size) * scale) < smallest:
            at = f"size {size}" if scale == 1 else f"scale {scale:g} of size {size}"
            raise GeometryError(
                f"{at} is below the model's {smallest}-pixel window: every pass is at "
                f"least one window, so it would be stretched back up; use a size of at least "
                f"{math.ceil(smallest / scale)} (or size 'native' for the photo's own pixels)"
            )


OUTPUTS: tuple[str, ...] = ("png", "npz", "json")
"""What an image's outputs can hold: the pictures (in ``image_format``), the npz, the json."""
LABELS: tuple[str, ...] = ("auto", "corner", "none")
"""Where an overlay's label goes: the corner hiding the least of the map, top-left, nowhere."""
NPZ_DTYPES: tuple[str, ...] = ("float32", "float16")
_NPZ_CLASSES_RE = re.compile(r"all|rendered|top([1-9][0-9]*)")


def parse_outputs(text: str) -> tuple[str, ...]:
    """Parses ``--outputs``: a comma-separated subset of :data:`OUTPUTS`; the json is added.

    Args:
        text: E.g. ``"png,npz"`` or ``"json"``.

    Returns:
        The outputs in :data:`OUTPUTS` order, always including ``"json"`` (the completion
        marker that ``--skip-existing`` checks).

    Raises:
        InvalidOptionError: An empty list or an unknown name.
    """
    names = [name.strip().lower() for name in text.split(",")]
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown or not text.strip():
        raise InvalidOptionError(
            f"outputs must be a comma-separated subset of {','.join(OUTPUTS)}, got {text!r}"
        )
    return tuple(name for name in OUTPUTS if name in names or name == "json")


def parse_npz_classes(text: str) -> str:
    """Checks ``--npz-classes``: ``all``, ``rendered`` or ``topK`` (``top20``: the ranking's 20).

    Returns:
        The value, lower-cased.

    Raises:
        InvalidOptionError: Anything else.
    """
    value = text.strip().lower()
    if not _NPZ_CLASSES_RE.fullmatch(value):
        raise InvalidOptionError(
            f"npz classes must be all, rendered or topK (e.g. top20), got {text!r}"
        )
    return value


@dataclass(frozen=True)
class OutputOptions:
    """How results are rendered and which files are written.

    Attributes:
        classes: Class indices to render; empty means the image-level ranking's ``top_k``.
        top_k: How many classes to render without ``classes``, and how many to rank in the json.
        scores: ``"probs"`` (per-cell softmax) or ``"logits"``: what the maps, labels and the
            json's class peaks show.
        cmap: Matplotlib colormap name; a diverging one is centred on the score 0.
        alpha: Opacity of the heat map at full score, 0..1.
        colorbar: Append a colour bar to each overlay.
        sheet: Write a contact sheet when several classes are rendered.
        pooling: How the json's image-level ``top_k`` pools each class map: ``"max"``/``"mean"``.
        scale: ``"shared"``, ``"absolute"`` or ``"per-class"`` (``render.scale``).
        vmin: Fixed score at the colormap's bottom, or None for the scale's.
        vmax: Fixed score at the colormap's top, or None for the scale's.
        label: ``"auto"``, ``"corner"`` (top-left) or ``"none"`` (:data:`LABELS`).
        outputs: Which of :data:`OUTPUTS` to write (the json always is).
        image_format: The pictures' format: ``"png"``, ``"jpg"`` or ``"webp"``.
        npz_classes: Which classes the npz keeps: ``"all"``, ``"rendered"`` or ``"topK"``.
        npz_dtype: ``"float32"`` or ``"float16"`` for the npz's logits and probs.
        fidelity: Cells checked against exact windows besides the rendered classes' peaks
            (``heatmap_cli.pipeline.fidelity``); 0 checks none, not even the peaks.

    Raises:
        InvalidOptionError: For any value that cannot work (checked when constructed).
    """

    classes: Sequence[int] = ()
    top_k: int = 3
    scores: str = "probs"
    cmap: str = "inferno"
    alpha: float = 0.5
    colorbar: bool = False
    sheet: bool = True
    pooling: str = "max"
    scale: str = DEFAULT_SCALE
    vmin: float | None = None
    vmax: float | None = None
    label: str = "auto"
    outputs: tuple[str, ...] = OUTPUTS
    image_format: str = "png"
    npz_classes: str = "all"
    npz_dtype: str = "float32"
    fidelity: int = DEFAULT_FIDELITY

    def __post_init__(self) -> None:
        if isinstance(self.fidelity, bool) or not isinstance(self.fidelity, int):
            raise InvalidOptionError(f"fidelity must be a number of cells, got {self.fidelity!r}")
        if self.fidelity < 0:
            raise InvalidOptionError(f"fidelity must be 0 or more cells, got {self.fidelity}")
        if self.scores not in ("probs", "logits"):
            raise InvalidOptionError(f"scores must be probs or logits, got {self.scores!r}")
        check_scale(self.scale, self.scores == "probs", self.vmin, self.vmax)
        check_cmap(self.cmap)
        choices = {
            "label": (self.label, LABELS),
            "format": (self.image_format, tuple(IMAGE_FORMATS)),
            "npz dtype": (self.npz_dtype, NPZ_DTYPES),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise InvalidOptionError(
                    f"{name} must be one of {', '.join(allowed)}, got {value!r}"
                )
        parse_outputs(",".join(self.outputs))
        parse_npz_classes(self.npz_classes)

    @property
    def probabilities(self) -> bool:
        """Whether the maps show probabilities (else logits)."""
        return self.scores == "probs"


Pooling = Literal["max", "mean"]
POOLINGS: tuple[str, ...] = ("max", "mean")
"""The spatial poolings of an image-level score: where a class is strongest, or how much of it."""

def check_pooling(pooling: str) -> None:
    """Raises ``InvalidOptionError`` unless ``pooling`` is one of :data:`POOLINGS`."""
    if pooling not in POOLINGS:
        raise InvalidOptionError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")


Activation = Literal["softmax", "sigmoid", "none"]
ACTIVATIONS: tuple[str, ...] = ("auto", "softmax", "sigmoid", "none")
"""``--activation`` values; ``auto`` resolves to one of the others (:func:`resolve_activation`)."""

_PROBABILITIES = ("softmax", "sigmoid")


def resolve_activation(
    requested: str, num_classes: int, model_output: str = "logits"
) -> Activation:
    """The activation that turns a model's outputs into the grid's scores.

    Args:
        requested: ``"auto"``, ``"softmax"``, ``"sigmoid"`` or ``"none"``.
        num_classes: The model's number of outputs ``K``.
        model_output: What the model returns (``heatmap_cli.models.ModelOutput``): ``"logits"``,
            ``"log_softmax"``, or probabilities from a ``"softmax"`` or ``"sigmoid"``.

    Returns:
        ``"softmax"``, ``"sigmoid"`` or ``"none"``.

    Raises:
        InvalidOptionError: An unknown activation, or one asked for on top of the
            probabilities a model returns already.
    """
    if requested not in ACTIVATIONS:
        raise InvalidOptionError(
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {requested!r}"
        )
    if model_output in _PROBABILITIES:
        if requested in ("auto", "none"):
            return "none"
        raise InvalidOptionError(
            f"the model returns probabilities already (its head ends in a {model_output}); "
            f"{setting('activation')} {requested} would apply a second activation to them: "
            "use auto or none"
        )
    if requested != "auto":
        return requested  # type: ignore[return-value]
    return "sigmoid" if num_classes == 1 and model_output == "logits" else "softmax"


@dataclass(frozen=True)
class PhotoReading:
    """How photos are decoded, apart from the network's settings.

    Attributes:
        max_pixels: Decompression-bomb limit for decoded images; None disables it.
        max_display_side: Longest side of the photo kept for overlays.
    """

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_display_side: int = 4096


DEFAULT_READING = PhotoReading()
"""Pillow-like decoding limit, overlays up to 4096 pixels on their longest side."""
