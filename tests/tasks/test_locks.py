"""Which locks the data folder's writers take, and the Prefect server's as a real lock: held,
another holder waits or is refused; released, the next one gets it."""

import threading
import time

import pytest

from cnn.locks import LockTimeoutError
from cnn.storage import location
from tasks.locks import data_locks, server_lock


def test_a_local_folder_takes_file_locks_and_object_storage_the_servers(prefect_harness, tmp_path):
    assert data_locks(location(tmp_path)) is not server_lock
    assert data_locks(location("s3://bucket/data")) is server_lock


def test_object_storage_without_a_server_takes_this_hosts_file_locks():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert data_locks(location("s3://bucket/data")) is not server_lock


def test_the_servers_lock_excludes_a_second_holder_until_it_is_released(prefect_harness):
    name = f"test-{time.monotonic_ns()}"
    acquired_after: list[float] = []
    with server_lock(name):
        refused = pytest.raises(LockTimeoutError, match=f"malaria-lock-{name}")
        with refused, server_lock(name, 0):
            pass  # never entered: the first holder has it

        def wait_for_it() -> None:
            started = time.monotonic()
            with server_lock(name, 60):
                acquired_after.append(time.monotonic() - started)

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        time.sleep(3)
        assert acquired_after == []  # still waiting while the first holds it
    waiter.join(timeout=60)
    assert len(acquired_after) == 1 and acquired_after[0] >= 3
