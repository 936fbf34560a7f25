"""``HeatmapModel``: a classifier converted once, scoring photos into :class:`ScoreMap` objects.

It is the command without files: the command's engine
(:class:`~heatmap_cli.pipeline.engine.GridEngine`) converts the model once, and every call goes
through the command's loader (:func:`~heatmap_cli.pipeline.scoring.score_images`: reading,
resizing, batching by size, the passes of ``scales`` and ``flip`` averaged), so the numbers are
the npz's for the same options, bit for bit. Every map is checked against exact windows as the
command checks it (``fidelity``, :mod:`heatmap_cli.api.exactness`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from torch import nn

from heatmap_cli.api.exactness import check_image, default_peaks
from heatmap_cli.api.loading import Categories, Channels, WindowSize, loaded_model
from heatmap_cli.api.pictures import ImageLike, Pictures, gather
from heatmap_cli.api.score_map import ScoreMap
from heatmap_cli.errors import InvalidOptionError
from heatmap_cli.io import DEFAULT_MAX_PIXELS
from heatmap_cli.models import LoadedModel
from heatmap_cli.pipeline.engine import GridEngine, GridSettings
from heatmap_cli.pipeline.multiscale import check_scales
from heatmap_cli.pipeline.scoring import ImageResult, PhotoReading, score_images
from heatmap_cli.pipeline.settings import DEFAULT_FIDELITY

__all__ = ["ENGINE_SETTINGS", "HeatmapModel"]

ENGINE_SETTINGS = frozenset(
    {"fp32", "compile", "tile", "memory_budget", "max_input_pixels", "max_aspect"}
)
"""The engine's other settings :class:`HeatmapModel` passes on (``GridSettings``' fields)."""

Errors = Literal["raise", "return"]


class HeatmapModel:
    """A classifier converted once, that turns photos into class maps.

    Args:
        model: A loaded model (:func:`heatmap_cli.load_model`), a name or file for it, or a
            ``torch.nn.Module`` in eval mode (a fine-tuned torchvision or timm model: give its
            ``input_size`` and ``categories`` unless it records them, as timm's do).
        size: Shorter side of the resized photo in pixels (snapped to whole windows), or
            ``"native"`` for each photo's own.
        stride: Output stride in resized pixels; None for the network's native stride.
        method: ``"auto"`` (dense, or dilate for a finer stride, then exact windows within a
            quarter of the other time: ``heatmap_cli.pipeline.methods``), ``"refine"``,
            ``"dense"``, ``"stitch"``, ``"dilate"``, ``"crops"`` (the unmodified model on every
            window), or any registered method.
        device: ``"auto"`` (CUDA, then MPS, then the CPU), ``"cpu"``, ``"cuda:1"``...
        input_size: The window the model was trained at (``224``, ``(H, W)``).
        categories: Its class names, or a labels file.
        mean: Per-channel mean of RGB values in ``[0, 1]``.
        std: Per-channel standard deviation.
        interpolation: How photos are resized: ``"bilinear"``, ``"bicubic"``, ``"nearest"``.
        scales: Factors of ``size``, one pass each, averaged (``(1.0,)``: one pass).
        flip: Also average each scale's mirror image.
        activation: What makes probabilities of the logits: ``"auto"``, ``"softmax"``,
            ``"sigmoid"`` or ``"none"``.
        batch_size: Photos (or windows, for crops) per forward pass.
        max_overlay_side: Longest side of the photo kept to draw overlays on.
        max_pixels: Decompression-bomb limit for image files; None for none.
        workers: Threads that read and resize photos while the network runs.
        fidelity: Cells of every map checked against exact windows besides the peaks of its 3
            best classes, as the command's ``--fidelity`` (:attr:`ScoreMap.fidelity`); 0 checks
            none, keeps no pixels and draws no exact values in labels.
        **engine: Other settings of the engine: ``fp32``, ``compile``, ``tile``,
            ``memory_budget`` (bytes), ``max_input_pixels``, ``max_aspect``.

    Attributes:
        loaded: The model with its class names and preprocessing.
        engine: The converted model and the choices made (method, stride, device...).
        notes: What to know about the model and the choices made (also given as warnings).
        fidelity: Spread cells checked on every map besides its peaks (0: no check).

    Raises:
        TypeError: An unknown keyword, or a model of no kind above.
        UsageError: A subclass saying what cannot work (a size below the window, a stride that
            does not divide the native one, a model in training mode, a negative fidelity...).
        ConversionError: The model cannot be converted for the method asked for (``"auto"``
            falls back to ``"crops"``, with a note).
    """

    def __init__(
        self,
        model: LoadedModel | nn.Module | str | os.PathLike[str],
        size: int | str = 384,
        stride: int | None = None,
        method: str = "auto",
        device: str = "auto",
        *,
        input_size: WindowSize | None = None,
        categories: Categories | None = None,
        mean: Channels | None = None,
        std: Channels | None = None,
        interpolation: str | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        activation: str = "auto",
        batch_size: int = 8,
        max_overlay_side: int = 4096,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        workers: int = 2,
        fidelity: int = DEFAULT_FIDELITY,
        **engine: Any,
    ) -> None:
        unknown = sorted(set(engine) - ENGINE_SETTINGS)
        if unknown:
            raise TypeError(f"HeatmapModel got unknown keyword(s): {', '.join(unknown)}")
        if isinstance(fidelity, bool) or not isinstance(fidelity, int) or fidelity < 0:
            raise InvalidOptionError(f"fidelity must be 0 or more cells, got {fidelity!r}")
        self.fidelity = fidelity
        self.loaded = loaded_model(
            model,
            input_size=input_size,
            categories=categories,
            mean=mean,
            std=std,
            interpolation=interpolation,
        )
        settings = GridSettings(
            size=size,
            stride=stride,
            method=method,
            device=device,
            batch_size=batch_size,
            activation=activation,
            **engine,
        )
        self.engine = GridEngine(self.loaded, settings)
        self.scales, self.flip = tuple(float(s) for s in scales), flip
        check_scales(self.scales)
        self.engine.check_scales(self.scales)
        self.reading = PhotoReading(max_pixels=max_pixels, max_display_side=max_overlay_side)
        self.workers = workers
        self.notes: list[str] = []
        self._say(self.engine.notes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The model's ``K`` class names."""
        return self.engine.categories

    @property
    def method(self) -> str:
        """The grid method asked for (``"auto"`` and ``"refine"`` choose per image)."""
        return self.engine.method

    @property
    def stride(self) -> int:
        """The output stride in resized pixels."""
        return self.engine.stride

    @property
    def window(self) -> tuple[int, int]:
        """``(h, w)``: the window each cell sees, in resized pixels (the training size)."""
        return self.engine.window

    def __call__(
        self, images: ImageLike | Iterable[ImageLike], *, errors: Errors = "raise"
    ) -> ScoreMap | Exception | list[ScoreMap | Exception]:
        """Scores one image, or a list of them (batched by size, read ahead in threads).

        Args:
            images: An image file, a Pillow image or a uint8 ``(H, W, 3)`` array; a list or
                tuple of those; or a uint8 ``(N, H, W, 3)`` array.
            errors: ``"raise"``: an image that fails raises its error once every image is
                done; ``"return"``: its error takes its place in the result.

        Returns:
            A :class:`ScoreMap` for one image, a list of them (in the order given) for several.

        Raises:
            ImageReadError: An image cannot be read (``errors="raise"``).
            HeatmapError: Another image's failure, such as ``InputTooLargeError``.
        """
        pictures = gather(images)
        results = list(self._scored(pictures))
        if errors == "raise":
            failure = next((r for r in results if isinstance(r, Exception)), None)
            if failure is not None:
                raise failure
        return results[0] if pictures.single else results

    def map(
        self, images: Iterable[ImageLike], *, errors: Errors = "raise"
    ) -> Iterator[ScoreMap | Exception]:
        """Yields each image's :class:`ScoreMap` in the order given, as soon as it is ready.

        For many photos: only the images in flight are held, not every result.

        Args:
            images: Image files, Pillow images or uint8 arrays.
            errors: ``"raise"``: the first image that fails raises its error when its turn
                comes; ``"return"``: its error is yielded in its place.
        """
        for result in self._scored(gather(list(images))):
            if isinstance(result, Exception) and errors == "raise":
                raise result
            yield result

    def _scored(self, pictures: Pictures) -> Iterator[ScoreMap | Exception]:
        """Every image's result in the order given, through the command's loader."""
        places: dict[object, deque[int]] = {}
        for place, item in enumerate(pictures.items):
            places.setdefault(item, deque()).append(place)
        done: dict[int, ScoreMap | Exception] = {}
        following, notes_said = 0, len(self.engine.notes)
        outcomes = score_images(
            pictures.items,
            self.engine,
            scales=self.scales,
            flip=self.flip,
            workers=self.workers,
            reading=self.reading,
            decode=pictures.decode,
            keep_inputs=self.fidelity > 0,
        )
        try:
            for item, result in outcomes:
                self._say(self.engine.notes[notes_said:])  # a compile that failed
                notes_said = len(self.engine.notes)
                done[places[item].popleft()] = self._score_map(result)
                while following in done:
                    yield done.pop(following)
                    following += 1
        finally:
            outcomes.close()

    def _score_map(self, result: ImageResult | Exception) -> ScoreMap | Exception:
        if isinstance(result, Exception):
            return result
        score_map = ScoreMap(result, self.class_names, self.engine.probabilities)
        if self.fidelity > 0:
            score_map = self._checked(score_map)
        self._say(f"{score_map.name}: {note}" for note in score_map.notes)
        return score_map

    def _checked(self, score_map: ScoreMap) -> ScoreMap:
        """The map with the command's fidelity check; a check that fails costs only itself."""
        result, probabilities = score_map.result, self.engine.probabilities
        peaks = default_peaks(result, self.class_names, score_map.ranking("max"), probabilities)
        try:
            fidelity, exact_cells = check_image(result, self.engine, peaks, self.fidelity)
        except Exception as error:  # the map is good work: it is kept without the check
            remark = f"the fidelity check failed, the map is kept without it: {error}"
            return dataclasses.replace(score_map, remarks=(remark,))
        remark = None if fidelity is None else fidelity.note()
        return dataclasses.replace(
            score_map,
            fidelity=fidelity,
            exact_cells=exact_cells,
            remarks=(remark,) if remark else (),
        )

    def _say(self, notes: Iterable[str]) -> None:
        for note in notes:
            self.notes.append(note)
            warnings.warn(note, UserWarning, stacklevel=4)

    def __repr__(self) -> str:
        return (
            f"HeatmapModel({self.loaded.name}, {len(self.class_names)} classes, window "
            f"{self.window[1]}x{self.window[0]}, {self.method}, stride {self.stride}, "
            f"{self.engine.device})"
        )
