"""The ``heatmap`` command: parse options, call the library, report.

Exit status: 0 when every image succeeded, 1 when some failed (after finishing all the others),
2 for usage errors (before any folder is created), 130 when interrupted by Ctrl-C at any moment,
a second Ctrl-C included (finished images are kept; ``--skip-existing`` resumes). The status
comes from the images alone: a closed, broken or full standard output or error loses lines, never
images (``heatmap_cli.cli.console``). Library errors become one line on stderr, and their base class
alone chooses the status (``errors.UsageError``: 2, any other ``HeatmapError``: 1); ``--debug``
shows tracebacks.

Nothing heavy is imported at module level, so ``heatmap --help`` answers without loading torch.
The run itself is :mod:`heatmap_cli.cli.command`; parameter types and callbacks are
:mod:`heatmap_cli.cli.params`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from heatmap_cli.cli.command import (
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    CommandOptions,
    exit_interrupted,
    run_command,
)
from heatmap_cli.cli.console import Console, Tally, reserve_standard_descriptors
from heatmap_cli.cli.params import (
    SETTING_FLAGS,
    FiniteFloatRange,
    LazyChoice,
    at_least_a_byte,
    list_models,
    parsed,
    positive,
)
from heatmap_cli.errors import HeatmapError, UsageError, command_line_names
from heatmap_cli.pipeline.limits import DEFAULT_MAX_ASPECT, DEFAULT_MAX_INPUT_PIXELS, MAX_TOP_K

DEFAULT_MODEL = "efficientnet_lite0"  # kept in sync with heatmap_cli.models.DEFAULT_MODEL (test)
DEFAULT_FIDELITY = 8  # kept in sync with heatmap_cli.pipeline.fidelity.DEFAULT_FIDELITY (test)


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
            exit_interrupted(Console.standard(), Tally())


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
    callback=positive,
    help="Without --class, render the image-level ranking's first K classes (as printed; "
    f"at most {MAX_TOP_K}).",
)
@click.option(
    "-m",
    "--model",
    default=DEFAULT_MODEL,
    show_default=True,
    help="Model: the offline default, a torchvision name, timm/NAME, a model file (torch.export "
    ".pt2 or TorchScript), a WSInfer model folder (config.json + TorchScript), or your own code "
    "as path/to/file.py:callable or package.module:callable (this imports and runs that code).",
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
    type=LazyChoice("heatmap_cli.pipeline.settings", "ACTIVATIONS"),
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
    callback=list_models,
    help="List usable models and exit.",
)
@click.option(
    "-s",
    "--size",
    metavar="PIXELS|native",
    default="384",
    callback=parsed("heatmap_cli.pipeline.settings", "parse_size"),
    show_default=True,
    help="Shorter side of the resized image, in pixels (snapped to the grid), at least the "
    "window; 'native': each photo's own. Larger sizes find smaller objects (see above).",
)
@click.option(
    "--stride",
    type=int,
    callback=positive,
    help="Output stride in resized pixels; must divide the native stride (default).",
)
@click.option(
    "--method",
    type=LazyChoice("heatmap_cli.pipeline.settings", "method_choices"),
    metavar="METHOD",
    default="auto",
    show_default=True,
    help="auto: the most faithful map the time allows: exact windows (the classifier on each "
    "crop) within a quarter of the run's other time: every cell if that fits, else where the "
    "dense answer is in doubt, else none. refine: dense, then exact where in doubt (at most 25% "
    "of the cells). crops: every cell exact. dense (native stride), dilate, stitch (finer "
    "strides): the converted network alone. The json's method and method_reason say which ran "
    "and why.",
)
@click.option(
    "--fidelity",
    type=click.IntRange(min=0),
    default=DEFAULT_FIDELITY,
    show_default=True,
    metavar="N",
    help="Check each map against the classifier on its windows (exact) at the rendered "
    "classes' peaks and N more cells; the json's fidelity says how far it is (0: no check).",
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
    type=FiniteFloatRange(0, 1),
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
    type=LazyChoice("heatmap_cli.render.scale", "SCALES"),
    metavar="SCALE",
    default="shared",
    show_default=True,
    help="Colour range: shared (one for the classes drawn for a photo), absolute (0..1, the "
    "same for every photo), per-class (each class to its own peak). Diverging --cmap: "
    "centred on 0.",
)
@click.option(
    "--vmin",
    type=FiniteFloatRange(),
    help="Fixed score at the bottom of the colour range.",
)
@click.option(
    "--vmax",
    type=FiniteFloatRange(),
    help="Fixed score at the top (the same across a batch).",
)
@click.option(
    "--label",
    type=LazyChoice("heatmap_cli.pipeline.settings", "LABELS"),
    metavar="auto|corner|none",
    default="auto",
    show_default=True,
    help="Label in the corner hiding the least of the map, top-left, or none.",
)
@click.option(
    "--outputs",
    default="png,npz,json",
    show_default=True,
    callback=parsed("heatmap_cli.pipeline.settings", "parse_outputs"),
    help="Which files to write per photo: any of png (the overlays and sheet), npz, json "
    "(always written: it marks the photo done).",
)
@click.option(
    "--format",
    "image_format",
    type=LazyChoice("heatmap_cli.io", "IMAGE_FORMATS"),
    metavar="png|jpg|webp",
    default="png",
    show_default=True,
    help="Format of the overlays and sheet (jpg and webp: lossy, 3-8x smaller).",
)
@click.option(
    "--npz-classes",
    default="all",
    show_default=True,
    callback=parsed("heatmap_cli.pipeline.settings", "parse_npz_classes"),
    help="Classes kept in the npz: all, rendered, or topK (e.g. top20, by the ranking).",
)
@click.option(
    "--npz-dtype",
    type=LazyChoice("heatmap_cli.pipeline.settings", "NPZ_DTYPES"),
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
    callback=positive,
    help="Images of equal resized size per forward pass.",
)
@click.option(
    "--max-pixels",
    type=int,
    default=None,
    callback=positive,
    help="Raise the decompression-bomb limit (decoded pixels; default Pillow's ~89M).",
)
@click.option(
    "--max-overlay-side",
    default=4096,
    show_default=True,
    callback=positive,
    help="Longest side of written overlays (huge images are shown smaller).",
)
@click.option(
    "--tile",
    type=int,
    callback=positive,
    metavar="PIXELS",
    help="Evaluate in tiles of at most this side (exact, bounded memory). Default: automatic.",
)
@click.option(
    "--memory-budget",
    type=FiniteFloatRange(min=0, min_open=True),
    callback=at_least_a_byte,
    metavar="GIB",
    help="Activation memory of one pass before tiling starts "
    "(default: 4 GiB or half the free RAM; 70% of free CUDA memory).",
)
@click.option(
    "--max-input-pixels",
    default=DEFAULT_MAX_INPUT_PIXELS,
    show_default=True,
    callback=positive,
    metavar="N",
    help="Largest network input of one pass (height x width after resizing); an image that "
    "needs more is refused with one line.",
)
@click.option(
    "--max-aspect",
    type=FiniteFloatRange(min=1),
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
    type=LazyChoice("heatmap_cli.pipeline.settings", "POOLINGS"),
    metavar="POOLING",
    default="max",
    show_default=True,
    help="Image-level ranking: spatial max or mean of each class's probability.",
)
@click.option(
    "--mpp",
    type=FiniteFloatRange(min=0, min_open=True),
    metavar="UM",
    help="Slides: microns per pixel the model was trained at; each slide is read at the "
    "pyramid level at or finer than that and resampled (default: the model's own, else the "
    "slide's level-0 pixels).",
)
@click.option(
    "--slide-mpp",
    type=FiniteFloatRange(min=0, min_open=True),
    metavar="UM",
    help="Slides: microns per level-0 pixel, for files whose metadata has none (overrides it).",
)
@click.option(
    "--tissue",
    default="auto",
    show_default=True,
    metavar="auto|off|FILE",
    callback=parsed("heatmap_cli.pipeline.slide_settings", "parse_tissue"),
    help="Slides: score only tissue (auto: Otsu on the thumbnail's saturation), every cell "
    "(off), or where a mask image of yours is non-zero.",
)
@click.option(
    "--slide-context",
    default="exact",
    show_default=True,
    metavar="exact|PIXELS",
    callback=parsed("heatmap_cli.pipeline.slide_settings", "parse_context"),
    help="Slides: neighbours each tile carries around the windows it keeps. exact: each "
    "cell's whole receptive field (the grid of one pass over the slide); a few pixels (e.g. "
    "64): cells at tile edges see zeros beyond, and skipping the background pays more.",
)
@click.option(
    "--grid-format",
    type=click.Choice(["auto", "npz", "zarr"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="Slides: the grid file. auto: a .npz, or a chunked .zarr store when the grid would "
    "take more than half the memory budget (zarr comes with the slides extra).",
)
@click.option("--skip-existing", is_flag=True, help="Skip images whose outputs are complete.")
@click.option(
    "--report",
    is_flag=True,
    help="Also write OUT/index.html: a gallery and viewer of every image in OUT (offline).",
)
@click.option(
    "--ray",
    is_flag=True,
    help="Run on a Ray cluster (RAY_ADDRESS or --ray-address, else a local Ray): a pool of "
    "actors, one model each; inputs and --out on a file system every worker reaches.",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    help="The Ray cluster for --ray (default: RAY_ADDRESS, else a new local Ray).",
)
@click.option(
    "--workers",
    type=int,
    callback=positive,
    metavar="N",
    help="Actors in the --ray pool (default: one per GPU with --device cuda, else one per CPU "
    "but one).",
)
@click.option(
    "-q",
    "--quiet",
    count=True,
    help="No progress bar or per-image result lines (notes, warnings and the summary stay); "
    "-qq: errors only.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(**options: Any) -> None:
    """The ``heatmap`` command (its help is ``_HELP``)."""
    command = CommandOptions(**options)
    console, tally = Console.standard(), Tally()
    try:
        with command_line_names(SETTING_FLAGS):
            try:
                run_command(command, console, tally)
            except click.ClickException:
                raise
            except UsageError as error:
                _fail(error, EXIT_USAGE, command.debug, console)
            except (HeatmapError, OSError) as error:
                _fail(error, EXIT_SOME_FAILED, command.debug, console)
            except MemoryError as error:  # outside any one image: loading the model...
                from heatmap_cli.pipeline.limits import out_of_memory_anywhere

                _fail(out_of_memory_anywhere(), EXIT_SOME_FAILED, command.debug, console, error)
    except KeyboardInterrupt:  # at any moment, while handling another one too
        if command.debug:
            raise
        exit_interrupted(console, tally)


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


def run(args: Sequence[str] | None = None) -> NoReturn:
    """The ``heatmap`` console script: the command, then an exit without the interpreter's teardown.

    Unloading torch's modules at interpreter exit takes about 0.5 s (a fifth of a one-photo run).
    By the time the command returns, every output is complete and in place (staged files moved,
    writer threads joined), so the standard streams are flushed and the process ends at once
    with the command's status. Where Ray was started, its exit handlers must run (they stop the
    local cluster), so the ordinary exit is kept.

    Args:
        args: The command's arguments; None reads ``sys.argv``.
    """
    try:
        main(args=args, prog_name="heatmap")
    except SystemExit as done:
        status = done.code
    else:  # pragma: no cover  (click's standalone mode always exits)
        status = 0
    if "ray" in sys.modules:
        raise SystemExit(status)
    if status is not None and not isinstance(status, int):
        with contextlib.suppress(Exception):
            print(status, file=sys.stderr)  # as Python's own exit does with a message
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a reader gone away: its lines are lost, not the run
            stream.flush()
    os._exit(status or 0)


if __name__ == "__main__":  # pragma: no cover
    run()
