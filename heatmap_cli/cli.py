"""The ``heatmap`` command: parse options, call the library, report.

Exit status: 0 when every image succeeded, 1 when some failed (after finishing all the others),
2 for usage errors, 130 when interrupted (finished images are kept; ``--skip-existing`` resumes).
Library errors become one line on stderr, and their base class alone chooses the status
(``errors.UsageError``: 2, any other ``HeatmapError``: 1); ``--debug`` shows tracebacks.

Nothing heavy is imported at module level, so ``heatmap --help`` answers without loading torch.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from heatmap_cli.errors import HeatmapError, ImageReadError, UsageError

if TYPE_CHECKING:
    from tqdm import tqdm

    from heatmap_cli.engine import GridEngine
    from heatmap_cli.io import ImageInput
    from heatmap_cli.loader import Outcome
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


def _positive(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be positive, got {value}", ctx=ctx, param=param)
    return value


def _size(ctx: click.Context, param: click.Parameter, value: str) -> int | str:
    """``--size``: positive pixels, or ``native``."""
    if value.strip().lower() == "native":
        return "native"
    try:
        pixels = int(value)
    except ValueError:
        raise click.BadParameter(f"must be PIXELS or native, got {value!r}", ctx, param) from None
    return _positive(ctx, param, pixels)  # type: ignore[return-value]


def _list_models(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from heatmap_cli.models import available_models

    for entry in available_models():
        cached = "cached" if entry.cached else ""
        click.echo(f"{entry.name:<24} {entry.family:<12} {entry.weights:<28} {cached}".rstrip())
    click.echo("Any timm model: timm/NAME (e.g. timm/resnet50.a1_in1k); see timm.list_models().")
    click.echo(
        "Your own fine-tuned classifier: save its state dict, then\n"
        "  heatmap photo.jpg --model resnet18 --weights my.pth --labels labels.txt "
        "--input-size 224\n"
        "  (any torchvision or timm architecture, any number of classes; checkpoints too).\n"
        "Your own architecture: --model path/to/file.py:callable or package.module:callable "
        "(runs that code).\n"
        "A model file: --model FILE, a torch.export archive (.pt2) or a TorchScript file."
    )
    ctx.exit(0)


@dataclass(frozen=True)
class CommandOptions:
    """The command's parsed options, one field per click parameter (see ``main``)."""

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
    scores: str
    device: str
    fp32: bool
    compile: bool
    alpha: float
    cmap: str
    colorbar: bool
    out: Path
    batch_size: int
    max_pixels: int | None
    max_overlay_side: int
    tile: int | None
    memory_budget: float | None
    scales: str | None
    flip: bool
    pooling: str
    skip_existing: bool
    report: bool
    quiet: bool
    debug: bool


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
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
    help="Without --class, render the K classes with the highest peak probability.",
)
@click.option(
    "-m",
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model: the offline default, a torchvision name, timm/NAME, a model file (torch.export "
    ".pt2 or TorchScript), or your own code as path/to/file.py:callable or "
    "package.module:callable (this imports and runs that code).",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False),
    help="State dict or checkpoint for --model's architecture, with any number of classes.",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Class names: a text file (one per line), a JSON list or a JSON {index: name}.",
)
@click.option(
    "--input-size",
    metavar="PIXELS|H,W",
    help="The window the classifier was trained on (default: the model's own, else 224).",
)
@click.option("--mean", metavar="R,G,B", help="Normalization mean (default: the model's own).")
@click.option("--std", metavar="R,G,B", help="Normalization std (default: the model's own).")
@click.option(
    "--activation",
    type=_LazyChoice("heatmap_cli.activations", "ACTIVATIONS"),
    metavar="ACTIVATION",
    default="auto",
    show_default=True,
    help="Scores from logits: softmax, sigmoid or none; auto: sigmoid for one output, softmax "
    "for several, none for a model that returns probabilities.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Load a full-model pickle (torch.save(model)); unpickling runs code from the file.",
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
    default="384",
    show_default=True,
    callback=_size,
    metavar="PIXELS|native",
    help="Shorter side of the resized image, in pixels (snapped to the grid); native: the "
    "photo's own scale.",
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
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Opacity of the heat map at full score.",
)
@click.option("--cmap", default="inferno", show_default=True, help="Matplotlib colormap.")
@click.option("--colorbar", is_flag=True, help="Add a colour bar to each overlay.")
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
    type=click.FloatRange(min=0, min_open=True),
    metavar="GIB",
    help="Activation memory of one pass before tiling starts "
    "(default: 4 GiB or half the free RAM; 70% of free CUDA memory).",
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
    r"""Render where a pretrained classifier sees each class in images or folders of images.

    \b
    Examples:
      heatmap photo.jpg --class 281
      heatmap photo.jpg --stride 16
      heatmap photos/ --out maps/
    """
    command = CommandOptions(**options)
    try:
        _run(command)
    except click.ClickException:
        raise
    except UsageError as error:
        _fail(error, EXIT_USAGE, command.debug)
    except (HeatmapError, OSError) as error:
        _fail(error, EXIT_SOME_FAILED, command.debug)


def _fail(error: BaseException, status: int, debug: bool) -> NoReturn:
    if debug:
        raise error
    click.echo(f"Error: {error}", err=True)
    sys.exit(status)


def _run(options: CommandOptions) -> None:
    from heatmap_cli.io import find_images, remove_stale_temporaries
    from heatmap_cli.outputs import completion_marker
    from heatmap_cli.render import check_cmap

    if options.max_pixels is not None and options.max_pixels <= 0:
        raise click.BadParameter("must be positive", param_hint="--max-pixels")
    check_cmap(options.cmap)
    scales = _scales(options.scales)
    try:
        items = find_images(list(options.inputs), exclude=[options.out])
    except ImageReadError as error:  # a missing input or unlistable folder: nothing was done
        raise click.UsageError(str(error)) from None
    if not items:
        raise click.UsageError("no images found in the given inputs")
    _check_writable(options.out)

    started = time.perf_counter()
    engine, rendering = _start(options)
    for note in engine.notes:
        click.echo(f"Note: {note}", err=True)
    remove_stale_temporaries(options.out)
    todo = [
        item
        for item in items
        if not (options.skip_existing and completion_marker(options.out, item.stem).exists())
    ]
    done, failures = _process(todo, engine, rendering, options, scales)
    failed = len(failures)
    if options.report:
        from heatmap_cli.report import write_report

        report = write_report(options.out, failures, cmap=options.cmap, alpha=options.alpha)
        if not options.quiet:
            click.echo(f"Report: {report}", err=True)
    summary = f"{done} done, {failed} failed"
    if len(items) > len(todo):
        summary += f", {len(items) - len(todo)} skipped (already done)"
    if not options.quiet or failed:
        click.echo(
            f"{summary} in {time.perf_counter() - started:.1f}s ({engine.loaded.name}, "
            f"{engine.method}, stride {engine.stride}, {engine.device.type}); "
            f"outputs in {options.out}",
            err=True,
        )
    if failed:
        sys.exit(EXIT_SOME_FAILED)


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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
        raise click.BadParameter(f"cannot create {out}: {reason}", param_hint="--out") from None
    if not os.access(out, os.W_OK):
        raise click.BadParameter(f"{out} is not writable", param_hint="--out")


def _start(options: CommandOptions) -> tuple[GridEngine, OutputOptions]:
    """Loads the model, resolves ``--class`` and converts the model once."""
    from heatmap_cli.engine import GridEngine, GridSettings
    from heatmap_cli.io import DEFAULT_MAX_PIXELS
    from heatmap_cli.models import load_model, parse_channels, parse_input_size
    from heatmap_cli.outputs import OutputOptions
    from heatmap_cli.ranking import resolve_classes

    text = options.input_size
    window = None if text is None else parse_input_size(text, "--input-size")
    mean = None if options.mean is None else parse_channels(options.mean, "--mean")
    std = None if options.std is None else parse_channels(options.std, "--std", positive=True)
    loaded = load_model(
        options.model,
        weights=options.weights,
        allow_pickle=options.allow_pickle,
        labels=options.labels,
        input_size=window,
        mean=mean,
        std=std,
    )
    rendering = OutputOptions(
        classes=resolve_classes(options.class_specs, loaded.categories),
        top_k=options.top_k,
        scores=options.scores,
        cmap=options.cmap,
        alpha=options.alpha,
        colorbar=options.colorbar,
        pooling=options.pooling,
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
        memory_budget=None if budget is None else int(budget * 2**30),
        activation=options.activation,
    )
    return GridEngine(loaded, settings), rendering


def _process(
    items: list[ImageInput],
    engine: GridEngine,
    rendering: OutputOptions,
    options: CommandOptions,
    scales: tuple[float, ...],
) -> tuple[int, list[tuple[Path, str]]]:
    """Scores and writes every image, reporting each.

    Returns:
        How many images were done, and each failed image with its one-line reason.
    """
    from tqdm import tqdm

    from heatmap_cli.loader import score_images

    done = 0
    failures: list[tuple[Path, str]] = []
    notes_shown = len(engine.notes)  # printed already; a --compile fallback may add one later
    disabled = options.quiet or len(items) <= 1
    progress = tqdm(total=len(items), unit="img", file=sys.stderr, disable=disabled)
    outcomes = score_images(items, engine, scales=scales, flip=options.flip)
    try:
        with progress:
            for outcome in outcomes:
                for note in engine.notes[notes_shown:]:
                    progress.write(f"Note: {note}", file=sys.stderr)
                notes_shown = len(engine.notes)
                failure = _finish(outcome, engine, rendering, options, progress)
                if failure is None:
                    done += 1
                else:
                    failures.append((outcome.item.path, failure))
                progress.update(1)
    except KeyboardInterrupt:
        if options.debug:
            raise
        failed = len(failures)
        click.echo(
            f"\nInterrupted: {done} done, {failed} failed, {len(items) - done - failed} not "
            "finished; run again with --skip-existing to finish the rest",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    finally:
        outcomes.close()  # stops the loader threads now, not when garbage-collected
    return done, failures


def _finish(
    outcome: Outcome,
    engine: GridEngine,
    rendering: OutputOptions,
    options: CommandOptions,
    progress: tqdm,
) -> str | None:
    """Writes one image's outputs and reports it; if it failed, one error line and its reason."""
    from heatmap_cli.outputs import write_outputs
    from heatmap_cli.ranking import describe_ranking

    path = outcome.item.path
    try:
        result = outcome.unwrap()
        write_outputs(result, engine, rendering, options.out)
    except Exception as error:  # one image's failure never stops the batch
        if options.debug:
            raise
        reason = _describe_failure(path, error)
        progress.write(f"Error: {reason}", file=sys.stderr)
        return reason
    if not options.quiet:
        passes, categories = result.grid.passes, engine.categories
        table = describe_ranking(passes, categories, rendering.top_k, rendering.pooling)
        separator = "\n" if "\n" in table else " "
        progress.write(f"{path}:{separator}{table}", file=sys.stdout)
        for note in result.notes:
            progress.write(f"Warning: {path}: {note}", file=sys.stderr)
    return None


def _describe_failure(path: Path, error: Exception) -> str:
    text = str(error)
    if not isinstance(error, HeatmapError):  # not a foreseen failure: say what it was
        text = f"unexpected {type(error).__name__}: {text} (--debug shows the traceback)"
    return text if str(path) in text else f"{path}: {text}"


if __name__ == "__main__":  # pragma: no cover
    main()
