"""Where a run's time goes: wall seconds per stage, said on stderr with ``HEATMAP_PROFILE=1``.

The command marks its stages (:func:`timed`, :func:`record_start_up`): importing the heavy
libraries (from the command's start to its run, and where imported later), loading the model,
converting it, decoding and resizing each photo, the network, drawing the overlays, encoding and
writing the files. With the environment variable ``HEATMAP_PROFILE`` set to anything but ``0``,
it says their totals on stderr at the end of the run (:func:`profile_line`), one line; the
benchmark ``benchmarks/cases/end_to_end.py`` reads it. Decoding runs in loader threads and
encoding in writer threads, alongside the main thread, so the stages can add up to more than the
run's wall time. Without the variable, :func:`timed` costs one attribute read.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator

__all__ = [
    "PROFILE_ENV",
    "STAGES",
    "StageTimes",
    "profile_line",
    "record_start_up",
    "run_seconds",
    "seconds_since_start",
    "timed",
    "wall_since_start",
]

PROFILE_ENV = "HEATMAP_PROFILE"
"""The environment variable that turns the stage times on."""

STAGES = ("import", "load", "convert", "decode", "network", "render", "encode+write")
"""The stages, in the order of a run (and of :func:`profile_line`)."""


class StageTimes:
    """Wall seconds and calls per stage, added from any thread.

    Args:
        enabled: Record anything at all.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._seconds: dict[str, float] = {}
        self._calls: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        """Adds one call of ``stage`` that took ``seconds``."""
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds
            self._calls[stage] = self._calls.get(stage, 0) + 1

    def seconds(self) -> dict[str, float]:
        """``{stage: total seconds}``, in :data:`STAGES` order, then any other stage."""
        with self._lock:
            order = [s for s in STAGES if s in self._seconds]
            order += sorted(set(self._seconds) - set(STAGES))
            return {stage: self._seconds[stage] for stage in order}


_TIMES = StageTimes(os.environ.get(PROFILE_ENV, "0") not in ("", "0"))
_LOADED = time.perf_counter()


_INTERPRETER_START_UP_LIMIT = 5.0
"""Most seconds believed between the process's start and this module's loading (the
interpreter's own start-up and the command's first imports); more means the process started as
something else and ran ``exec`` later (``bash -c '...; heatmap ...'`` execs its last command)."""


def seconds_since_start() -> float:
    """Wall seconds since this process started: what the user has waited for so far.

    On Linux the process's start time (``/proc/self/stat``, in clock ticks since boot, against
    ``/proc/uptime``: a 10 ms resolution) includes the interpreter's own start-up; elsewhere,
    and where that start lies implausibly long before this module was loaded (a shell that
    became this process by ``exec``, its start time kept), the time is counted from when this
    module was loaded, with the command's first imports.
    """
    loaded = time.perf_counter() - _LOADED
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()  # after the command name
        with open("/proc/uptime", encoding="ascii") as uptime:
            since_boot = float(uptime.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return loaded
    return wall_since_start(since_boot - started, loaded)


def wall_since_start(process_age: float, since_loaded: float) -> float:
    """The seconds the summary gives: the process's age, unless that cannot be the command's.

    A process that started :data:`_INTERPRETER_START_UP_LIMIT` s or more before this module was
    loaded ran ``exec`` late: then the time since the module was loaded.

    Args:
        process_age: Seconds since the process was created (its fork).
        since_loaded: Seconds since this module was loaded.
    """
    if since_loaded <= process_age <= since_loaded + _INTERPRETER_START_UP_LIMIT:
        return process_age
    return since_loaded


def record_start_up() -> None:
    """Marks the command's run as started with its process, and times the start-up's imports.

    :func:`run_seconds` then counts from the process's start (:func:`seconds_since_start`), the
    interpreter's start-up and every import included: the time ``--method auto`` budgets
    against. When profiling is on, the time since this module was loaded is added to
    "import" (the command loads it with its first modules).
    """
    global _RUN_STARTED
    _RUN_STARTED = time.perf_counter() - seconds_since_start()
    if _TIMES.enabled:
        _TIMES.add("import", time.perf_counter() - _LOADED)


_RUN_STARTED: float | None = None


def run_seconds() -> float:
    """Wall seconds of the run so far.

    Counted from the command's process start once the command said so
    (:func:`record_start_up`); for a library user, from when this module was loaded.
    """
    return time.perf_counter() - (_LOADED if _RUN_STARTED is None else _RUN_STARTED)


@contextlib.contextmanager
def timed(stage: str) -> Iterator[None]:
    """Adds the wall time of the ``with`` block to ``stage`` (when profiling is on)."""
    if not _TIMES.enabled:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        _TIMES.add(stage, time.perf_counter() - start)


def profile_line() -> str | None:
    """``"stages (s): import 1.02, load 0.08, ..."``, or None when profiling is off."""
    if not _TIMES.enabled:
        return None
    parts = [f"{stage} {seconds:.3f}" for stage, seconds in _TIMES.seconds().items()]
    return f"stages (s): {', '.join(parts)}"
