"""File locks: exclusive across processes and threads, released when the holder dies."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cnn.io.locks import LockTimeoutError, exclusive_lock

HOLD = """
import sys, time
from pathlib import Path
from cnn.io.locks import exclusive_lock
with exclusive_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_lock_held_by_another_process_times_out_naming_the_file(tmp_path):
    lock = tmp_path / "locks" / "promotion.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(LockTimeoutError, match=r"promotion\.lock"),
            exclusive_lock(lock, timeout_seconds=0.5),
        ):
            pass
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases a dead holder's lock
        holder.wait(timeout=10)
        with exclusive_lock(lock, timeout_seconds=5):
            pass
    finally:
        holder.kill()


def test_threads_of_one_process_take_turns(tmp_path):
    lock, inside, overlaps = tmp_path / "x.lock", [], []

    def work() -> None:
        with exclusive_lock(lock):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1, 1, 1]
