"""Evaluate flow: re-score any model on any dataset's test split, as an MLflow run nested under
a parent named as the flow run (as every flow's models are)."""

from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import Field

from flows import names
from tasks.compare import log_evaluation_parent
from tasks.evaluate import evaluate_model
from tasks.report import render_report
from tracking.config import TrackingConfig
from tracking.runs import tracked_run
from tracking.store import require_tracking_server


@flow(name="evaluate", flow_run_name=names.evaluate_run_name, log_prints=True)
def evaluate(
    model_uri: Annotated[str, Field(min_length=1, description="Any MLflow model URI")],
    dataset: Annotated[str, Field(min_length=1, description="Path of an ingested dataset")],
    tracking: TrackingConfig = TrackingConfig(),
) -> dict:
    """Test-split scores, confusion matrix and report of `model_uri` on `dataset`."""
    require_tracking_server()
    tags = {"evaluation_of": model_uri, "dataset": dataset, **names.mlflow_tags()}
    with tracked_run(tracking.experiment, flow_run.name, tags) as parent_run_id:
        with tracked_run(tracking.experiment, model_uri, tags, parent_run_id) as run_id:
            scores = evaluate_model(model_uri, dataset, run_id, "evaluate")
            report_uri = render_report(model_uri, dataset, run_id)
        log_evaluation_parent(parent_run_id, dataset, scores)
    return {
        "run_id": run_id,
        "parent_run_id": parent_run_id,
        "model_uri": model_uri,
        "report": report_uri,
        **scores,
    }
