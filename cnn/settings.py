"""The pipeline's settings from the environment: one typed object, read when it is asked for.

Nothing is read at import time. The `malaria` command builds the settings before it does
anything (a bad value exits 2 naming the variable); code below it asks `settings()` where it
needs one, so the environment of the process that runs a flow (a worker's) applies.
"""

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cnn.config import DASK_ADDRESS_PATTERN
from cnn.errors import InputError
from cnn.io.storage import Location, StorageError, location

ENV_PREFIX = "MALARIA_"
MAX_IO_RETRIES = 5
"""The most retries `MALARIA_IO_RETRIES` may ask for."""


class SettingsError(InputError):
    """An environment variable holds a value the pipeline cannot use; the message names it."""


class Settings(BaseSettings):
    """Each field is the environment variable `MALARIA_<FIELD>` unless it says otherwise."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True
    )

    data_dir: str = Field(
        "data",
        description="Where datasets, checkpoints and kept models live: a local folder or a "
        "URI (s3://bucket/prefix)",
    )
    io_retries: int = Field(
        3,
        ge=0,
        le=MAX_IO_RETRIES,
        description="How many more tries a task gets when its I/O fails transiently",
    )
    io_retry_delay_seconds: float = Field(
        10.0, ge=0.0, le=3600.0, description="Wait before the first retry (doubling after)"
    )
    webhook_url: SecretStr | None = Field(
        None, description="Where retrain notifications are posted (a secret: never logged)"
    )
    dask_address: str | None = Field(
        None,
        pattern=DASK_ADDRESS_PATTERN,
        description="The Dask scheduler ingests write their shards on when their config names "
        "none (`--dask-address`)",
    )
    tracking_uri: str | None = Field(
        None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="MLFLOW_TRACKING_URI: the MLflow tracking server or store; unset: "
        "the SQLite store under ./mlflow/store",
    )

    @field_validator("data_dir")
    @classmethod
    def _known_filesystem(cls, folder: str) -> str:
        """A URI of a filesystem that pyarrow knows here (nothing is contacted yet)."""
        try:
            location(folder)
        except StorageError as error:
            raise ValueError(str(error)) from None
        return folder

    @field_validator("tracking_uri")
    @classmethod
    def _store_folder_exists(cls, uri: str | None) -> str | None:
        """A SQLite store is made only in a folder that exists, as MLflow's own server does:
        a typo in the path must not start an empty store elsewhere."""
        database = sqlite_path(uri) if uri else None
        if database is not None and not database.parent.is_dir():
            raise ValueError(
                f"folder {database.parent} does not exist (create it, or fix the path)"
            )
        return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI, else None."""
    prefix = "sqlite:///"  # then a relative path, or an absolute one with its own "/"
    if not uri.startswith(prefix):
        return None
    return Path(uri.removeprefix(prefix).partition("?")[0]).absolute()


def settings() -> Settings:
    """The settings as the environment has them now; `SettingsError` names a bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        problem = error.errors()[0]
        field = str(problem["loc"][0])
        alias = (
            Settings.model_fields[field].validation_alias
            if field in Settings.model_fields
            else None
        )
        name = alias if isinstance(alias, str) else f"{ENV_PREFIX}{field.upper()}"
        raise SettingsError(f"{name}={problem['input']!r}: {problem['msg']}") from None


def data_dir() -> Location:
    """Where datasets, checkpoints and kept models live (`MALARIA_DATA_DIR`)."""
    return location(settings().data_dir)


def datasets_dir() -> Location:
    """Where ingested datasets live: `datasets/` of the data folder."""
    return data_dir() / "datasets"
