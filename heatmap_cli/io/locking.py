"""An exclusive lock on a folder between processes, for a read-merge-write of a shared file.

Two runs into one output folder each read the manifest, add their rows and rename a new one into
place; without a lock the later rename drops the rows of the earlier run. :func:`locked` holds
an exclusive lock on the folder for the whole read-merge-write.

The lock is ``flock`` on the folder itself, so no file is added to it. Where the file system
cannot lock a folder (NFS, where Linux maps ``flock`` to byte-range locks that need a file open
for writing; Windows, where a folder cannot be opened), a hidden lock file in the folder is
locked instead (``flock``, or ``msvcrt.locking`` on Windows); it is never removed (removing it
would let a waiting process lock a file that is no longer the one at that path). Either way the
operating system releases the lock when its holder dies, SIGKILL included: a killed run never
leaves a folder locked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from heatmap_cli.errors import OutputWriteError
from heatmap_cli.io._oserror import os_reason

__all__ = ["LOCK_TIMEOUT_S", "locked"]

LOCK_TIMEOUT_S = 120.0
"""How long :func:`locked` waits for another holder (a read-merge-write takes milliseconds)."""

_POLL_S = 0.01
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


@contextlib.contextmanager
def locked(folder: Path, lock_file: str, *, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Holds an exclusive lock on ``folder`` for the ``with`` block.

    Args:
        folder: The folder whose shared file is read, merged and replaced.
        lock_file: The name of the hidden file locked instead where the folder itself cannot
            be locked (created then).
        timeout_s: How long to wait for another process to release it.

    Where no lock of any kind can be taken, the block runs unlocked.

    Raises:
        OutputWriteError: The lock file cannot be created, or another process held the lock
            for longer than ``timeout_s``.
    """
    descriptor = _locked_folder(folder, timeout_s)
    if descriptor is None:
        descriptor = _open_lock_file(folder / lock_file)
        try:
            _wait_for(descriptor, folder / lock_file, timeout_s)
        except _CannotLockError:  # no lock of any kind here: as before locks, not worse
            os.close(descriptor)
            yield
            return
        except BaseException:
            os.close(descriptor)
            raise
    try:
        yield
    finally:
        _release(descriptor)
        os.close(descriptor)


def _locked_folder(folder: Path, timeout_s: float) -> int | None:
    """A descriptor of ``folder`` holding its lock; None where folders cannot be locked."""
    try:
        import fcntl  # noqa: F401  (POSIX only)

        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    except (ImportError, OSError):
        return None
    try:
        _wait_for(descriptor, folder, timeout_s)
    except _CannotLockError:
        os.close(descriptor)
        return None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def _open_lock_file(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        raise OutputWriteError(f"cannot create the lock file {path}: {os_reason(error)}") from error


class _CannotLockError(Exception):
    """The file system does not lock this kind of file."""


def _wait_for(descriptor: int, path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _try_lock(descriptor):
        if time.monotonic() > deadline:
            raise OutputWriteError(
                f"{path}: another process has held its lock for over {timeout_s:.0f} s"
            )
        time.sleep(_POLL_S)


def _try_lock(descriptor: int) -> bool:
    """Takes the lock if it is free; False if another holder has it.

    Raises:
        _CannotLockError: Locks are not supported here (``EBADF``, ``ENOLCK``, ``EINVAL``...).
    """
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _BUSY:
            return False
        raise _CannotLockError from error
    return True


def _release(descriptor: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(descriptor, 0, os.SEEK_SET)
            msvcrt.locking(descriptor, msvcrt.LK_UNLCK, 1)
        return
    with contextlib.suppress(OSError):
        fcntl.flock(descriptor, fcntl.LOCK_UN)
