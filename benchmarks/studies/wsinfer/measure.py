"""A command's CPU time and memory, its whole process tree included.

CPU time is what ``os.wait4`` reports for the command: its own user + system time and that of
every descendant it waited for (DataLoader workers, Ray actors' parents...), so it does not depend
on how busy the machine is the way wall time does. Memory is read three ways: ``ru_maxrss`` (the
largest single process; Linux carries a parent's high-water mark over fork and exec, so the
caller must stay small: run.py imports neither torch nor numpy), the largest ``VmHWM`` of any
process of the tree, and the sum of the resident sizes of the command and all its live
descendants, sampled from ``/proc`` every 0.2 s (what the machine must hold at once).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

SAMPLE_SECONDS = 0.2


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process now listed in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _memory_kib(pid: int) -> tuple[int, int]:
    """``VmRSS`` and ``VmHWM`` (its peak) of a process in KiB; zeros once it is gone."""
    values = {"VmRSS:": 0, "VmHWM:": 0}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:  # "VmRSS:\t  123456 kB"
                key, _, rest = line.partition(":")
                if key + ":" in values:
                    values[key + ":"] = int(rest.split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return values["VmRSS:"], values["VmHWM:"]


def tree_memory_kib(root: int) -> tuple[int, int]:
    """Resident KiB of ``root`` and all its descendants now, and the largest peak among them."""
    tree, total, largest, stack = _children(), 0, 0, [root]
    while stack:
        pid = stack.pop()
        rss, hwm = _memory_kib(pid)
        total, largest = total + rss, max(largest, hwm)
        stack.extend(tree.get(pid, ()))
    return total, largest


def run_measured(
    command: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> dict[str, float | int | str]:
    """Runs ``command`` to its end, its output to ``log``; returns times and memory.

    Returns:
        ``exit``, ``wall_s``, ``cpu_s`` (user + system, descendants included), ``user_s``,
        ``sys_s``, ``max_rss_mib`` (largest process, from wait4), ``peak_process_mib`` (largest
        VmHWM sampled), ``peak_tree_rss_mib`` (the sampled sum's peak).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    peak = [0, 0]
    done = threading.Event()
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(map(str, command)) + "\n")
        out.flush()
        started = time.perf_counter()
        process = subprocess.Popen(
            [str(part) for part in command], stdout=out, stderr=subprocess.STDOUT,
            env=None if env is None else dict(env), cwd=cwd,
        )  # fmt: skip

        def sample() -> None:
            while not done.wait(SAMPLE_SECONDS):
                total, largest = tree_memory_kib(process.pid)
                peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        done.set()
        sampler.join()
    return {
        "command": " ".join(map(str, command)),
        "exit": process.returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "user_s": round(usage.ru_utime, 1),
        "sys_s": round(usage.ru_stime, 1),
        "max_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_process_mib": round(peak[1] / 1024, 1),
        "peak_tree_rss_mib": round(peak[0] / 1024, 1),
    }
