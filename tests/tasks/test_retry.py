"""Retries: transient I/O failures are retried with backoff, bad input fails at once."""

import os
import sqlite3
import subprocess
import sys

import pytest
import requests
from mlflow.exceptions import MlflowException
from prefect import flow, task

from cnn.data.manifest import DatasetError
from cnn.io.locks import LockTimeoutError
from cnn.io.storage import StorageError, StorageUnavailableError
from cnn.settings import SettingsError, settings
from cnn.sources.records import SourceError, SourceUnavailableError
from tasks.retry import IO_RETRIES, is_transient
from tracking.store import TrackingUnavailableError


def _raised_inside(outer: Exception, inner: Exception) -> Exception:
    """`outer` raised while handling `inner`, the way MLflow wraps a failed request."""
    try:
        try:
            raise inner
        except Exception:
            raise outer  # noqa: B904 (the implicit context is the point)
    except Exception as error:
        return error


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        requests.exceptions.ConnectionError("reset by peer"),
        requests.exceptions.ReadTimeout("read timed out"),
        TrackingUnavailableError("MLflow tracking server http://127.0.0.1:1 is unreachable"),
        SourceUnavailableError("data.lhncbc.nlm.nih.gov is unreachable"),
        LockTimeoutError("lock still held"),
        sqlite3.OperationalError("database is locked"),
        _raised_inside(
            MlflowException("API request to http://127.0.0.1:5000/api/2.0 failed"),
            requests.exceptions.ConnectionError("Max retries exceeded"),
        ),
        StorageUnavailableError("cannot reach s3://b/d (endpoint http://127.0.0.1:1): …"),
        OSError(  # what pyarrow raises when the store goes away while training reads it
            "When reading information for key 'd/part-00000.parquet' in bucket 'b': AWS Error "
            "NETWORK_CONNECTION during GetObject operation: curlCode: 7, Could not connect"
        ),
        OSError(  # and while it comes back
            "When reading information for key 'd/part-00000.parquet' in bucket 'b': AWS Error "
            "UNKNOWN (HTTP status 500) during HeadObject operation: No response body."
        ),
        RuntimeError(  # as TensorFlow wraps it when a streamed batch could not be read
            "OSError: AWS Error INTERNAL_FAILURE during GetObject operation: [[{{node PyFunc}}]]"
        ),
    ],
    ids=lambda error: type(error).__name__,
)
def test_io_failures_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("epochs: Input should be greater than or equal to 1"),
        SourceError("folder source '/nope' does not exist"),
        DatasetError("dataset '/x' has no manifest.json"),
        MlflowException("RESOURCE_DOES_NOT_EXIST: Registered Model with name=x not found"),
        KeyError("val_loss"),
        FileNotFoundError(2, "No such file or directory"),
        StorageError("nosuch://b/d: no filesystem for nosuch:// here"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_bad_input_is_not_transient(error):
    assert not is_transient(error)


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("error", "attempts"), [(ConnectionResetError("reset"), 3), (ValueError("bad input"), 1)]
)
def test_prefect_retries_only_transient_failures(error, attempts):
    calls = []

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise error
        return "done"

    @flow
    def run() -> str:
        return flaky()

    if attempts == 3:
        assert run() == "done"
    else:
        with pytest.raises(ValueError, match="bad input"):
            run()
    assert len(calls) == attempts


DECLARED = (
    "from tasks.retry import IO_RETRIES as r; "
    "print(r['retries'], r['retry_delay_seconds'](r['retries']))"
)


@pytest.mark.parametrize(
    ("environment", "declared"),
    [
        ({}, "3 [10.0, 20.0, 40.0]"),
        ({"MALARIA_IO_RETRIES": "2", "MALARIA_IO_RETRY_DELAY_SECONDS": "0.5"}, "2 [0.5, 1.0]"),
    ],
)
def test_io_tasks_are_declared_with_the_settings_of_the_process_that_imports_them(
    environment, declared
):
    """So Prefect's "Retry 1/N" counts what the setting allows."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALARIA_IO_RETR")}
    imported = subprocess.run(
        [sys.executable, "-c", DECLARED],
        env={**clean, **environment},
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().splitlines()[-1] == declared


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("retries", [0, 1])
def test_the_number_of_retries_comes_from_the_environment_when_a_task_fails(monkeypatch, retries):
    monkeypatch.setenv("MALARIA_IO_RETRIES", str(retries))
    calls = []

    @task(**{**IO_RETRIES, "retry_delay_seconds": 0, "retry_jitter_factor": None})
    def unreachable() -> None:
        calls.append(1)
        raise ConnectionRefusedError("refused")

    @flow
    def run() -> None:
        unreachable()

    with pytest.raises(ConnectionRefusedError):
        run()
    assert len(calls) == 1 + retries


def test_a_bad_retry_setting_breaks_no_import_and_is_named_when_read():
    bad = {**os.environ, "MALARIA_IO_RETRIES": "three"}
    imported = subprocess.run(
        [sys.executable, "-c", "import tasks.retry"],
        env=bad,
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MALARIA_IO_RETRIES", "three")
        with pytest.raises(SettingsError, match="MALARIA_IO_RETRIES='three'"):
            settings()
