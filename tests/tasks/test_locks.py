"""Which locks the data folder's writers take, and the Prefect server's as a real lock: held,
another holder waits or is refused; released, or its holder SIGKILLed, the next one gets it."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from cnn.io.locks import TEMPORARY_SERVER_VARIABLE, LockTimeoutError
from cnn.io.storage import location
from tasks.locks import LEASE_SECONDS, data_locks, server_lock
from tests.integration.servers import BIN, REPO, background, free_port, wait_until_healthy

HOLDER = """
import sys, time
from tasks.locks import server_lock
with server_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_local_folder_takes_file_locks_and_object_storage_the_servers(prefect_harness, tmp_path):
    assert data_locks(location(tmp_path)) is not server_lock
    assert data_locks(location("s3://bucket/data")) is server_lock


def test_object_storage_without_a_shared_server_takes_this_hosts_file_locks(
    prefect_harness, monkeypatch
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}):
        assert data_locks(location("s3://bucket/data")) is not server_lock
    monkeypatch.setenv(TEMPORARY_SERVER_VARIABLE, "1")  # a command's own temporary server
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


@pytest.mark.slow
def test_a_sigkilled_holders_lock_is_freed_once_its_lease_expires(tmp_path, monkeypatch):
    """On a real `prefect server` (the test harness runs none of the server's services, so
    none of its lease repossession): the holder is SIGKILLed, and the lock comes free after
    its lease and the server's next repossession pass, not never."""
    port, log = free_port(), tmp_path / "server.log"
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(command, log, {"PREFECT_HOME": str(tmp_path)}) as server:
        wait_until_healthy(f"http://127.0.0.1:{port}/api/health", server, log)
        api = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, "sigkilled"],
            cwd=REPO,
            env={**os.environ, **api},
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        killed = time.monotonic()
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api["PREFECT_API_URL"]}):
            with pytest.raises(LockTimeoutError), server_lock("sigkilled", 0):
                pass  # never entered: the dead holder's lease still runs
            with server_lock("sigkilled", 3 * LEASE_SECONDS):
                freed_after = time.monotonic() - killed
    assert LEASE_SECONDS - 5 < freed_after < 2 * LEASE_SECONDS
