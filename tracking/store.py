"""Where runs go: the tracking URI (secrets kept out of it), the store, its server, experiments."""

import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cnn.io.locks import exclusive_lock
from cnn.settings import settings, sqlite_path

DEFAULT_STORE_DIR = Path("mlflow") / "store"
SERVER_CHECK_SECONDS = 15.0
"""How long a flow waits for an unreachable tracking server before failing."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` without any user and password written into it, else the SQLite
    store under ./mlflow/store. MLflow prints run links made from the URI, and printed
    lines end up in Prefect's logs: the URI used never carries a secret."""
    return _split_credentials(_configured_uri())[0]


def _configured_uri() -> str:
    return settings().tracking_uri or f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').absolute()}"


def _split_credentials(uri: str) -> tuple[str, tuple[str, str] | None]:
    """An HTTP(S) URI without its `user:password@`, and that pair (None if it has none)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return uri, None
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), (
        unquote(parts.username or ""),
        unquote(parts.password),
    )


_opened_stores: set[str] = set()
"""SQLite stores this process has opened (and so created) already."""


def configure_tracking() -> str:
    """Point this process's MLflow client at the tracking store; return its URI.

    A user and password written into `MLFLOW_TRACKING_URI` move to `MLFLOW_TRACKING_USERNAME`
    and `MLFLOW_TRACKING_PASSWORD` (where MLflow reads them), and the URI is used without them.

    A SQLite store is opened first under a lock: two runs starting at once on a new store
    would otherwise both create its tables, and one fail ("table already exists").
    """
    uri, credentials = _split_credentials(_configured_uri())
    if credentials is not None:  # where MLflow's HTTP client reads them
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", credentials[0])
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", credentials[1])
        os.environ["MLFLOW_TRACKING_URI"] = uri
    database = sqlite_path(uri)
    if database is not None and uri not in _opened_stores:
        with exclusive_lock(database.parent / ".schema.lock", timeout_seconds=300):
            MlflowClient(uri).search_experiments(max_results=1)  # creates or migrates tables
        _opened_stores.add(uri)
    mlflow.set_tracking_uri(uri)
    return uri


class TrackingUnavailableError(ConnectionError):
    """The MLflow tracking server does not answer; the message names it (without secrets)."""


def require_tracking_server(timeout_seconds: float = SERVER_CHECK_SECONDS) -> str:
    """Configure tracking and, when it is an HTTP(S) server, wait at most `timeout_seconds`
    for its `/health` to answer; raise TrackingUnavailableError naming the URI if it does not.

    MLflow's own client retries each call for minutes: checked first, an unreachable server
    fails a run at its start, before any work that it would then have nowhere to record.
    """
    uri = configure_tracking()
    if not uri.startswith(("http://", "https://")):
        return uri
    started = time.monotonic()
    attempts, reason = 0, ""
    while True:
        attempts += 1
        remaining = timeout_seconds - (time.monotonic() - started)
        try:
            response = requests.get(
                f"{uri.rstrip('/')}/health", timeout=max(1.0, min(5.0, remaining))
            )
            if response.status_code < 500:  # answering (even "unauthorized") is reachable
                return uri
            reason = f"HTTP {response.status_code}"
        except requests.RequestException as error:
            reason = _short_reason(error)
        if time.monotonic() - started + 2.0 >= timeout_seconds:
            break
        time.sleep(2.0)
    raise TrackingUnavailableError(
        f"MLflow tracking server {uri} is unreachable ({reason}; {attempts} "
        f"attempts in {time.monotonic() - started:.0f} s). Start it (`malaria stack up` serves "
        "one on 127.0.0.1:5000) or unset MLFLOW_TRACKING_URI to track in ./mlflow/store"
    )


def _short_reason(error: requests.RequestException) -> str:
    if isinstance(error, requests.ConnectTimeout | requests.ReadTimeout):
        return "no answer"
    if isinstance(error, requests.ConnectionError):
        return "connection refused or host unreachable"
    return type(error).__name__


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite store) if needed."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    database = sqlite_path(mlflow.get_tracking_uri())
    artifact_location = (database.parent / "artifacts").as_uri() if database else None
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none), for one-line errors:
    MLflow's messages go on for pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
