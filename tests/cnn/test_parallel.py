import os

from cnn.ingest.parallel import PARALLEL_THRESHOLD, YIELDING_NICENESS, parallel_map


def worker_niceness(_: int) -> tuple[int, int]:
    return os.getpid(), os.nice(0)


def niceness_in_workers(yield_to_caller: bool) -> set[tuple[int, int]]:
    jobs = [(index,) for index in range(8)]
    results = parallel_map(
        worker_niceness, jobs, PARALLEL_THRESHOLD, workers=2, yield_to_caller=yield_to_caller
    )
    return set(results)


def test_workers_that_yield_to_the_caller_run_at_the_lowest_priority_and_others_at_its_own():
    caller = os.nice(0)
    yielding = niceness_in_workers(yield_to_caller=True)
    assert {pid for pid, _ in yielding}.isdisjoint({os.getpid()})
    assert {niceness for _, niceness in yielding} == {min(19, caller + YIELDING_NICENESS)}
    # The pool at another niceness replaces it: ingest's workers keep the caller's priority.
    assert {niceness for _, niceness in niceness_in_workers(yield_to_caller=False)} == {caller}
