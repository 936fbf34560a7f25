"""The keeper of a local Ray started by the command: every Ray process ends with the command.

``ray.init()`` without an address starts a local cluster as children of the command: the GCS
and the raylet (which Ray ties to the command with ``PR_SET_PDEATHSIG``), and, started by the
raylet, the actors' worker processes and two agents. When the command is killed (SIGKILL, the
OOM killer), the raylet dies with it, but its children are handed to ``init``: an actor went on
writing images for a second or more, and Ray's DashboardAgent and RuntimeEnvAgent (about 80 MB
each) stayed for good, deaf to SIGTERM.

The keeper is a small process started before ``ray.init`` (Linux: it reads ``/proc``), in its own
session so that neither Ctrl-C nor a closed terminal reaches it. It records, four times a
second, every descendant of the command (pid and start time, so a reused pid is never taken
for one of them), and waits on a pipe whose only writer is the command. The pipe ends when the
command closes it after ``ray.shutdown()``, or when the command dies in any way (the kernel
closes its descriptors, SIGKILL included); the keeper then kills with SIGKILL every recorded
process still alive and exits. Nothing of the local cluster outlives the command, and no actor
writes after it.

A cluster the command only connects to (``--ray-address``, ``RAY_ADDRESS``) is not the
command's to end: Ray itself kills a dead driver's actors there (they belong to its job), once
the cluster notices the driver is gone; an image being written at that moment is still written
whole or not at all (``heatmap_cli.io.staged_files``).

Run as a script (``python ray_keeper.py PID``, by the command only: any PID but its parent's is
refused) it imports nothing but the standard library.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["SCAN_INTERVAL_S", "Keeper", "descendants", "exit_with", "start_keeper"]

SCAN_INTERVAL_S = 0.25
"""How often the keeper records the command's descendants."""

_STOP_WAIT_S = 10.0
_PROC = Path("/proc")


class Keeper:
    """A running keeper (:func:`start_keeper`): :meth:`stop` ends it and what it recorded."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        """The keeper's process id."""
        return self._process.pid

    def stop(self) -> None:
        """Closes the pipe: the keeper kills what is left of the local Ray, then exits.

        Waits for it (a few milliseconds), so that when the command returns no Ray process of
        its own is left.
        """
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=_STOP_WAIT_S)


def start_keeper() -> Keeper | None:
    """Starts a keeper for this process; None where it cannot work (no ``/proc``).

    Returns:
        The keeper; call :meth:`Keeper.stop` after ``ray.shutdown()``.
    """
    if not (sys.platform.startswith("linux") and (_PROC / str(os.getpid()) / "stat").exists()):
        return None
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no Ctrl-C or hang-up of the command's terminal reaches it
        )
    except OSError:
        return None
    return Keeper(process)


def exit_with(pid: int) -> bool:
    """Ends this process the moment process ``pid`` (the command) ends, from a watching thread.

    The keeper kills the local Ray's processes once the command is gone, but it wakes a moment
    later, and a loaded machine may delay it further; an actor that watches the command itself
    stops at once (``os.pidfd_open``: the kernel wakes the thread when ``pid`` exits), so it
    starts no file after the command died.

    Args:
        pid: The command's process id, on this machine.

    Returns:
        Whether it watches (False where ``pidfd_open`` is missing: not Linux 5.3+).
    """
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already
        os._exit(1)
    except (AttributeError, OSError):
        return False

    def watch() -> None:
        select.select([handle], [], [])
        os._exit(1)  # at once, from this thread: no cleanup that could write

    threading.Thread(target=watch, name="heatmap-command-watch", daemon=True).start()
    return True


def descendants(root: int) -> dict[int, int]:
    """Every process below ``root`` (not ``root`` itself): pid -> its start time (clock ticks).

    Walks down from ``root`` through ``/proc/PID/task/TID/children`` (a fraction of a
    millisecond for a local Ray's processes); where the kernel has no such files, every
    process's ``stat`` is read instead (tens of milliseconds on a busy machine).

    Args:
        root: A process id.

    Returns:
        The descendants found in ``/proc`` now; a process that ends while it is read is left
        out.
    """
    if not (_PROC / "self" / "task" / str(threading.get_native_id()) / "children").exists():
        return _descendants_by_scan(root)
    found: dict[int, int] = {}
    stack = [root]
    while stack:
        for child in _children(stack.pop()):
            started = _parent_and_start(child)
            if child not in found and started is not None:
                found[child] = started[1]
                stack.append(child)
    return found


def _children(pid: int) -> list[int]:
    """The children of every thread of a process (none if it is gone)."""
    try:
        threads = os.listdir(_PROC / str(pid) / "task")
    except OSError:
        return []
    children = []
    for thread in threads:
        try:
            listed = (_PROC / str(pid) / "task" / thread / "children").read_bytes()
            children += map(int, listed.split())
        except (OSError, ValueError):
            continue
    return children


def _descendants_by_scan(root: int) -> dict[int, int]:
    """:func:`descendants` from the parent of every process in ``/proc``."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        parent_and_start = _parent_and_start(int(entry.name))
        if parent_and_start is not None:
            parent, start = parent_and_start
            children.setdefault(parent, []).append(int(entry.name))
            started[int(entry.name)] = start
    found: dict[int, int] = {}
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = started[pid]
            stack.extend(children.get(pid, ()))
    return found


def _parent_and_start(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a process from ``/proc/PID/stat``; None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[19])  # fields 4 (ppid) and 22 (starttime)
    except (IndexError, ValueError):
        return None


def _kill_recorded(recorded: dict[int, int]) -> None:
    """SIGKILL to each recorded process that still runs with its recorded start time."""
    for pid, start in recorded.items():
        now = _parent_and_start(pid)
        if now is not None and now[1] == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def keep(command: int) -> None:
    """The keeper's life: record ``command``'s descendants until its pipe ends, then kill them.

    It acts only for the process that started it: run by hand, or for any other process
    (``init`` would make every process a descendant), it returns at once and kills nothing.

    Args:
        command: The command's process id: the keeper's parent.
    """
    if command <= 1 or command != os.getppid():
        return
    for name in ("SIGINT", "SIGHUP", "SIGPIPE"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    recorded: dict[int, int] = {}
    while True:
        recorded.update(descendants(command))
        recorded.pop(os.getpid(), None)
        readable, _, _ = select.select([sys.stdin.buffer], [], [], SCAN_INTERVAL_S)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            break  # end of the pipe: the command closed it, or died
    if os.getppid() == command:  # closed by the command, alive: its latest descendants too
        recorded.update(descendants(command))
        recorded.pop(os.getpid(), None)
    _kill_recorded(recorded)


if __name__ == "__main__":
    keep(int(sys.argv[1]))
