"""Runs: the lifecycle of one tracked run, and a variant's run read back as a record."""

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from pydantic import BaseModel, Field

from cnn.io.locks import process_alive
from tracking.store import ensure_experiment, require_tracking_server

HOST_TAG, PID_TAG = "host", "pid"
"""Run tags naming the process that runs it, so a later run can tell it was abandoned."""


@contextmanager
def tracked_run(
    experiment: str, run_name: str, tags: dict[str, str], parent_run_id: str | None = None
) -> Iterator[str]:
    """Create an MLflow run (nested under `parent_run_id` if given), yield its id, and mark it
    FINISHED, or FAILED on any error.

    Tasks resume the run by id (`mlflow.start_run(run_id=...)`): the active run is
    thread-local, so it must not be carried across tasks. Runs left RUNNING by killed
    processes of this host are marked KILLED first.
    """
    require_tracking_server()
    client = MlflowClient()
    experiment_id = ensure_experiment(experiment)
    mark_abandoned_runs(client, experiment_id)
    owner = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    parent = {MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {}
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, **owner, **parent})
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


class TrainedModel(BaseModel):
    """A logged, registered model: where to load it, and its registry version."""

    model_uri: str
    version: int


class VariantRun(BaseModel):
    """One variant's trained, evaluated and registered model, as its MLflow run records it."""

    variant: str
    run_id: str
    model_uri: str
    registered_version: int | None
    parameters: int
    epochs_run: int
    train_seconds: float
    test_accuracy: float
    test_scores: dict
    alias: str | None = Field(None, description="champion or challenger, after promotion")
    promotion_reason: str | None = None


def read_variant_run(run_id: str) -> VariantRun:
    """The finished run's summary, read back from MLflow (the record every worker shares)."""
    return _variant_run(MlflowClient().get_run(run_id))


def find_variant_run(flow_run_id: str, experiment: str) -> VariantRun:
    """The MLflow run that the `train-variant` flow run `flow_run_id` made, wherever it ran."""
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'",
        output_format="list",
    )
    if not runs:
        raise LookupError(f"no MLflow run in {experiment!r} for flow run {flow_run_id}")
    return _variant_run(runs[0])


def _variant_run(run: mlflow.entities.Run) -> VariantRun:
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    version = tags.get("registered_version")
    return VariantRun(
        variant=params["variant"],
        run_id=run.info.run_id,
        model_uri=tags["model_uri"],
        registered_version=int(version) if version and version != "None" else None,
        parameters=int(params["parameters"]),
        epochs_run=int(metrics["epochs_run"]),
        train_seconds=round(metrics["train_seconds"], 3),
        test_accuracy=metrics["test_accuracy"],
        test_scores=mlflow.artifacts.load_dict(
            f"{run.info.artifact_uri}/evaluation/test_scores.json"
        ),
        alias=tags.get("promotion.alias"),
        promotion_reason=tags.get("promotion.reason"),
    )


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A markdown link to the run in the MLflow UI, or the run id where there is no server."""
    if not tracking_uri.startswith(("http://", "https://")):
        return f"`{run_id}`"
    return f"[{run_id[:8]}]({tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id})"


def link_to_run(tracking_uri: str, run_id: str) -> str:
    """`run_link` for a run known only by its id (looks up its experiment)."""
    return run_link(tracking_uri, MlflowClient().get_run(run_id).info.experiment_id, run_id)
