"""Which failures are worth a retry: I/O that may work a moment later, never bad input.

Tasks that download or call the tracking server take `IO_RETRIES`: by default up to three
more tries, 10, 20 and 40 s apart (±30%), and only while the error is transient. A bad
parameter, a missing file or a corrupt dataset fails at once: retrying would fail the same
way. Tasks are declared the way Prefect documents it (`retries`, `exponential_backoff`), with
`MALARIA_IO_RETRIES` and `MALARIA_IO_RETRY_DELAY_SECONDS` (the first delay) as the process that
imports them has them: the flow run's process, so a worker's environment applies, and
Prefect's "Retry 1/3" counts what the setting says. A bad value there breaks no import: the
defaults are declared, and the variable is named when a task fails.
"""

from typing import Any

import requests
from prefect.tasks import exponential_backoff

from cnn.settings import Settings, SettingsError, settings
from cnn.sources.records import SourceUnavailableError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # includes refused and reset connections
    TimeoutError,  # includes cnn.io.locks.LockTimeoutError
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    SourceUnavailableError,
)
TRANSIENT_MESSAGES = (
    "database is locked",  # SQLite store busy with another writer
    "Max retries exceeded",  # MLflow's HTTP client gave up on the server
    "failed with timeout",
    "Connection refused",
    "Temporary failure in name resolution",
    "503 Service Unavailable",
    "502 Bad Gateway",
    # pyarrow's S3 client: the store went away mid-read, or answered that it is failing,
    # overloaded or restarting (500-599)
    "AWS Error NETWORK_CONNECTION",
    "AWS Error INTERNAL_FAILURE",
    "AWS Error SERVICE_UNAVAILABLE",
    "AWS Error SLOW_DOWN",
    "(HTTP status 5",
)


def is_transient(error: BaseException) -> bool:
    """Whether `error`, or any error it was raised from, is one that may pass on its own."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TRANSIENT_ERRORS):
            return True
        if any(message in str(current) for message in TRANSIENT_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_if_transient(_task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only failures that `is_transient`, and only while
    the tries so far are within `MALARIA_IO_RETRIES`."""
    if task_run.run_count > settings().io_retries:
        return False
    error = state.data
    if not isinstance(error, BaseException):  # kept in a result record
        error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


def _declared_retries() -> tuple[int, float]:
    """The number of retries and the first delay that tasks are declared with."""
    try:
        current = settings()
    except SettingsError:  # named by `retry_if_transient` when a task fails
        current = Settings.model_construct()
    return current.io_retries, current.io_retry_delay_seconds


_RETRIES, _FIRST_DELAY = _declared_retries()
IO_RETRIES: dict[str, Any] = {
    "retries": _RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=_FIRST_DELAY),
    "retry_jitter_factor": 0.3,
    "retry_condition_fn": retry_if_transient,
}
"""Keyword arguments of `@task` for tasks that do I/O (downloads, tracking-server calls)."""
