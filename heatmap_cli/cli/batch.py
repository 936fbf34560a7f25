"""One batch of the command: the images to do, each scored, written, counted once and reported.

:class:`ImageJob` is the per-image path that every run goes through, plain or on Ray workers
(``heatmap_cli.cli.ray_runner``): :meth:`ImageJob.sort_out` leaves out, with ``--skip-existing``,
the images whose outputs are complete for the current settings (``heatmap_cli.cli.resume``);
:meth:`ImageJob.process` reads, scores, renders and writes the others and yields what became of
each (:class:`Processed`: its manifest row and its lines). One image's failure, whatever it is,
is its own row and the batch goes on; running out of memory says what to lower.

:class:`Batch` is the command's side: it counts each image in the
:class:`~heatmap_cli.cli.console.Tally` (done, failed or skipped, once), records its manifest row,
and only then reports it: a line that cannot be written is lost, the image is not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heatmap_cli.cli.console import QUIET_ERRORS_ONLY, Console, Tally
from heatmap_cli.cli.manifest import Manifest, ManifestRow
from heatmap_cli.cli.records import run_settings
from heatmap_cli.cli.resume import check_outputs
from heatmap_cli.cli.writers import write_outputs
from heatmap_cli.errors import HeatmapError
from heatmap_cli.io import ImageInput
from heatmap_cli.pipeline.engine import GridEngine
from heatmap_cli.pipeline.fidelity import Fidelity, image_fidelity
from heatmap_cli.pipeline.limits import (
    is_out_of_memory,
    out_of_memory,
    out_of_memory_anywhere,
    release_free_memory,
)
from heatmap_cli.pipeline.ranking import describe_ranking
from heatmap_cli.pipeline.read_ahead import DecodedAhead
from heatmap_cli.pipeline.rendering import (
    ImageSummary,
    OutputOptions,
    RenderedClass,
    summarize_image,
    with_exact_peaks,
)
from heatmap_cli.pipeline.scoring import (
    DEFAULT_READING,
    ImageResult,
    Outcome,
    PhotoReading,
    score_images,
)
from heatmap_cli.pipeline.slide_settings import DEFAULT_SLIDES, SlideSettings
from heatmap_cli.pipeline.thread_warnings import show_library_warnings_every_time

TileProgress = Callable[[ImageInput, int, int], None]
"""Called as ``progress(slide, tiles done, tiles in all)`` while a slide is scored."""

__all__ = ["Batch", "ImageJob", "Processed", "describe_failure"]


@dataclass(frozen=True)
class Processed:
    """What became of one image: its manifest row, and what the command says about it.

    Attributes:
        row: Its manifest row (path, stem, status, error, ranking, files).
        table: Its ranking as stdout shows it (done images); None otherwise.
        warnings: Warnings about the image (read, upscaled...), one line each.
        notes: Notes of the engine that appeared while it was scored (``--compile`` failing).
        redo: Why an image that had a json was made again (``--skip-existing``); None if not.
        remarks: Notes about the image's map (its fidelity check), one line each.
    """

    row: ManifestRow
    table: str | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    redo: str | None = None
    remarks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """A json form, to cross process boundaries (``heatmap_cli.cli.ray_runner``)."""
        return {**dataclasses.asdict(self), "row": self.row.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Processed:
        """The inverse of :meth:`to_json`."""
        return cls(
            row=ManifestRow.from_json(data["row"]),  # type: ignore[arg-type]
            table=data.get("table"),  # type: ignore[arg-type]
            warnings=tuple(data.get("warnings") or ()),  # type: ignore[arg-type]
            notes=tuple(data.get("notes") or ()),  # type: ignore[arg-type]
            redo=data.get("redo"),  # type: ignore[arg-type]
            remarks=tuple(data.get("remarks") or ()),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ImageJob:
    """What every image of a run is scored, rendered and written with.

    Attributes:
        engine: The converted model.
        rendering: What is rendered and how.
        out: The output folder.
        scales: Factors of ``--size``, one pass each (``(1.0,)``: a plain run).
        flip: Also average each scale's mirror image.
        reading: The decoding limit and the overlays' largest side.
        slides: How whole-slide inputs are read (``heatmap_cli.cli.slides``).
        ahead: Photos decoded ahead, while the model loaded (``pipeline.read_ahead``).
    """

    engine: GridEngine
    rendering: OutputOptions
    out: Path
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    reading: PhotoReading = DEFAULT_READING
    slides: SlideSettings = DEFAULT_SLIDES
    ahead: Mapping[Path, Future[DecodedAhead]] = dataclasses.field(default_factory=dict)

    def is_slide(self, item: ImageInput) -> bool:
        """Whether an input is read as a slide (by region) rather than as a photo."""
        from heatmap_cli.io.slides import is_slide

        return is_slide(item.path, self.reading.max_pixels)

    def settings_for(self, item: ImageInput) -> dict[str, object]:
        """The json ``settings`` an input's outputs are made with (a slide's has its own)."""
        settings = run_settings(self.engine, self.rendering, self.scales, self.flip, self.reading)
        if not self.is_slide(item):
            return settings
        from heatmap_cli.cli.slides import slide_settings

        plain = run_settings(self.engine, self.rendering, reading=self.reading)
        return {**plain, **slide_settings(self.slides)}

    def sort_out(
        self, items: Iterable[ImageInput]
    ) -> tuple[list[ImageInput], list[Processed], dict[ImageInput, str]]:
        """Splits images into those to do and those complete for these settings.

        Returns:
            The images to do; a ``"skipped"`` :class:`Processed` for every complete one (its
            ranking and files from its json); why each image to do that has a json is redone
            ("settings changed: stride 32 -> 16", "x.npz is missing"...).
        """
        todo, skipped, redone = [], [], {}
        for item in items:
            verdict = check_outputs(self.out, item.stem, self.settings_for(item))
            if verdict.done and verdict.record is not None:
                row = ManifestRow.skipped(item.path, item.stem, verdict.record)
                skipped.append(Processed(row))
                continue
            if verdict.reason:
                redone[item] = verdict.reason
            todo.append(item)
        return todo, skipped, redone

    def process(
        self,
        items: Iterable[ImageInput],
        *,
        debug: bool = False,
        progress: TileProgress | None = None,
    ) -> Iterator[Processed]:
        """Reads, scores, renders and writes every image; yields what became of each, once.

        Photos go through the batched loader; slides are scored one at a time, tile by tile
        (``heatmap_cli.cli.slides``), after the photos.

        Args:
            items: The images.
            debug: Let an image's exception escape (for its traceback) instead of failing it.
            progress: Told of each slide's tiles as they are scored.

        Yields:
            Every image's :class:`Processed`, in the order the loader finishes them.
        """
        photos, slides = [], []
        for item in items:
            (slides if self.is_slide(item) else photos).append(item)
        if photos:
            yield from self._photos(photos, debug)
        for slide in slides:
            yield self._slide(slide, debug, progress)

    def _slide(self, item: ImageInput, debug: bool, progress: TileProgress | None) -> Processed:
        """One slide scored and written; its failure is its own row."""
        from heatmap_cli.cli.slides import write_slide

        def tiles(done: int, total: int) -> None:
            if progress is not None:
                progress(item, done, total)

        try:
            outcome = write_slide(
                item, self.engine, self.rendering, self.out, self.reading, self.slides, tiles
            )
        except Exception as error:  # one slide's failure never stops the batch
            if debug:
                raise
            return Processed(
                ManifestRow.failed(item.path, item.stem, describe_failure(item.path, error))
            )
        finally:
            release_free_memory()
        return Processed(outcome.row, table=outcome.table, warnings=outcome.notes)

    def _photos(self, items: Iterable[ImageInput], debug: bool) -> Iterator[Processed]:
        engine = self.engine
        show_library_warnings_every_time()  # each damaged photo gets its own warning line
        notes_shown = len(engine.notes)  # said already; --compile may add one later
        outcomes = score_images(
            items,
            engine,
            scales=self.scales,
            flip=self.flip,
            reading=self.reading,
            ahead=self.ahead,
            keep_inputs=self.rendering.fidelity > 0,
        )
        try:
            for outcome in outcomes:
                processed = self._finish(outcome, debug)
                notes = tuple(engine.notes[notes_shown:])
                notes_shown = len(engine.notes)
                yield dataclasses.replace(processed, notes=notes) if notes else processed
        finally:
            outcomes.close()  # stops the loader threads now, not when garbage-collected

    def run(
        self,
        items: Sequence[ImageInput],
        *,
        skip_existing: bool = False,
        debug: bool = False,
        progress: TileProgress | None = None,
    ) -> Iterator[Processed]:
        """:meth:`sort_out` (with ``skip_existing``), then :meth:`process`: every image once."""
        todo, skipped, redone = self.sort_out(items) if skip_existing else (items, [], {})
        yield from skipped
        reasons = {str(item.stem): reason for item, reason in redone.items()}
        for processed in self.process(todo, debug=debug, progress=progress):
            reason = reasons.get(processed.row.key)
            yield dataclasses.replace(processed, redo=reason) if reason else processed

    def _finish(self, outcome: Outcome, debug: bool) -> Processed:
        """Writes one image's outputs; its row says done, or failed and why."""
        path, stem = outcome.item
        rendering, categories = self.rendering, self.engine.categories
        try:
            result = outcome.unwrap()
            summary = summarize_image(result, categories, rendering)  # once, for every output
            fidelity, remarks = self._fidelity(result, summary.classes, debug)
            exact = with_exact_peaks(summary.classes, fidelity, rendering)
            summary = dataclasses.replace(summary, classes=exact)
            written = self._write(result, summary, fidelity)
        except Exception as error:  # one image's failure never stops the batch
            if debug:
                raise
            return Processed(ManifestRow.failed(path, stem, describe_failure(path, error)))
        ranking = [dataclasses.asdict(r) for r in summary.top_k]
        files = [written_path.relative_to(self.out) for written_path in written]
        table = describe_ranking(
            result.grid.passes,
            categories,
            rendering.top_k,
            rendering.pooling,
            ranking=summary.ranking,
        )
        row = ManifestRow.finished(path, stem, "done", ranking, files)
        return Processed(row, table=table, warnings=result.notes, remarks=remarks)

    def _fidelity(
        self, result: ImageResult, classes: Sequence[RenderedClass], debug: bool
    ) -> tuple[Fidelity | None, tuple[str, ...]]:
        """The image's fidelity check and its note; a check that fails costs only itself."""
        peaks = [c.cell for c in classes]
        try:
            fidelity = image_fidelity(result, self.engine, peaks, self.rendering.fidelity)
        except Exception as error:  # the map is good work: it is written without the check
            if debug:
                raise
            reason = describe_failure(result.item.path, error)
            return None, (f"the fidelity check failed, the map is written without it: {reason}",)
        note = None if fidelity is None else fidelity.note()
        return fidelity, (note,) if note else ()

    def _write(
        self, result: ImageResult, summary: ImageSummary, fidelity: Fidelity | None
    ) -> list[Path]:
        """``write_outputs``, with running out of memory said as what to lower."""
        try:
            return write_outputs(
                result, self.engine, self.rendering, self.out, self.reading, summary, fidelity
            )
        except Exception as error:
            if is_out_of_memory(error):
                raise out_of_memory(
                    "render and write its outputs", "max_display_side", "top_k"
                ) from error
            raise
        finally:
            release_free_memory()  # its pictures' memory, before the next image is drawn


@dataclass(frozen=True)
class Batch:
    """One batch of the command: what does its images, and where it says what happened.

    Attributes:
        job: What scores, renders and writes every image.
        console: Where lines go.
        tally: Where images are counted.
        manifest: Where each image's row goes.
        skip_existing: Leave out the images whose outputs are complete for these settings.
        quiet: 0 says everything; 1 (``-q``) no progress bar and no per-image result lines
            (notes, warnings, redo reasons and errors are still said); 2 (``-qq``) errors only.
        debug: Let an image's exception escape, for its traceback.
    """

    job: ImageJob
    console: Console
    tally: Tally
    manifest: Manifest
    skip_existing: bool = False
    quiet: int = 0
    debug: bool = False

    def images_to_do(self, items: list[ImageInput]) -> list[ImageInput]:
        """The images to process: with ``skip_existing``, those not complete for these settings.

        Every image left out is counted as skipped; every image redone although it has a json
        is said, with the reason ("settings changed: stride 32 -> 16", "x.npz is missing"...).
        """
        if not self.skip_existing:
            return items
        todo, skipped, redone = self.job.sort_out(items)
        for processed in skipped:
            self.report(processed)
        if self.quiet < QUIET_ERRORS_ONLY:
            for item, reason in redone.items():
                self.console.say(f"Redoing {item.path}: {reason}")
        return todo

    def run(self, items: list[ImageInput]) -> None:
        """Scores and writes every image, counting and reporting each once.

        A slide's tiles get a bar of their own, with the rate and the time left.
        """
        tiles = _TileBar(self.console, shown=not self.quiet)
        try:
            processed = self.job.process(items, debug=self.debug, progress=tiles.update)
            self.report_all(processed, len(items))
        finally:
            tiles.close()

    def report_all(self, processed: Iterable[Processed], total: int) -> None:
        """Reports images as they finish, under a progress bar of ``total`` images."""
        progress = self.console.progress(total, shown=self.quiet == 0 and total > 1)
        with progress:
            for one in processed:
                self.report(one)
                progress.update(1)

    def report(self, processed: Processed) -> None:
        """Counts one image and records its row, then says it (a line can fail, not it)."""
        row, say = processed.row, self.console.say
        path = Path(row.path)
        self.manifest.add(row)
        if row.status == "skipped":
            self.tally.skipped += 1
            self.tally.todo -= 1
            return
        if row.status == "failed":
            self.tally.failures.append((path, row.error or "failed"))
        else:
            self.tally.done += 1
        said = self.quiet < QUIET_ERRORS_ONLY  # notes, warnings and redo reasons
        for note in processed.notes if said else ():
            say(f"Note: {note}")
        for remark in processed.remarks if said else ():
            say(f"Note: {path}: {remark}")
        if processed.redo and said:
            say(f"Redoing {path}: {processed.redo}")
        if row.status == "failed":
            say(f"Error: {row.error}")
            return
        if not self.quiet:
            table = processed.table or ""
            separator = "\n" if "\n" in table else " "
            self.console.result(f"{path}:{separator}{table}")
        for warning in processed.warnings if said else ():
            say(f"Warning: {path}: {warning}")


class _TileBar:
    """A progress bar of one slide's tiles at a time (tiles scored before a resume count)."""

    def __init__(self, console: Console, *, shown: bool) -> None:
        self._console, self._shown = console, shown
        self._slide: ImageInput | None = None
        self._bar: Any = None
        self._done = 0

    def update(self, slide: ImageInput, done: int, total: int) -> None:
        """Moves the bar to ``done`` of ``total`` tiles of ``slide``."""
        if not self._shown:
            return
        if slide != self._slide:
            self.close()  # the previous slide's, if it stopped early
            from tqdm import tqdm

            self._slide, self._done = slide, done
            self._bar = tqdm(
                total=total,
                initial=done,
                unit="tile",
                desc=slide.path.name,
                file=self._console.err,
                leave=False,
                dynamic_ncols=True,
            )
        else:
            self._bar.update(done - self._done)
            self._done = done
        if done >= total:  # gone before the slide's line is said
            self._bar.close()

    def close(self) -> None:
        """Removes the bar."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._slide = None, None


def describe_failure(path: Path, error: Exception) -> str:
    """One line for a failed image: its path and the reason (what it was, if not foreseen)."""
    text = str(error)
    if is_out_of_memory(error):  # not said where: say what lowers memory anywhere
        text = str(out_of_memory_anywhere())
    elif not isinstance(error, HeatmapError):  # not a foreseen failure: say what it was
        text = f"unexpected {type(error).__name__}: {text} (--debug shows the traceback)"
    return text if str(path) in text else f"{path}: {text}"
