"""Runs a command as a child subreaper's child, kills it after its first line, reports orphans.

Usage: ``python -m tests.helpers.orphans OUT_FOLDER WAIT_S -- COMMAND...``

Linux only. This process becomes a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so every
process the command leaves behind when it dies is handed to this process instead of ``init``,
where it can be found. It starts the command, waits for its first line on standard output (the
first finished image), kills it with SIGKILL, lists the files in OUT_FOLDER, waits WAIT_S
seconds, lists them again and the processes it adopted, prints one json object

``{"stderr": ..., "files_at_kill": [...], "files_after": [...], "orphans": [...]}``

(orphans as their command lines), then kills the orphans so that nothing outlives the test.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def _children() -> dict[int, str]:
    """This process's children: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == os.getpid() and fields[0] != b"Z":
            found[int(entry.name)] = command or stat[: stat.rfind(b")") + 1].decode()
    return found


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def main() -> None:
    out, wait_s = Path(sys.argv[1]), float(sys.argv[2])
    command = sys.argv[sys.argv.index("--") + 1 :]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.readline()  # the first finished image
    child.send_signal(signal.SIGKILL)
    child.wait()
    at_kill = _files(out)
    time.sleep(wait_s)
    orphans = _children()
    print(
        json.dumps(
            {
                "stderr": child.stderr.read().decode("utf-8", "replace"),
                "files_at_kill": at_kill,
                "files_after": _files(out),
                "orphans": sorted(orphans.values()),
            }
        ),
        flush=True,
    )
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue
    while True:  # reap them, and any they left
        try:
            os.wait()
        except ChildProcessError:
            break


if __name__ == "__main__":
    main()
