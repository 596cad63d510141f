"""Worker processes that decode images: the pool ingest and prediction share.

loky spawns fresh workers (it never forks a process running TensorFlow) without re-running
the caller's `__main__`, reuses them across calls, and lets idle ones exit, so they hold no
memory while a model trains.
"""

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from joblib.externals.loky import get_reusable_executor

PARALLEL_THRESHOLD = 256
"""Below this many images, decoding in-process beats starting worker processes."""
WORKER_IDLE_SECONDS = 10
"""Idle decode workers exit after this long."""
YIELDING_NICENESS = 19
"""The niceness of workers that yield to their caller: the lowest priority, so they take only
the CPU time the caller leaves idle (and little beside other busy processes of the same
session; docs/benchmarks.md compares the levels)."""


def worker_count(workers: int | None) -> int:
    """`workers`, or one per core when not given."""
    return workers or os.cpu_count() or 1


def parallel_map(
    function: Callable[..., Any],
    jobs: Iterable[tuple],
    images: int,
    workers: int | None,
    yield_to_caller: bool = False,
) -> Iterator[Any]:
    """`function(*job)` for each job, in the jobs' order: over the decode workers when there are
    enough `images` for them to pay (at most two jobs a worker ahead), else in this process.

    With `yield_to_caller` the workers run at the lowest priority: a caller that computes on
    every core with their results (a model scoring them) is never slowed by them, and they
    decode in what it leaves idle (all of it, when the model runs on a GPU)."""
    workers = worker_count(workers)
    if not _worth_workers(images, workers):
        return (function(*job) for job in jobs)
    pool = _decode_pool(workers, YIELDING_NICENESS if yield_to_caller else 0)
    return ordered_results(lambda job: pool.submit(function, *job), jobs, 2 * workers)


def start_decode_workers(images: int, workers: int | None) -> None:
    """Start the workers that `parallel_map` will use for `images` images, so that they start
    (a second or two: each imports its libraries) while the caller prepares."""
    workers = worker_count(workers)
    if _worth_workers(images, workers):
        pool = _decode_pool(workers)
        for _ in range(workers):
            pool.submit(_started)


def _worth_workers(images: int, workers: int) -> bool:
    return workers > 1 and images >= PARALLEL_THRESHOLD


def _decode_pool(workers: int, niceness: int = 0):
    """The reusable pool of `workers` at `niceness` above this process's (another niceness
    than the last call's replaces the pool)."""
    return get_reusable_executor(
        max_workers=workers,
        timeout=WORKER_IDLE_SECONDS,
        initializer=os.nice,
        initargs=(niceness,),
    )


def _started() -> None:
    """A worker's first job: nothing, but unpickling it imports this module there."""


def ordered_results(
    submit: Callable[[Any], Any], jobs: Iterable[Any], max_in_flight: int
) -> Iterator[Any]:
    """The results of the futures that `submit(job)` returns, in the jobs' order, with at most
    `max_in_flight` submitted ahead of the one awaited (so a stream of jobs holding pixels
    stays bounded in memory). Any engine's futures: a process pool's, Prefect's."""
    pending: deque = deque()
    try:
        for job in jobs:
            pending.append(submit(job))
            if len(pending) >= max_in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            if hasattr(future, "cancel"):  # Prefect's futures go with their task runner
                future.cancel()
