"""The locks that writers of the data folder take turns on, wherever the folder is.

A local folder (or one mounted on every host) keeps file locks beside it. Object storage has
no lock of its own that pyarrow reaches, so there the writers take turns on the Prefect
server's global concurrency limits: one slot each, held under a lease that the holder renews,
which the server frees when a killed holder stops renewing it. Every host that shares the
server (the team stack) honours them. With no shared server (the embedded default, where a
`malaria` command reports to a temporary server of its own) the locks are file locks of this
host: its processes take turns, other hosts do not see them.
"""

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from cnn.io.locks import (
    TEMPORARY_SERVER_VARIABLE,
    Locks,
    LockTimeoutError,
    folder_locks,
    lock_file_name,
)
from cnn.io.storage import Location

LIMIT_PREFIX = "malaria-lock-"
"""Global concurrency limits that are locks are named this and the lock's name."""
LEASE_SECONDS = 60
"""A holder's lease, renewed while it lives: a killed holder keeps the lock this long, until
the server's next repossession pass."""
TRY_SECONDS = 2.0
"""What a lock asked for with no wait (timeout 0) waits for the server's answer."""


def data_locks(folder: Location) -> Locks:
    """The locks for writers of `folder`: the shared Prefect server's when `folder` is on
    object storage and a server is configured, else file locks (`cnn.io.locks.folder_locks`)."""
    temporary = os.environ.get(TEMPORARY_SERVER_VARIABLE) == "1"
    if folder.is_local or temporary or not PREFECT_API_URL.value():
        return folder_locks(folder)
    return server_lock


@contextmanager
def server_lock(name: str, timeout_seconds: float | None = None) -> Iterator[None]:
    """Hold the lock `name` as one slot of a global concurrency limit of the Prefect server."""
    limit = LIMIT_PREFIX + lock_file_name(name)
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(limit, limit=1)  # unless one made it
    wait = TRY_SECONDS if timeout_seconds == 0 else timeout_seconds
    with ExitStack() as held:
        try:
            held.enter_context(
                concurrency(limit, timeout_seconds=wait, lease_duration=LEASE_SECONDS, strict=True)
            )
        except TimeoutError:
            raise LockTimeoutError(
                f"lock {limit!r} of the Prefect server still held by another run after {wait:.0f} s"
            ) from None
        yield
