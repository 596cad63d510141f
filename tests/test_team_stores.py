"""Waiting for the team profile's stores: a store whose process has exited fails the wait at
once, naming its log (was: the wait ran its whole 120 s and named only the refused port)."""

import subprocess
import sys
import time

import pytest

from app.team import ObjectStore, Started, StoreError, free_port_with_grpc


def test_an_object_store_that_exited_fails_the_wait_at_once_naming_its_log(tmp_path):
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    exited.wait()
    ports = {name: free_port_with_grpc() for name in ("master", "volume", "filer", "s3")}
    store = ObjectStore(tmp_path, "127.0.0.1", ports)  # nothing listens on its ports
    log = tmp_path / "object-store.log"
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"object-store exited while starting; see {log}"):
        store.wait_ready(120, Started("object-store", lambda: exited.poll() is None, log))
    assert time.monotonic() - started < 5


def test_a_store_still_starting_is_named_with_its_last_error_after_the_timeout(tmp_path):
    ports = {name: free_port_with_grpc() for name in ("master", "volume", "filer", "s3")}
    store = ObjectStore(tmp_path, "127.0.0.1", ports)
    log = tmp_path / "object-store.log"
    with pytest.raises(StoreError, match=r"object-store not ready after 1 s: .*see "):
        store.wait_ready(1, Started("object-store", lambda: True, log))
