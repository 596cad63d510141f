"""MLflow settings: where runs go, and the lifecycle of one tracked run."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_STORE_DIR = Path("mlflow") / "store"


class TrackingConfig(BaseModel):
    """Where a run is recorded in MLflow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    experiment: str = Field("malaria-cnn", min_length=1, description="MLflow experiment name")
    registered_model: str = Field(
        "malaria-cnn", min_length=1, description="Registered model that every trained model joins"
    )


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the SQLite store under ./mlflow/store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or (
        f"sqlite:///{(DEFAULT_STORE_DIR / 'mlflow.db').absolute()}"
    )


def configure_tracking() -> str:
    """Point this process's MLflow client at the tracking store; return its URI."""
    uri = tracking_uri()
    database = _sqlite_path(uri)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


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
    thread-local, so it must not be carried across tasks.
    """
    configure_tracking()
    client = MlflowClient()
    run = client.create_run(ensure_experiment(experiment), run_name=run_name, tags=tags)
    run_id = run.info.run_id
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


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
