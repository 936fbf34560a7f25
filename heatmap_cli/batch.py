"""One batch of the command: the images to do, each scored, written, counted once and reported.

:meth:`Batch.images_to_do` leaves out, with ``--skip-existing``, the images whose outputs are
complete for the current settings (``heatmap_cli.resume``) and says why it redoes the others.
:meth:`Batch.run` runs the loader over the rest and, per image, writes its outputs, counts it in
the :class:`~heatmap_cli.console.Tally` (done or failed, once), and only then reports it: a line
that cannot be written is lost, the image is not. One image's failure, whatever it is, is one
error line and the batch goes on; running out of memory says what to lower.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heatmap_cli.console import Console, Tally
from heatmap_cli.engine import GridEngine
from heatmap_cli.errors import HeatmapError
from heatmap_cli.io import ImageInput
from heatmap_cli.limits import (
    is_out_of_memory,
    out_of_memory,
    out_of_memory_anywhere,
    release_free_memory,
)
from heatmap_cli.loader import ImageResult, Outcome, score_images
from heatmap_cli.outputs import OutputOptions, run_settings
from heatmap_cli.ranking import describe_ranking
from heatmap_cli.resume import check_outputs
from heatmap_cli.thread_warnings import show_library_warnings_every_time
from heatmap_cli.writers import write_outputs

__all__ = ["Batch", "describe_failure"]


@dataclass(frozen=True)
class Batch:
    """One batch of the command: what scores and renders it, and where it says what happened.

    Attributes:
        engine: The converted model.
        rendering: What is rendered and how.
        out: The output folder.
        console: Where lines go.
        tally: Where images are counted.
        scales: Factors of ``--size``, one pass each (``(1.0,)``: a plain run).
        flip: Also average each scale's mirror image.
        skip_existing: Leave out the images whose outputs are complete for these settings.
        quiet: No progress bar, no per-image lines (errors are still said).
        debug: Let an image's exception escape, for its traceback.
    """

    engine: GridEngine
    rendering: OutputOptions
    out: Path
    console: Console
    tally: Tally
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    skip_existing: bool = False
    quiet: bool = False
    debug: bool = False

    def images_to_do(self, items: list[ImageInput]) -> list[ImageInput]:
        """The images to process: with ``skip_existing``, those not complete for these settings.

        Every image left out is counted as skipped; every image redone although it has a json
        is said, with the reason ("settings changed: stride 32 -> 16", "x.npz is missing"...).
        """
        if not self.skip_existing:
            return items
        settings = run_settings(self.engine, self.rendering, self.scales, self.flip)
        todo = []
        for item in items:
            verdict = check_outputs(self.out, item.stem, settings)
            if verdict.done:
                self.tally.skipped += 1
                continue
            if verdict.reason and not self.quiet:
                self.console.say(f"Redoing {item.path}: {verdict.reason}")
            todo.append(item)
        self.tally.todo -= self.tally.skipped
        return todo

    def run(self, items: list[ImageInput]) -> None:
        """Scores and writes every image, counting and reporting each once."""
        engine = self.engine
        show_library_warnings_every_time()  # each damaged photo gets its own warning line
        notes_shown = len(engine.notes)  # printed already; --compile may add one later
        progress = self.console.progress(len(items), shown=not self.quiet and len(items) > 1)
        outcomes = score_images(items, engine, scales=self.scales, flip=self.flip)
        try:
            with progress:
                for outcome in outcomes:
                    for note in engine.notes[notes_shown:]:
                        self.console.say(f"Note: {note}")
                    notes_shown = len(engine.notes)
                    self._finish(outcome)
                    progress.update(1)
        finally:
            outcomes.close()  # stops the loader threads now, not when garbage-collected

    def _finish(self, outcome: Outcome) -> None:
        """Writes one image's outputs, counts it, then reports it (a line can fail, not it)."""
        path = outcome.item.path
        try:
            result = outcome.unwrap()
            self._write(result)
        except Exception as error:  # one image's failure never stops the batch
            if self.debug:
                raise
            reason = describe_failure(path, error)
            self.tally.failures.append((path, reason))
            self.console.say(f"Error: {reason}")
            return
        self.tally.done += 1
        if not self.quiet:
            passes, rendering = result.grid.passes, self.rendering
            table = describe_ranking(
                passes, self.engine.categories, rendering.top_k, rendering.pooling
            )
            separator = "\n" if "\n" in table else " "
            self.console.result(f"{path}:{separator}{table}")
            for note in result.notes:
                self.console.say(f"Warning: {path}: {note}")

    def _write(self, result: ImageResult) -> None:
        """``write_outputs``, with running out of memory said as what to lower."""
        try:
            write_outputs(result, self.engine, self.rendering, self.out)
        except Exception as error:
            if is_out_of_memory(error):
                raise out_of_memory(
                    "render and write its outputs", "--max-overlay-side or --top-k"
                ) from error
            raise
        finally:
            release_free_memory()  # its pictures' memory, before the next image is drawn


def describe_failure(path: Path, error: Exception) -> str:
    """One line for a failed image: its path and the reason (what it was, if not foreseen)."""
    text = str(error)
    if is_out_of_memory(error):  # not said where: say what lowers memory anywhere
        text = str(out_of_memory_anywhere())
    elif not isinstance(error, HeatmapError):  # not a foreseen failure: say what it was
        text = f"unexpected {type(error).__name__}: {text} (--debug shows the traceback)"
    return text if str(path) in text else f"{path}: {text}"
