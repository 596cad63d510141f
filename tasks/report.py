"""Report task: the run's pictures and HTML report, logged to MLflow and summarised in Prefect."""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from cnn.config import AUGMENTATIONS
from cnn.dataset import open_dataset
from cnn.metrics import evaluate_predictions
from cnn.predict import fit_images, model_image_size, split_images
from cnn.promotion import PromotionDecision
from cnn.reports import build_run_report, report_cell_positions
from tasks.evaluate import load_test_predictions
from tasks.registry import load_keras_model, model_threshold
from tasks.retry import IO_RETRIES
from tasks.tracking import configure_tracking
from tasks.train import AUGMENTATION_DIR, augmentation_preview_path

HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
REPORT_DIR = "report"


@task(name="render-report", **IO_RETRIES)
def render_report(
    model_uri: str, dataset_path: str, run_id: str, promotion: PromotionDecision | None = None
) -> str:
    """Render the run's report (PNGs + one HTML page) into its MLflow artifacts under
    `report/`, leave a Prefect markdown summary (key `run-report`); return the HTML's URI.
    Runs after `evaluate-model`, whose logged test predictions it reads."""
    logger = get_run_logger()
    tracking_uri = configure_tracking()
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    model = load_keras_model(model_uri)
    threshold = model_threshold(model_uri)
    dataset = open_dataset(dataset_path)
    scores = load_test_predictions(run.info.artifact_uri)
    positions = report_cell_positions(scores.labels, scores.uninfected_probability, threshold)
    images = fit_images(split_images(dataset, "test", positions), model_image_size(model))
    evaluation = evaluate_predictions(scores.labels, scores.uninfected_probability, threshold)
    params = run.data.params
    summary = {
        "variant": params.get("variant") or model.name,
        "MLflow run": run_id,
        "model": model_uri,
        "dataset": f"{dataset.name} ({dataset.rows} images)",
        "test images": evaluation.count,
        "threshold": round(threshold, 4),
        **{name: round(value, 4) for name, value in evaluation.scores().items()},
    }
    if promotion is not None:
        summary["promotion"] = f"{promotion.alias}: {promotion.reason}"
    report = build_run_report(
        title=f"Malaria CNN: {summary['variant']} run {run_id[:8]}",
        summary=summary,
        model=model,
        labels=scores.labels,
        uninfected_probability=scores.uninfected_probability,
        cells=dict(zip(positions.tolist(), images, strict=True)),
        history=_history(client, run_id),
        augmentation_grids=_augmentation_previews(client, run),
        augmentation_used=params.get("augment"),
        threshold=threshold,
    )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, png in report.pictures.items():
            (folder / name).write_bytes(png)
        (folder / "report.html").write_text(report.html, encoding="utf-8")
        client.log_artifacts(run_id, str(folder), REPORT_DIR)
    report_uri = f"{run.info.artifact_uri}/{REPORT_DIR}/report.html"
    create_markdown_artifact(
        key="run-report",
        markdown=_markdown(summary, report_uri, tracking_uri, run),
        description=f"Report of MLflow run {run_id}",
    )
    logger.info("Report of run %s: %s", run_id, report_uri)
    return report_uri


def _history(client: mlflow.MlflowClient, run_id: str) -> dict[str, list[float]]:
    """The per-epoch metrics the train task logged, as a Keras history."""
    history = {}
    for name in HISTORY_METRICS:
        points = sorted(client.get_metric_history(run_id, name), key=lambda point: point.step)
        if points:
            history[name] = [point.value for point in points]
    return history


def _augmentation_previews(client: mlflow.MlflowClient, run) -> dict[str, np.ndarray]:
    """The previews the train task logged, by policy (none for an evaluation run)."""
    logged = {item.path for item in client.list_artifacts(run.info.run_id, AUGMENTATION_DIR)}
    return {
        policy: np.asarray(mlflow.artifacts.load_image(f"{run.info.artifact_uri}/{path}"))
        for policy in AUGMENTATIONS
        if (path := augmentation_preview_path(policy)) in logged
    }


def _markdown(summary: dict, report_uri: str, tracking_uri: str, run) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items())
    where = f"`{report_uri}`"
    if tracking_uri.startswith("http"):
        run_path = f"experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        link = f"{tracking_uri.rstrip('/')}/#/{run_path}"
        where += f" ([run in the MLflow UI]({link}), Artifacts → {REPORT_DIR}/report.html)"
    return f"## {summary['variant']}: run summary\n\n| | |\n|---|---|\n{rows}\n\nReport: {where}\n"
