"""One run of the ``heatmap`` command, from parsed options to a finished batch.

The checks that need no model come first (colour map, scales, sizes, inputs, the output folder),
so a usage error exits 2 before any folder is created or any model is loaded; then the model is
loaded and converted once, the output folder made, stale temporaries of dead runs removed, every
image scored and written (``heatmap_cli.cli.batch``; with ``--ray`` by a pool of Ray actors,
``heatmap_cli.cli.ray_runner``), the manifest written (``heatmap_cli.cli.manifest``, also when
interrupted), the report written if asked for, and one summary line said. Exit status: 0 when
every image succeeded, 1 when some failed, 130 when interrupted (:func:`exit_interrupted`, the
same line whenever Ctrl-C comes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from heatmap_cli.cli.console import QUIET_ERRORS_ONLY, Console, Tally
from heatmap_cli.errors import HeatmapError, ImageReadError, UsageError
from heatmap_cli.pipeline.limits import MAX_TOP_K
from heatmap_cli.pipeline.profiling import profile_line, record_start_up, timed

if TYPE_CHECKING:
    from heatmap_cli.cli.batch import Batch, ImageJob
    from heatmap_cli.io import ImageInput
    from heatmap_cli.models import LoadedModel
    from heatmap_cli.pipeline.engine import GridEngine
    from heatmap_cli.pipeline.rendering import OutputOptions
    from heatmap_cli.pipeline.slides import SlideSettings

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "CommandOptions",
    "exit_interrupted",
    "run_command",
    "start_job",
]

EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


@dataclass(frozen=True)
class CommandOptions:
    """The command's parsed options, one field per click parameter (``heatmap_cli.cli.options``)."""

    inputs: tuple[Path, ...]
    class_specs: tuple[str, ...]
    top_k: int
    model: str
    weights: Path | None
    labels: Path | None
    input_size: str | None
    mean: str | None
    std: str | None
    activation: str
    allow_pickle: bool
    size: int | str
    stride: int | None
    method: str
    fidelity: int
    scores: str
    device: str
    fp32: bool
    compile: bool
    alpha: float
    cmap: str
    colorbar: bool
    scale: str
    vmin: float | None
    vmax: float | None
    label: str
    outputs: tuple[str, ...]
    image_format: str
    npz_classes: str
    npz_dtype: str
    out: Path
    batch_size: int
    max_pixels: int | None
    max_overlay_side: int
    tile: int | None
    memory_budget: float | None
    max_input_pixels: int
    max_aspect: float
    scales: str | None
    flip: bool
    pooling: str
    mpp: float | None
    slide_mpp: float | None
    tissue: str
    slide_context: int | None
    skip_existing: bool
    report: bool
    ray: bool
    ray_address: str | None
    workers: int | None
    quiet: int
    debug: bool


def exit_interrupted(console: Console, tally: Tally) -> NoReturn:
    """The one "Interrupted" line, whenever Ctrl-C comes (a second one cannot cut it), and 130."""
    with _sigint_ignored():
        console.say(
            f"\nInterrupted: {tally.done} done, {tally.failed} failed, {tally.unfinished} not "
            "finished; run again with --skip-existing to finish the rest"
        )
    sys.exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals go elsewhere anyway
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_command(options: CommandOptions, console: Console, tally: Tally) -> None:
    """Runs the command: checks, model, batch, report, summary; exits 1 if an image failed.

    Args:
        options: The parsed options.
        console: Standard output and error, which never fail the batch.
        tally: Counts each image once (done, failed, skipped); read by the "Interrupted" line.

    Raises:
        click.ClickException: A usage error found before anything was created (exit 2).
    """
    record_start_up()
    with timed("import"):
        from heatmap_cli.io import remove_stale_temporaries
        from heatmap_cli.pipeline.limits import check_size
        from heatmap_cli.render import check_cmap

    check_cmap(options.cmap)
    _check_ray_options(options)
    scales = _scales(options.scales)
    if isinstance(options.size, int):  # "native": each photo's own pixels, checked per image
        check_size(options.size, scales, options.max_input_pixels)
    options = _capped_top_k(options, console)
    items = _discover(options, console, tally)
    _check_writable(options.out)

    started = time.perf_counter()
    # Under --ray the driver converts the model on its CPU only to check the options (exit 2
    # before anything is created) and to say the engine's notes once; the actors make their own.
    job = start_job(dataclasses.replace(options, device="cpu") if options.ray else options, scales)
    engine = job.engine
    for note in engine.notes if options.quiet < QUIET_ERRORS_ONLY else ():
        console.say(f"Note: {note}")
    _create_folder(options.out)  # only now: every usage check has passed
    remove_stale_temporaries(options.out)
    batch = _batch(job, options, console, tally)
    try:
        ran_on = _run_batch(batch, items, options, scales)
    except BaseException:  # interrupted: the rows of the images finished are kept
        with contextlib.suppress(HeatmapError):
            batch.manifest.write()
        raise
    written = batch.manifest.write()
    if written.dropped and options.quiet < QUIET_ERRORS_ONLY:
        console.say(f"Note: {written.note()}")
    if options.report:
        _write_report(options, console, tally)
    _say_summary(options, console, tally, engine, ran_on, time.perf_counter() - started)
    if tally.failed:
        sys.exit(EXIT_SOME_FAILED)


def _write_report(options: CommandOptions, console: Console, tally: Tally) -> None:
    """Writes ``OUT/index.html``; says where, and which image json files it left out."""
    from heatmap_cli.report import write_report

    damaged: list[Path] = []
    report = write_report(
        options.out, tally.failures, cmap=options.cmap, alpha=options.alpha, damaged=damaged
    )
    if options.quiet >= QUIET_ERRORS_ONLY:
        return
    if damaged:
        names = ", ".join(map(str, damaged[:3])) + (", ..." if len(damaged) > 3 else "")
        console.say(
            f"Note: the report leaves out {len(damaged)} json file(s) that are damaged or hold "
            f"NaN or Infinity ({names}); --skip-existing makes their images again"
        )
    console.say(f"Report: {report}")


def _say_summary(
    options: CommandOptions,
    console: Console,
    tally: Tally,
    engine: GridEngine,
    ran_on: str,
    seconds: float,
) -> None:
    """The one summary line (unless ``-qq`` and all went well), and the stage times if asked."""
    summary = f"{tally.done} done, {tally.failed} failed"
    if tally.skipped:
        summary += f", {tally.skipped} skipped (already done)"
    if options.quiet < QUIET_ERRORS_ONLY or tally.failed:
        console.say(
            f"{summary} in {seconds:.1f}s ({engine.loaded.name}, "
            f"{engine.method}, stride {engine.stride}, {ran_on}); outputs in {options.out}"
        )
    profile = profile_line()
    if profile is not None:
        console.say(profile)


def _batch(job: ImageJob, options: CommandOptions, console: Console, tally: Tally) -> Batch:
    """The run's batch; its manifest starts with the inputs that could not even be listed."""
    from heatmap_cli.cli.batch import Batch
    from heatmap_cli.cli.manifest import Manifest, ManifestRow

    manifest = Manifest(options.out)
    for path, reason in tally.failures:
        manifest.add(ManifestRow.failed(path, None, reason))
    return Batch(
        job,
        console,
        tally,
        manifest,
        skip_existing=options.skip_existing,
        quiet=options.quiet,
        debug=options.debug,
    )


def _run_batch(
    batch: Batch, items: list[ImageInput], options: CommandOptions, scales: tuple[float, ...]
) -> str:
    """Runs the batch here or on Ray; returns where it ran (``"cpu"``, ``"Ray: 2 cpu actors"``)."""
    if not options.ray:
        batch.run(batch.images_to_do(items))
        return batch.job.engine.device.type
    from heatmap_cli.cli.ray_runner import RaySettings, run_on_ray

    settings = RaySettings(
        address=options.ray_address,
        workers=options.workers,
        device=options.device,
        batch_size=options.batch_size,
    )
    build = functools.partial(start_job, options, scales)  # pickled by reference for the actors
    return run_on_ray(batch, items, build, settings)


def _capped_top_k(options: CommandOptions, console: Console) -> CommandOptions:
    if options.top_k <= MAX_TOP_K or options.class_specs:
        return options
    console.say(
        f"Note: --top-k {options.top_k} is capped at {MAX_TOP_K}: each class is a full-size "
        "overlay (--class renders any class on purpose)"
    )
    return dataclasses.replace(options, top_k=MAX_TOP_K)


def _discover(options: CommandOptions, console: Console, tally: Tally) -> list[ImageInput]:
    """The images to process; an entry that cannot be read is one error line, not the end."""
    from heatmap_cli.io import find_images

    for given in options.inputs:
        if given.is_dir() and os.path.realpath(given) == os.path.realpath(options.out):
            raise click.BadParameter(
                f"{options.out} is the input folder {given}: the next run would read its "
                "overlays as photos; choose another folder (a folder inside it is skipped)",
                param_hint="--out",
            )
    problems: list[ImageReadError] = []
    try:
        items = find_images(list(options.inputs), exclude=[options.out], on_error=problems.append)
    except ImageReadError as error:  # a missing input: nothing was done
        raise click.UsageError(str(error)) from None
    for problem in problems:
        console.say(f"Error: {problem}")
        tally.failures.append((problem.path, str(problem)))
    if not items and not problems:
        raise click.UsageError("no images found in the given inputs")
    if not items:
        console.say("Error: no images found in the given inputs")
        sys.exit(EXIT_SOME_FAILED)
    tally.todo = len(items) + len(problems)
    return items


def _scales(text: str | None) -> tuple[float, ...]:
    """``--scales`` parsed; a plain run (and ``--flip`` alone) is the one scale 1."""
    if text is None:
        return (1.0,)
    from heatmap_cli.pipeline.multiscale import parse_scales

    try:
        return parse_scales(text)
    except UsageError as error:
        raise click.BadParameter(str(error), param_hint="--scales") from None


def _check_writable(out: Path) -> None:
    """Refuses an ``--out`` that cannot be created or written, without creating anything."""
    existing = out.absolute()
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if existing == out.absolute():
        if not os.access(out, os.W_OK | os.X_OK):
            raise click.BadParameter(f"{out} is not writable", param_hint="--out")
        return
    if not os.path.isdir(existing):
        reason = os.strerror(errno.ENOTDIR)
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = os.strerror(errno.EACCES)
    else:
        return
    raise click.BadParameter(f"cannot create {out}: {reason}", param_hint="--out")


def _create_folder(out: Path) -> None:
    from heatmap_cli.errors import OutputWriteError

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputWriteError(f"cannot create {out}: {error.strerror or error}") from error


def _check_ray_options(options: CommandOptions) -> None:
    """Refuses Ray's options without ``--ray``, and ``--ray`` where Ray cannot run."""
    if not options.ray:
        for given, name in ((options.workers, "--workers"), (options.ray_address, "--ray-address")):
            if given is not None:
                raise click.BadParameter("only works with --ray", param_hint=name)
        return
    from heatmap_cli.cli.ray_runner import check_ray

    try:
        check_ray(options.device)
    except UsageError as error:
        raise click.BadParameter(str(error), param_hint="--ray") from None


def start_job(options: CommandOptions, scales: tuple[float, ...]) -> ImageJob:
    """Loads the model, resolves ``--class`` and converts the model once: the run's job.

    Also what each Ray actor calls to make its own (``heatmap_cli.cli.ray_runner``).

    Args:
        options: The parsed options.
        scales: ``--scales`` parsed (``(1.0,)``: a plain run).

    Returns:
        What scores, renders and writes every image into ``options.out``.
    """
    with timed("import"):
        from heatmap_cli.cli.batch import ImageJob
        from heatmap_cli.io import DEFAULT_MAX_PIXELS
        from heatmap_cli.pipeline.engine import GridEngine, GridSettings
        from heatmap_cli.pipeline.scoring import PhotoReading

    with timed("load"):
        loaded = _load(options)
    rendering = _rendering(options, loaded.categories)
    budget = options.memory_budget
    settings = GridSettings(
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
    with timed("convert"):
        engine = GridEngine(loaded, settings)
    if rendering.probabilities and not engine.probabilities:
        # --activation none on a model that returns logits: its "probs" are those logits
        rendering = dataclasses.replace(rendering, scores="logits")
    reading = PhotoReading(
        max_pixels=DEFAULT_MAX_PIXELS if options.max_pixels is None else options.max_pixels,
        max_display_side=options.max_overlay_side,
    )
    return ImageJob(
        engine,
        rendering,
        options.out,
        scales=scales,
        flip=options.flip,
        reading=reading,
        slides=_slide_settings(options, loaded),
    )


def _slide_settings(options: CommandOptions, loaded: LoadedModel) -> SlideSettings:
    """How slides are read: ``--mpp`` (else the model's own), ``--slide-mpp``, ``--tissue``."""
    from heatmap_cli.pipeline.slides import SlideSettings

    return SlideSettings(
        # a model that knows its scale (a WSInfer folder's spacing_um_px) gives it
        model_mpp=options.mpp if options.mpp is not None else getattr(loaded, "mpp", None),
        slide_mpp=options.slide_mpp,
        tissue=options.tissue,
        tile=options.tile,
        context=options.slide_context,
    )


def _load(options: CommandOptions) -> LoadedModel:
    """The model, with the window, mean, std and labels the options give."""
    from heatmap_cli.models import load_model, parse_channels, parse_input_size

    text = options.input_size
    window = None if text is None else parse_input_size(text, "--input-size")
    mean = None if options.mean is None else parse_channels(options.mean, "--mean")
    std = None if options.std is None else parse_channels(options.std, "--std", positive=True)
    return load_model(
        options.model,
        weights=options.weights,
        allow_pickle=options.allow_pickle,
        labels=options.labels,
        input_size=window,
        mean=mean,
        std=std,
    )


def _rendering(options: CommandOptions, categories: Sequence[str]) -> OutputOptions:
    """What is rendered and written, from the options (``--class`` resolved in ``categories``)."""
    from heatmap_cli.pipeline.ranking import resolve_classes
    from heatmap_cli.pipeline.rendering import OutputOptions

    return OutputOptions(
        classes=resolve_classes(options.class_specs, categories),
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
