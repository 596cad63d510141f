"""Which failures are worth a retry: I/O that may work a moment later, never bad input.

Tasks that download or call the tracking server take `IO_RETRIES`: up to three more tries,
10, 20 and 40 s apart (±30%), and only while the error is transient. A bad parameter, a
missing file or a corrupt dataset fails at once: retrying would fail the same way.
`MALARIA_IO_RETRIES` and `MALARIA_IO_RETRY_DELAY_SECONDS` (the first delay) change both.
"""

import os
from typing import Any

import requests
from prefect.tasks import exponential_backoff

from cnn.sources import SourceUnavailableError

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,  # includes refused and reset connections
    TimeoutError,  # includes cnn.locks.LockTimeoutError
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


def retry_if_transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only failures that `is_transient`."""
    error = state.data
    if not isinstance(error, BaseException):  # kept in a result record
        error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None


IO_RETRIES: dict[str, Any] = {
    "retries": int(_setting("MALARIA_IO_RETRIES", 3)),
    "retry_delay_seconds": exponential_backoff(
        backoff_factor=_setting("MALARIA_IO_RETRY_DELAY_SECONDS", 10)
    ),
    "retry_jitter_factor": 0.3,
    "retry_condition_fn": retry_if_transient,
}
"""Keyword arguments of `@task` for tasks that do I/O (downloads, tracking-server calls)."""
