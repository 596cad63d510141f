"""Where the local stack listens and keeps its state: read by the command line at start-up,
so it imports nothing heavy."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.team import GRPC_OFFSET
from cnn.settings import data_dir

Port = Annotated[int, Field(ge=1, le=65535)]

QUIET_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
"""Offline-friendly defaults of every `malaria` command and stack process (a variable already
set wins): no telemetry, no TensorFlow start-up chatter, no download bars in the logs."""
QUIET_LOGGERS = ("tensorflow", "mlflow.system_metrics", "EventsWorker", "APILogWorker")
"""Loggers a `malaria` command keeps to errors: TensorFlow's tf.function retracing advice,
MLflow's start and stop of each training's system-metrics monitor, and Prefect's "Still
processing items" while its event and log senders finish at exit (after the error line)."""
HEARTBEAT_SECONDS = 30
"""How often a flow run tells a server it lives (`PREFECT_RUNNER_HEARTBEAT_FREQUENCY` of the
stack's workers; a `malaria` command's flow runs, `app.prefect_api`); three missed, and
`app.alerts` marks the run Crashed."""


class StackSettings(BaseModel):
    """Where the stack listens and keeps its state, store and data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(
        "127.0.0.1", description="Address the servers bind (0.0.0.0 opens them to the network)"
    )
    prefect_port: Port = Field(4200, description="Port of the Prefect server")
    mlflow_port: Port = Field(5000, description="Port of the MLflow server")
    mlflow_workers: int = Field(
        4, ge=1, description="Worker processes of the MLflow server (one serves a single user)"
    )
    state_dir: Path = Field(
        Path(".stack"), description="Where pids, logs and the stores it starts are kept"
    )
    webhook_url: str | None = Field(
        None,
        description="Where the Prefect server's automations post alerts (failed, crashed or "
        "lost runs, a pool without workers, a promotion); default: $MALARIA_WEBHOOK_URL",
    )
    profile: Literal["embedded", "team"] = Field(
        "embedded",
        description="embedded: SQLite and local folders; team: Prefect and MLflow on "
        "PostgreSQL, MLflow's artifacts on an S3 object store",
    )
    database_url: str | None = Field(
        None,
        pattern=r"^postgresql://",
        description="PostgreSQL server of the team profile (postgresql://user@host:port), with "
        "databases prefect and mlflow; default: one started under the state folder",
    )
    object_store: str | None = Field(
        None,
        pattern=r"^s3://",
        description="s3://bucket/prefix for the team profile's MLflow artifacts (AWS_* "
        "variables give the endpoint and keys); default: a SeaweedFS server started under the "
        "state folder",
    )
    postgres_port: Port = Field(5432, description="Port of the PostgreSQL server the stack starts")
    object_store_port: int = Field(
        8333,
        ge=1,
        le=65535 - GRPC_OFFSET,
        description="S3 port of the object store the stack starts (SeaweedFS takes the port "
        f"{GRPC_OFFSET} above it too)",
    )
    mlflow_store: Path = Path("mlflow") / "store"
    data_dir: str = Field(default_factory=lambda: data_dir().uri)

    @property
    def state_file(self) -> Path:
        """What `stack up` started, for `down`, `status` and commands that use the stack."""
        return self.state_dir / "stack.json"

    @property
    def prefect_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.prefect_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.mlflow_port}"

    @property
    def client_env(self) -> dict[str, str]:
        """What a process needs to use the stack's two servers."""
        return {
            "PREFECT_API_URL": f"{self.prefect_url}/api",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
        }


def client_host(host: str) -> str:
    """The address a client on this machine uses for a server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
