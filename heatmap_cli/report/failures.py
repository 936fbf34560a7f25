"""The failures a report lists: this run's, and earlier runs' that no later run redid.

They persist in ``index_files/failures.json``, so a resumed run (``--skip-existing``) still
lists an image that failed before and was not retried, and stops listing it once it succeeds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from heatmap_cli.io import loads_strict, read_regular_file, write_json

__all__ = ["Failure", "load_failures", "merge_failures", "save_failures"]

_MAX_BYTES = 1 << 32  # the report's own file: a line per failed image


@dataclass(frozen=True)
class Failure:
    """One input that produced no outputs.

    Attributes:
        image: The input as the run named it.
        reason: One line saying why, without the path.
        time: When it failed, seconds since the epoch.
    """

    image: str
    reason: str
    time: float

    @classmethod
    def now(cls, image: str | os.PathLike[str], reason: str) -> Failure:
        """A failure of this moment; a ``"<image>: "`` prefix of ``reason`` is dropped."""
        name = str(image)
        return cls(name, reason.removeprefix(f"{name}: ").strip(), time.time())


def merge_failures(
    previous: Iterable[Failure],
    current: Iterable[Failure],
    finished: Mapping[str, float],
) -> list[Failure]:
    """This run's failures and the earlier ones that are still unresolved.

    Args:
        previous: Failures persisted by earlier runs.
        current: This run's failures.
        finished: Finished images: the image path as recorded in its json -> the json's
            modification time (seconds since the epoch).

    Returns:
        ``current`` and every earlier failure whose image failed neither in this run nor was
        finished after it failed, sorted by image.
    """
    done = {_normalized(image): stamp for image, stamp in finished.items()}
    merged = {_normalized(f.image): f for f in previous}
    merged = {
        image: failure
        for image, failure in merged.items()
        if not (image in done and done[image] >= failure.time)
    }
    merged.update({_normalized(f.image): f for f in current})
    return sorted(merged.values(), key=lambda failure: failure.image)


def load_failures(path: Path) -> list[Failure]:
    """The failures saved at ``path``; none if it is missing or unreadable."""
    try:
        rows = loads_strict(read_regular_file(Path(path), max_bytes=_MAX_BYTES))
        return [Failure(str(r["image"]), str(r["reason"]), float(r["time"])) for r in rows]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def save_failures(path: Path, failures: Iterable[Failure]) -> None:
    """Saves failures atomically at ``path`` (a json list of objects)."""
    write_json(path, [asdict(failure) for failure in failures])


def _normalized(image: str) -> str:
    return os.path.normpath(image)
