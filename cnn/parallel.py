"""Worker processes that decode images: the pool ingest and prediction share.

loky spawns fresh workers (it never forks a process running TensorFlow) without re-running
the caller's `__main__`, reuses them across calls, and lets idle ones exit, so they hold no
memory while a model trains.
"""

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from joblib.externals.loky import get_reusable_executor

PARALLEL_THRESHOLD = 256
"""Below this many images, decoding in-process beats starting worker processes."""
WORKER_IDLE_SECONDS = 10
"""Idle decode workers exit after this long."""


def worker_count(workers: int | None) -> int:
    """`workers`, or one per core when not given."""
    return workers or os.cpu_count() or 1


def decode_pool(workers: int):
    return get_reusable_executor(max_workers=workers, timeout=WORKER_IDLE_SECONDS)


def start_decode_workers(images: int, workers: int | None) -> None:
    """Start the workers that decoding `images` images will use, so that they start (a second
    or two: each imports its libraries) while the caller prepares."""
    workers = worker_count(workers)
    if workers > 1 and images >= PARALLEL_THRESHOLD:
        pool = decode_pool(workers)
        for _ in range(workers):
            pool.submit(_started)


def _started() -> None:
    """A worker's first job: nothing, but unpickling it imports this module there."""


def completed_map(
    pool, function: Callable[..., Any], jobs: Iterable[tuple], max_in_flight: int
) -> Iterator[Any]:
    """Like `pool.map`, in the order jobs finish, never more than `max_in_flight` held."""
    pending: set = set()
    try:
        for job in jobs:
            pending.add(pool.submit(function, *job))
            if len(pending) >= max_in_flight:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    finally:
        for future in pending:
            future.cancel()


def ordered_map(
    pool, function: Callable[..., Any], jobs: Iterable[tuple], max_in_flight: int
) -> Iterator[Any]:
    """Like `pool.map`, in the jobs' order, never more than `max_in_flight` submitted ahead."""
    pending: deque = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(function, *job))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
