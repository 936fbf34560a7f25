"""The ``heatmap`` command: parse options, call the library, report.

Exit status: 0 when every image succeeded, 1 when some failed (after finishing all the others),
2 for usage errors (before any folder is created), 130 when interrupted by Ctrl-C at any moment,
a second Ctrl-C included (finished images are kept; ``--skip-existing`` resumes). The status
comes from the images alone: a closed, broken or full standard output or error loses lines, never
images (``heatmap_cli.console``). Library errors become one line on stderr, and their base class
alone chooses the status (``errors.UsageError``: 2, any other ``HeatmapError``: 1); ``--debug``
shows tracebacks.

Nothing heavy is imported at module level, so ``heatmap --help`` answers without loading torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from heatmap_cli.console import Console, Tally, reserve_standard_descriptors
from heatmap_cli.errors import HeatmapError, ImageReadError, UsageError
from heatmap_cli.limits import DEFAULT_MAX_ASPECT, DEFAULT_MAX_INPUT_PIXELS, MAX_TOP_K

if TYPE_CHECKING:
    from heatmap_cli.engine import GridEngine
    from heatmap_cli.io import ImageInput
    from heatmap_cli.outputs import OutputOptions

DEFAULT_MODEL = "efficientnet_lite0"  # kept in sync with heatmap_cli.models.DEFAULT_MODEL (test)
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class _LazyChoice(click.Choice):
    """A ``click.Choice`` whose values are a library list, looked up when a value is checked.

    The lists live next to the code that uses them (the registered grid methods, the rankings'
    poolings); importing them for ``--help`` would import torch, so the option names a metavar
    instead of listing the values. A function is called at every check, so a method registered
    after start-up is offered too.
    """

    def __init__(self, module: str, attribute: str) -> None:
        self._source = (module, attribute)
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        """The values, imported on first use."""
        module, attribute = self._source
        values = getattr(importlib.import_module(module), attribute)
        return tuple(values() if callable(values) else values)


def _parsed(module: str, function: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A callback that parses an option's text with a library function (imported on use)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return getattr(importlib.import_module(module), function)(value)
        except UsageError as error:
            raise click.BadParameter(str(error), ctx=ctx, param=param) from None

    return parse


class _FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN (which passes every comparison) and infinity."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}", ctx=ctx, param=param)
    return value


def _at_least_a_byte(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    if value is not None and round(value * 2**30) < 1:  # it would round to no budget at all
        raise click.BadParameter(f"{value} GiB is less than one byte", ctx=ctx, param=param)
    return value


class _Command(click.Command):
    """The command: standard descriptors reserved first; Ctrl-C while parsing exits as any other.

    (An eager ``--list-models`` runs while click parses.)
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        reserve_standard_descriptors()
        return super().main(*args, **kwargs)

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            _exit_interrupted(Console.standard(), Tally())


def _list_models(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from heatmap_cli.models import available_models

    for entry in available_models():
        cached = "cached" if entry.cached else ""
        click.echo(f"{entry.name:<24} {entry.family:<12} {entry.weights:<28} {cached}".rstrip())
    click.echo("Any timm model: timm/NAME (e.g. timm/resnet50.a1_in1k); see timm.list_models().")
    ctx.exit(0)


@dataclass(frozen=True)
class CommandOptions:
    """The command's parsed options, one field per click parameter (see ``main``)."""

    inputs: tuple[Path, ...]
    class_specs: tuple[str, ...]
    top_k: int
    model: str
    weights: Path | None
    size: int | str
    stride: int | None
    method: str
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
    skip_existing: bool
    report: bool
    quiet: bool
    debug: bool


# A paragraph that starts with click's \b marker is printed as written (no rewrapping).
_HELP = """Render where a pretrained classifier sees each class in images or folders of images.

\b
Examples:
  heatmap photo.jpg --class 281
  heatmap photo.jpg --stride 16
  heatmap photos/ --out maps/ --outputs png,json --format webp

Choosing --size: every cell of the map is the classifier's answer on one window (224x224 pixels
for most models) of the photo resized to --size. An object much smaller than the window in the
resized photo is missed: a cat 200 px wide in a 2000x1333 photo is 58 px wide at the default
384 (best cat class 0.01, off the cat), 115 px at --size 768 (0.79, on it). Choose --size so
that objects are at least half a window wide once resized; --size native scores each photo at
its own pixels (objects near the window's size); --scales 1,2,4 averages sizes for objects of
mixed sizes.
"""


@click.command(cls=_Command, help=_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    package_name="heatmap-cli", prog_name="heatmap", message="%(prog)s %(version)s"
)
@click.argument(
    "inputs",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path),
)
@click.option(
    "-c",
    "--class",
    "class_specs",
    multiple=True,
    metavar="INDEX|NAME",
    help="Class to render (repeatable): an index, or a name (exact, else unique substring).",
)
@click.option(
    "-k",
    "--top-k",
    default=3,
    show_default=True,
    callback=_positive,
    help="Without --class, render the image-level ranking's first K classes (as printed; "
    f"at most {MAX_TOP_K}).",
)
@click.option(
    "-m",
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model: the offline default, a torchvision name, or timm/NAME.",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Local state dict or checkpoint for --model's architecture.",
)
@click.option(
    "--list-models",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_list_models,
    help="List usable models and exit.",
)
@click.option(
    "-s",
    "--size",
    metavar="PIXELS|native",
    default="384",
    callback=_parsed("heatmap_cli.engine", "parse_size"),
    show_default=True,
    help="Shorter side of the resized image, in pixels (snapped to the grid), at least the "
    "window; 'native': each photo's own. Larger sizes find smaller objects (see above).",
)
@click.option(
    "--stride",
    type=int,
    callback=_positive,
    help="Output stride in resized pixels; must divide the native stride (default).",
)
@click.option(
    "--method",
    type=_LazyChoice("heatmap_cli.engine", "method_choices"),
    metavar="METHOD",
    default="auto",
    show_default=True,
    help="dense (native stride), dilate or stitch (finer strides), crops (exact reference); "
    "auto: dense, or dilate for a finer stride.",
)
@click.option(
    "--scores",
    type=click.Choice(["probs", "logits"]),
    default="probs",
    show_default=True,
    help="Show per-cell softmax probabilities or raw logits.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--fp32", is_flag=True, help="Keep float32 on CUDA (default: autocast bf16/fp16).")
@click.option(
    "--compile",
    is_flag=True,
    help="torch.compile the network: seconds per input size once, faster passes after.",
)
@click.option(
    "--alpha",
    type=_FiniteFloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Opacity of the heat map at full score.",
)
@click.option("--cmap", default="inferno", show_default=True, help="Matplotlib colormap.")
@click.option(
    "--colorbar",
    is_flag=True,
    help="Add a colour bar to each overlay (colours at the overlay's opacity, over grey).",
)
@click.option(
    "--scale",
    type=_LazyChoice("heatmap_cli.render.scale", "SCALES"),
    metavar="SCALE",
    default="shared",
    show_default=True,
    help="Colour range: shared (one for the classes drawn for a photo), absolute (0..1, the "
    "same for every photo), per-class (each class to its own peak). Diverging --cmap: "
    "centred on 0.",
)
@click.option(
    "--vmin",
    type=_FiniteFloatRange(),
    help="Fixed score at the bottom of the colour range.",
)
@click.option(
    "--vmax",
    type=_FiniteFloatRange(),
    help="Fixed score at the top (the same across a batch).",
)
@click.option(
    "--label",
    type=_LazyChoice("heatmap_cli.outputs", "LABELS"),
    metavar="auto|corner|none",
    default="auto",
    show_default=True,
    help="Label in the corner hiding the least of the map, top-left, or none.",
)
@click.option(
    "--outputs",
    default="png,npz,json",
    show_default=True,
    callback=_parsed("heatmap_cli.outputs", "parse_outputs"),
    help="Which files to write per photo: any of png (the overlays and sheet), npz, json "
    "(always written: it marks the photo done).",
)
@click.option(
    "--format",
    "image_format",
    type=_LazyChoice("heatmap_cli.io", "IMAGE_FORMATS"),
    metavar="png|jpg|webp",
    default="png",
    show_default=True,
    help="Format of the overlays and sheet (jpg and webp: lossy, 3-8x smaller).",
)
@click.option(
    "--npz-classes",
    default="all",
    show_default=True,
    callback=_parsed("heatmap_cli.outputs", "parse_npz_classes"),
    help="Classes kept in the npz: all, rendered, or topK (e.g. top20, by the ranking).",
)
@click.option(
    "--npz-dtype",
    type=_LazyChoice("heatmap_cli.outputs", "NPZ_DTYPES"),
    metavar="float32|float16",
    default="float32",
    show_default=True,
    help="Precision of the npz's logits and probs (float16: half the size).",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("heatmaps"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "-b",
    "--batch-size",
    default=8,
    show_default=True,
    callback=_positive,
    help="Images of equal resized size per forward pass.",
)
@click.option(
    "--max-pixels",
    type=int,
    default=None,
    callback=_positive,
    help="Raise the decompression-bomb limit (decoded pixels; default Pillow's ~89M).",
)
@click.option(
    "--max-overlay-side",
    default=4096,
    show_default=True,
    callback=_positive,
    help="Longest side of written overlays (huge images are shown smaller).",
)
@click.option(
    "--tile",
    type=int,
    callback=_positive,
    metavar="PIXELS",
    help="Evaluate in tiles of at most this side (exact, bounded memory). Default: automatic.",
)
@click.option(
    "--memory-budget",
    type=_FiniteFloatRange(min=0, min_open=True),
    callback=_at_least_a_byte,
    metavar="GIB",
    help="Activation memory of one pass before tiling starts "
    "(default: 4 GiB or half the free RAM; 70% of free CUDA memory).",
)
@click.option(
    "--max-input-pixels",
    default=DEFAULT_MAX_INPUT_PIXELS,
    show_default=True,
    callback=_positive,
    metavar="N",
    help="Largest network input of one pass (height x width after resizing); an image that "
    "needs more is refused with one line.",
)
@click.option(
    "--max-aspect",
    type=_FiniteFloatRange(min=1),
    default=DEFAULT_MAX_ASPECT,
    show_default=True,
    metavar="RATIO",
    help="Largest ratio of the network input's longer side to its shorter; longer strips are "
    "refused with one line.",
)
@click.option(
    "--scales",
    metavar="F1,F2,...",
    help="Average over these factors of --size (e.g. 1,1.5,2), OverFeat-style.",
)
@click.option("--flip", is_flag=True, help="Also average each scale's horizontal mirror.")
@click.option(
    "--pooling",
    type=_LazyChoice("heatmap_cli.ranking", "POOLINGS"),
    metavar="POOLING",
    default="max",
    show_default=True,
    help="Image-level ranking: spatial max or mean of each class's probability.",
)
@click.option("--skip-existing", is_flag=True, help="Skip images whose outputs are complete.")
@click.option(
    "--report",
    is_flag=True,
    help="Also write OUT/index.html: a gallery and viewer of every image in OUT (offline).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or per-image lines.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(**options: Any) -> None:
    """The ``heatmap`` command (its help is ``_HELP``)."""
    command = CommandOptions(**options)
    console, tally = Console.standard(), Tally()
    try:
        try:
            _run(command, console, tally)
        except click.ClickException:
            raise
        except UsageError as error:
            _fail(error, EXIT_USAGE, command.debug, console)
        except (HeatmapError, OSError) as error:
            _fail(error, EXIT_SOME_FAILED, command.debug, console)
        except MemoryError as error:  # outside any one image: loading the model...
            from heatmap_cli.limits import out_of_memory_anywhere

            _fail(out_of_memory_anywhere(), EXIT_SOME_FAILED, command.debug, console, error)
    except KeyboardInterrupt:  # at any moment, while handling another one too
        if command.debug:
            raise
        _exit_interrupted(console, tally)


def _fail(
    error: BaseException,
    status: int,
    debug: bool,
    console: Console,
    cause: BaseException | None = None,
) -> NoReturn:
    if debug:
        raise cause or error
    console.say(f"Error: {error}")
    sys.exit(status)


def _exit_interrupted(console: Console, tally: Tally) -> NoReturn:
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


def _run(options: CommandOptions, console: Console, tally: Tally) -> None:
    from heatmap_cli.batch import Batch
    from heatmap_cli.io import remove_stale_temporaries
    from heatmap_cli.limits import check_size
    from heatmap_cli.render import check_cmap

    check_cmap(options.cmap)
    scales = _scales(options.scales)
    if isinstance(options.size, int):  # "native": each photo's own pixels, checked per image
        check_size(options.size, scales, options.max_input_pixels)
    options = _capped_top_k(options, console)
    items = _discover(options, console, tally)
    _check_writable(options.out)

    started = time.perf_counter()
    engine, rendering = _start(options)
    for note in engine.notes:
        console.say(f"Note: {note}")
    _create_folder(options.out)  # only now: every usage check has passed
    remove_stale_temporaries(options.out)
    batch = Batch(
        engine,
        rendering,
        options.out,
        console,
        tally,
        scales=scales,
        flip=options.flip,
        skip_existing=options.skip_existing,
        quiet=options.quiet,
        debug=options.debug,
    )
    batch.run(batch.images_to_do(items))
    if options.report:
        from heatmap_cli.report import write_report

        report = write_report(options.out, tally.failures, cmap=options.cmap, alpha=options.alpha)
        if not options.quiet:
            console.say(f"Report: {report}")
    summary = f"{tally.done} done, {tally.failed} failed"
    if tally.skipped:
        summary += f", {tally.skipped} skipped (already done)"
    if not options.quiet or tally.failed:
        console.say(
            f"{summary} in {time.perf_counter() - started:.1f}s ({engine.loaded.name}, "
            f"{engine.method}, stride {engine.stride}, {engine.device.type}); "
            f"outputs in {options.out}"
        )
    if tally.failed:
        sys.exit(EXIT_SOME_FAILED)


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
    from heatmap_cli.multiscale import parse_scales

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


def _start(options: CommandOptions) -> tuple[GridEngine, OutputOptions]:
    """Loads the model, resolves ``--class`` and converts the model once."""
    from heatmap_cli.engine import GridEngine, GridSettings
    from heatmap_cli.io import DEFAULT_MAX_PIXELS
    from heatmap_cli.models import load_model
    from heatmap_cli.outputs import OutputOptions
    from heatmap_cli.ranking import resolve_classes

    loaded = load_model(options.model, weights=options.weights)
    rendering = OutputOptions(
        classes=resolve_classes(options.class_specs, loaded.categories),
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
    )
    budget = options.memory_budget
    settings = GridSettings(
        size=options.size,
        stride=options.stride,
        method=options.method,
        device=options.device,
        fp32=options.fp32,
        compile=options.compile,
        batch_size=options.batch_size,
        max_pixels=DEFAULT_MAX_PIXELS if options.max_pixels is None else options.max_pixels,
        max_display_side=options.max_overlay_side,
        tile=options.tile,
        memory_budget=None if budget is None else round(budget * 2**30),
        max_input_pixels=options.max_input_pixels,
        max_aspect=options.max_aspect,
    )
    return GridEngine(loaded, settings), rendering


if __name__ == "__main__":  # pragma: no cover
    main()
