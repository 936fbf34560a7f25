"""One run of the ``heatmap`` command, from parsed options to a finished batch.

The checks that need no model come first (colour map, scales, sizes, inputs, the output folder),
then those that need only what the model is, from its card (``heatmap_cli.cli.preflight``: the
model's name, classes, window and stride), so a usage error exits 2 before any folder is created,
torch imported or any model loaded; a ``--skip-existing`` run whose every image is done ends
there too. Then the model is loaded and converted once (its card kept for the next run), the
output folder made, stale temporaries of dead runs removed, every image scored and written
(``heatmap_cli.cli.batch``; with ``--ray`` by a pool of Ray actors,
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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from heatmap_cli.cli.command_options import CommandOptions
from heatmap_cli.cli.console import QUIET_ERRORS_ONLY, Console, Tally
from heatmap_cli.errors import HeatmapError, ImageReadError, UsageError
from heatmap_cli.pipeline.limits import MAX_TOP_K
from heatmap_cli.pipeline.profiling import (
    profile_line,
    record_start_up,
    seconds_since_start,
    timed,
)

if TYPE_CHECKING:
    from concurrent.futures import Future

    from heatmap_cli.cli.batch import Batch, ImageJob
    from heatmap_cli.cli.manifest import Manifest
    from heatmap_cli.cli.model_cards import ModelRequest
    from heatmap_cli.cli.preflight import PlannedRun
    from heatmap_cli.io import ImageInput
    from heatmap_cli.models import LoadedModel
    from heatmap_cli.pipeline.engine import GridEngine
    from heatmap_cli.pipeline.read_ahead import DecodedAhead
    from heatmap_cli.pipeline.settings import PhotoReading
    from heatmap_cli.pipeline.slide_settings import SlideSettings

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

    A run that computes nothing (a usage error, a resume whose every image is done) ends
    before torch is imported.

    Args:
        options: The parsed options.
        console: Standard output and error, which never fail the batch.
        tally: Counts each image once (done, failed, skipped); read by the "Interrupted" line.

    Raises:
        click.ClickException: A usage error found before anything was created (exit 2).
        UsageError: Likewise, in the library's words (the model, a class, a size...).
    """
    record_start_up()
    with timed("import"):
        from heatmap_cli.cli.preflight import model_request, plan_run
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
    request = model_request(options)
    plan = plan_run(options, request, scales)  # every check that needs no model, no torch
    if plan is not None and _finished_without_model(plan, items, options, scales, console, tally):
        return

    ahead = _decode_first_photo(items, options, request)  # while torch imports, the model loads
    # Under --ray the driver converts the model on its CPU only to check the options (exit 2
    # before anything is created) and to say the engine's notes once; the actors make their own.
    job = start_job(dataclasses.replace(options, device="cpu") if options.ray else options, scales)
    job = dataclasses.replace(job, ahead=ahead)
    engine = job.engine
    _keep_card(request, engine)
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
    _write_manifest(batch.manifest, options, console)
    _write_report(options, console, tally)
    run = f"{engine.loaded.name}, {engine.method}, stride {engine.stride}, {ran_on}"
    _say_summary(options, console, tally, run)
    if tally.failed:
        sys.exit(EXIT_SOME_FAILED)


def _finished_without_model(
    plan: PlannedRun,
    items: list[ImageInput],
    options: CommandOptions,
    scales: tuple[float, ...],
    console: Console,
    tally: Tally,
) -> bool:
    """With ``--skip-existing``, ends a run whose every image is done, without its model.

    The images' outputs are checked against the settings the run would record (the plan's,
    from the model's card); if any image is to be done, or is a slide (whose settings depend on
    the model's scale), nothing happens and the model loads.

    Returns:
        Whether the run ended (its manifest written, its summary said).
    """
    if not options.skip_existing or options.ray:
        return False
    from heatmap_cli.cli.manifest import Manifest, ManifestRow
    from heatmap_cli.cli.resume import check_outputs
    from heatmap_cli.cli.run_settings import run_settings
    from heatmap_cli.io.slides import is_slide

    reading = _reading(options)
    settings = run_settings(plan, plan.rendering, scales, options.flip, reading)
    rows = []
    for item in items:
        if is_slide(item.path, reading.max_pixels):
            return False
        verdict = check_outputs(options.out, item.stem, settings)
        if not verdict.done or verdict.record is None:
            return False
        rows.append(ManifestRow.skipped(item.path, item.stem, verdict.record))
    for note in plan.loaded.notes if options.quiet < QUIET_ERRORS_ONLY else ():
        console.say(f"Note: {note}")
    manifest = Manifest(options.out)
    for path, reason in tally.failures:
        manifest.add(ManifestRow.failed(path, None, reason))
    for row in rows:
        manifest.add(row)
        tally.skipped += 1
        tally.todo -= 1
    _write_manifest(manifest, options, console)
    _write_report(options, console, tally)
    run = f"{plan.loaded.name}, {plan.method}, stride {plan.stride}, {plan.device_type}"
    _say_summary(options, console, tally, run)
    if tally.failed:
        sys.exit(EXIT_SOME_FAILED)
    return True


def _decode_first_photo(
    items: list[ImageInput], options: CommandOptions, request: ModelRequest
) -> dict[Path, Future[DecodedAhead]]:
    """The first photo's decoding, started now, in a thread of its own (none under ``--ray``).

    Only for a model with a card (loaded here before, or the default model with its package's
    weights), whose weights are at hand: a model whose weights may be missing fails before any
    photo is read. Not with ``--skip-existing``, whose first photo may well be done already.
    """
    if options.ray or options.skip_existing or not items:
        return {}
    from heatmap_cli.cli.model_cards import find_card

    if find_card(request) is None:
        return {}
    from heatmap_cli.pipeline.read_ahead import decode_ahead
    from heatmap_cli.pipeline.thread_warnings import show_library_warnings_every_time

    show_library_warnings_every_time()  # as the batch will: each damaged photo its own line
    return {items[0].path: decode_ahead(items[0].path, _reading(options))}


def _keep_card(request: ModelRequest, engine: GridEngine) -> None:
    """Keeps the card of the model just converted, so the next run can check without it."""
    from heatmap_cli.cli.model_cards import keep_card
    from heatmap_cli.models.card import ModelCard

    dtype = str(engine.dtype).removeprefix("torch.")
    card = ModelCard.of(engine.loaded, engine.native_stride, dtype, tuple(engine.notes))
    keep_card(request, engine.loaded, card)


def _write_manifest(manifest: Manifest, options: CommandOptions, console: Console) -> None:
    """Writes ``OUT/manifest.csv``; says which rows it dropped, if any (not under ``-qq``)."""
    written = manifest.write()
    if written.dropped and options.quiet < QUIET_ERRORS_ONLY:
        console.say(f"Note: {written.note()}")


def _write_report(options: CommandOptions, console: Console, tally: Tally) -> None:
    """``OUT/index.html`` if ``--report`` was given; says where, and which jsons it left out."""
    if not options.report:
        return
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


def _say_summary(options: CommandOptions, console: Console, tally: Tally, run: str) -> None:
    """The one summary line (unless ``-qq`` and all went well), and the stage times if asked.

    Its time is what the user waited for: the whole process, from its start
    (:func:`~heatmap_cli.pipeline.profiling.seconds_since_start`).
    """
    summary = f"{tally.done} done, {tally.failed} failed"
    if tally.skipped:
        summary += f", {tally.skipped} skipped (already done)"
    if options.quiet < QUIET_ERRORS_ONLY or tally.failed:
        console.say(
            f"{summary} in {seconds_since_start():.1f}s ({run}); outputs in {options.out}"
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
    from heatmap_cli.pipeline.settings import parse_scales

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
        from heatmap_cli.cli.preflight import grid_settings, output_options
        from heatmap_cli.pipeline.classes import resolve_classes
        from heatmap_cli.pipeline.engine import GridEngine

    with timed("load"):
        loaded = _load(options)
    rendering = output_options(options, resolve_classes(options.class_specs, loaded.categories))
    with timed("convert"):
        engine = GridEngine(loaded, grid_settings(options))
    if rendering.probabilities and not engine.probabilities:
        # --activation none on a model that returns logits: its "probs" are those logits
        rendering = dataclasses.replace(rendering, scores="logits")
    return ImageJob(
        engine,
        rendering,
        options.out,
        scales=scales,
        flip=options.flip,
        reading=_reading(options),
        slides=_slide_settings(options, loaded),
    )


def _slide_settings(options: CommandOptions, loaded: LoadedModel) -> SlideSettings:
    """How slides are read: ``--mpp`` (else the model's own), ``--slide-mpp``, ``--tissue``."""
    from heatmap_cli.pipeline.slide_settings import SlideSettings

    return SlideSettings(
        # a model that knows its scale (a WSInfer folder's spacing_um_px) gives it
        model_mpp=options.mpp if options.mpp is not None else getattr(loaded, "mpp", None),
        slide_mpp=options.slide_mpp,
        tissue=options.tissue,
        tile=options.tile,
        context=options.slide_context,
        grid_format=options.grid_format.lower(),
    )


def _reading(options: CommandOptions) -> PhotoReading:
    """How photos are decoded: the decompression-bomb limit and the overlays' largest side."""
    from heatmap_cli.pipeline.settings import DEFAULT_READING, PhotoReading

    limit = DEFAULT_READING.max_pixels if options.max_pixels is None else options.max_pixels
    return PhotoReading(max_pixels=limit, max_display_side=options.max_overlay_side)


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
