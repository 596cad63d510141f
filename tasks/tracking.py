"""MLflow settings: where runs go, and the lifecycle of one tracked run."""

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import mlflow
import requests
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from cnn.locks import exclusive_lock, process_alive

DEFAULT_STORE_DIR = Path("mlflow") / "store"
HOST_TAG, PID_TAG = "host", "pid"
"""Run tags naming the process that runs it, so a later run can tell it was abandoned."""
SERVER_CHECK_SECONDS = 15.0
"""How long a flow waits for an unreachable tracking server before failing."""


class TrackingConfig(BaseModel):
    """Where a run is recorded in MLflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str = Field("malaria-cnn", min_length=1, description="MLflow experiment name")
    registered_model: str = Field(
        "malaria-cnn", min_length=1, description="Registered model that every trained model joins"
    )


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the SQLite store under ./mlflow/store.

    A user and password written into the URI move to `MLFLOW_TRACKING_USERNAME` and
    `MLFLOW_TRACKING_PASSWORD` (where MLflow reads them), and the URI is used without them:
    MLflow prints run links made from the URI, and printed lines end up in Prefect's logs.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').absolute()}"
    )
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        uri = urlunsplit(parts._replace(netloc=netloc))
        os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


_opened_stores: set[str] = set()
"""SQLite stores this process has opened (and so created) already."""


def configure_tracking() -> str:
    """Point this process's MLflow client at the tracking store; return its URI.

    A SQLite store is opened first under a lock: two runs starting at once on a new store
    would otherwise both create its tables, and one fail ("table already exists").
    """
    uri = tracking_uri()
    database = _sqlite_path(uri)
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
    database = _sqlite_path(mlflow.get_tracking_uri())
    artifact_location = (database.parent / "artifacts").as_uri() if database else None
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


@contextmanager
def tracked_run(experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    """Create an MLflow run, yield its id, and mark it FINISHED, or FAILED on any error.

    Tasks resume the run by id (`mlflow.start_run(run_id=...)`): the active run is
    thread-local, so it must not be carried across tasks. Runs left RUNNING by killed
    processes of this host are marked KILLED first.
    """
    require_tracking_server()
    client = MlflowClient()
    experiment_id = ensure_experiment(experiment)
    mark_abandoned_runs(client, experiment_id)
    owner = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, **owner})
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException:
        with suppress(Exception):  # the server may be away too: report the first error
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def mark_abandoned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs whose process, on this host, no longer exists (killed
    with SIGKILL, or its machine restarted); return their ids."""
    host = socket.gethostname()
    running_here = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"
    runs = client.search_runs([experiment_id], filter_string=running_here)
    abandoned = []
    for run in runs:
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and not process_alive(int(pid)):
            client.set_tag(run.info.run_id, "abandoned", f"process {pid} on {host} ended mid-run")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            abandoned.append(run.info.run_id)
    return abandoned


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none), for one-line errors:
    MLflow's messages go on for pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ModelNotFoundError(LookupError):
    """A model URI that names nothing loadable; the message says what was looked for."""


def check_model_uri(model_uri: str) -> None:
    """For `models:/NAME@ALIAS` and `models:/NAME/VERSION`: the name and the alias or version
    must exist (MLflow's own errors do not say which part is missing). Needs the tracking URI
    set (`configure_tracking`)."""
    if not model_uri.startswith("models:/") or model_uri.startswith("models:/m-"):
        return
    reference = model_uri.removeprefix("models:/")
    client = mlflow.MlflowClient()
    name, at, alias = reference.partition("@")
    name, _, version = name.partition("/")
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        raise ModelNotFoundError(f"no registered model named {name!r} ({model_uri})") from error
    try:
        if at:
            client.get_model_version_by_alias(name, alias)
        elif version:
            client.get_model_version(name, version)
    except MlflowException as error:
        what = f"alias {alias!r} is not set" if at else f"version {version} does not exist"
        raise ModelNotFoundError(
            f"registered model {name!r}: {what} ({model_uri}); train one with "
            "`malaria pipeline`, or name a version: models:/NAME/VERSION"
        ) from error


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    prefix = "sqlite:///"  # then a relative path, or an absolute one with its own "/"
    if not uri.startswith(prefix):
        return None
    return Path(uri.removeprefix(prefix).partition("?")[0]).absolute()
