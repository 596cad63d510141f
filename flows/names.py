"""What a flow run is called and tagged in the Prefect UI: the variant, dataset, source or day
it ran, read from the run's parameters (Prefect hands configs over as models or dicts)."""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.context import TagsContext
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for

FINGERPRINT_SHOWN = 4
"""Characters of a dataset's fingerprint in names and tags: enough to tell datasets apart."""


def dataset_label(dataset: str) -> str:
    """A dataset directory's name with its fingerprint cut short: `folder-64px-ea59`."""
    stem, _, fingerprint = Path(dataset).name.rpartition("-")
    return f"{stem}-{fingerprint[:FINGERPRINT_SHOWN]}" if stem else Path(dataset).name


def source_label(source: str) -> str:
    """A source spec with its location cut to the last folder: `folder:cell_images`."""
    kind, separator, location = source.partition(":")
    return f"{kind}:{Path(location).name}" if separator and location else source


def variant_tags(variant: str, dataset: str) -> list[str]:
    """The tags of one variant's flow run: `variant:resnet`, `dataset:folder-64px-ea59`."""
    return [f"variant:{variant}", f"dataset:{dataset_label(dataset)}"]


@contextmanager
def untagged_task_runs() -> Iterator[None]:
    """Run the flow's tasks without the tags its run was given (`variant:…`, `dataset:…`).

    Prefect asks the server for the concurrency limits of every tagged task run, a database
    write that on SQLite often meets the lock of the server's event writer: a 503, retried
    by the client 2 s later, for most tasks of a run.
    """
    with TagsContext(current_tags=set()):
        yield


def mlflow_tags() -> dict[str, str]:
    """What ties an MLflow run to the flow run that made it: its id, name and Prefect UI page."""
    tags = {"prefect_flow_run_id": str(flow_run.id), "prefect_flow_run_name": flow_run.name}
    if url := url_for("flow-run", obj_id=flow_run.id):
        tags["prefect_flow_run_url"] = url
    return tags


def _field(config: Any, name: str) -> Any:
    return config[name] if isinstance(config, dict) else getattr(config, name)


def _ingested(config: Any) -> str:
    return f"{source_label(_field(config, 'source'))}@{_field(config, 'image_size')}"


def pipeline_run_name() -> str:
    return f"pipeline {_ingested(flow_run.parameters['data'])}"


def retrain_run_name() -> str:
    return f"retrain {datetime.now(UTC):%Y-%m-%d} {_ingested(flow_run.parameters['data'])}"


def ingest_run_name() -> str:
    return f"ingest {_ingested(flow_run.parameters['config'])}"


def train_run_name() -> str:
    parameters = flow_run.parameters
    variants = ",".join(parameters["variants"])
    return f"train {variants} {dataset_label(parameters['dataset'])}"


def train_variant_run_name() -> str:
    parameters = flow_run.parameters
    return f"train-variant {parameters['variant']} {dataset_label(parameters['dataset'])}"


def train_ensemble_run_name() -> str:
    return f"train-ensemble {dataset_label(flow_run.parameters['dataset'])}"


def evaluate_run_name() -> str:
    parameters = flow_run.parameters
    return f"evaluate {parameters['model_uri']} {dataset_label(parameters['dataset'])}"


def predict_run_name() -> str:
    return f"predict {Path(flow_run.parameters['input']).name}"


def label_issues_run_name() -> str:
    return f"label-issues {dataset_label(flow_run.parameters['dataset'])}"
