"""Exclusive file locks: one writer at a time across threads, processes and (with POSIX locks
on a shared filesystem) hosts. The kernel releases a dead process's lock, so a run killed
with SIGKILL never leaves a lock behind."""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

POLL_SECONDS = 0.2


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
