"""Exclusive file locks: one writer at a time across threads, processes and (with POSIX locks
on a shared filesystem) hosts. The kernel releases a dead process's lock, so a run killed
with SIGKILL never leaves a lock behind.

Writers take named locks from a `Locks`, so the caller chooses what coordinates them: file
locks here, or (in `tasks.locks`) a Prefect server's global concurrency limits, which every
host that shares the server honours.
"""

import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from cnn.io.storage import Location

POLL_SECONDS = 0.2
LOCKS_DIR = ".locks"
"""The folder of file locks, inside the folder whose writers they coordinate."""
HOST_LOCKS_DIR = Path(".cache", "malaria", "locks")
"""Under the user's home: file locks for data on object storage when nothing shared
coordinates its writers; they exclude the processes of this host only."""

TEMPORARY_SERVER_VARIABLE = "MALARIA_TEMPORARY_PREFECT_SERVER"
"""Set (to 1) by `malaria` when its flows report to a temporary Prefect server of its own,
whose locks would bind that one process: writers then take file locks."""

Locks = Callable[[str, float | None], AbstractContextManager[None]]
"""`locks(name, timeout_seconds)`: hold the exclusive lock `name` for a `with` block, waiting
at most `timeout_seconds` (None: as long as it takes), else LockTimeoutError."""


class LockTimeoutError(TimeoutError):
    """Another run held the lock for longer than the caller would wait; names the lock file."""


@contextmanager
def exclusive_lock(path: Path, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the `with` block.

    Each call opens its own file description, so threads of one process exclude each other
    too. Waits at most `timeout_seconds` (forever when None).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"lock {str(path)!r} still held by another run after "
                        f"{timeout_seconds:.0f} s"
                    ) from None
                time.sleep(POLL_SECONDS)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        return True
    return True


def lock_file_name(name: str) -> str:
    """A lock's name as one file name: anything but letters, digits, `.`, `_` and `-` is `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def folder_locks(folder: Location) -> Locks:
    """File locks for the writers of `folder`: in its LOCKS_DIR when it is local (every host
    that mounts it honours them), else in HOST_LOCKS_DIR (this host's processes only)."""
    where = Path(folder.path) / LOCKS_DIR if folder.is_local else Path.home() / HOST_LOCKS_DIR

    def lock(name: str, timeout_seconds: float | None = None) -> AbstractContextManager[None]:
        return exclusive_lock(where / f"{lock_file_name(name)}.lock", timeout_seconds)

    return lock
