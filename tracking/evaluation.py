"""A model's evaluation and report in its MLflow run: test scores, confusion table, pictures,
the test predictions the report reads back, and the report's HTML page."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from cnn.config import AUGMENTATIONS
from cnn.data.dataset import Dataset, open_dataset, split_groups
from cnn.evaluation.lab_scores import LabScores, lab_scores
from cnn.evaluation.metrics import (
    CONFUSION_COLUMNS,
    CONFUSION_ROWS,
    BinaryEvaluation,
    evaluate_predictions,
)
from cnn.evaluation.parasitemia import model_error_rates
from cnn.evaluation.promotion import PromotionDecision
from cnn.evaluation.scoring import SplitScores, fit_images, model_image_size, split_images
from cnn.reports.figures import confusion_heatmap, reliability_figure, roc_curve_figure
from cnn.reports.report import build_run_report, report_cell_positions
from cnn.serving import threshold_of
from tracking.models import load_keras_model, model_metadata
from tracking.runs import run_link
from tracking.training import (
    AUGMENTATION_DIR,
    augmentation_preview_path,
    dataset_input,
    log_dataset_inputs,
)

TEST_PREDICTIONS = "evaluation/test_predictions.parquet"
"""Label, P(parasitized) and patient of every test image, in the split's order (the report
reads it)."""
PATIENTS_TABLE = "evaluation/patients.json"
HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
REPORT_DIR = "report"


def confusion_frame(evaluation: BinaryEvaluation) -> pd.DataFrame:
    """The confusion matrix, rows true:yes / true:no and columns pred:yes / pred:no."""
    return pd.DataFrame(
        evaluation.confusion_matrix, index=list(CONFUSION_ROWS), columns=list(CONFUSION_COLUMNS)
    ).reset_index(names="actual")


def log_evaluation(
    run_id: str,
    dataset: Dataset,
    scores: SplitScores,
    evaluation: BinaryEvaluation,
    threshold: float,
    lab: LabScores,
) -> pd.DataFrame:
    """The test split as evaluation input, `test_*` metrics (calibration and parasitemia
    error included), the scores at the threshold, every test prediction, the confusion
    table and heatmap, the ROC curve with the operating point, the reliability diagram and
    the per-patient table; returns the confusion table."""
    confusion = confusion_frame(evaluation)
    log_dataset_inputs(run_id, dataset_input(dataset, "evaluation", split="test"))
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                **{f"test_{name}": value for name, value in evaluation.scores().items()},
                **{f"test_{name}": value for name, value in lab.metrics().items()},
                "test_threshold": threshold,
            }
        )
        mlflow.log_dict(
            {**evaluation.as_dict(), **lab.metrics(), "threshold": threshold},
            "evaluation/test_scores.json",
        )
        _log_test_predictions(scores, split_groups(dataset, "test"))
        mlflow.log_table(confusion, "evaluation/confusion_matrix.json")
        mlflow.log_table(lab.patients, PATIENTS_TABLE)
        mlflow.log_figure(reliability_figure(lab.curves()), "evaluation/reliability.png")
        mlflow.log_figure(confusion_heatmap(evaluation), "evaluation/confusion_matrix.png")
        mlflow.log_figure(
            roc_curve_figure(scores.labels, scores.parasitized_probability, threshold),
            "evaluation/roc_curve.png",
        )
    return confusion


def _log_test_predictions(scores: SplitScores, groups: np.ndarray) -> None:
    table = pd.DataFrame(
        {
            "label": scores.labels.astype(np.int8),
            "parasitized_probability": scores.parasitized_probability,
            "group": groups.astype(str),
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / Path(TEST_PREDICTIONS).name
        table.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(TEST_PREDICTIONS).parent))


def load_test_predictions(artifact_uri: str) -> tuple[SplitScores, np.ndarray]:
    """The test labels, P(parasitized) and patients that `log_evaluation` logged to a run."""
    table = pd.read_parquet(
        mlflow.artifacts.download_artifacts(f"{artifact_uri}/{TEST_PREDICTIONS}")
    )
    scores = SplitScores(
        labels=table["label"].to_numpy(),
        parasitized_probability=table["parasitized_probability"].to_numpy(np.float32),
        resized_from=None,
    )
    return scores, table["group"].to_numpy(object)


def model_lab_scores(
    metadata: dict, scores: SplitScores, groups: np.ndarray
) -> tuple[LabScores, str | None]:
    """Calibration and per-patient parasitemia of a model's test scores, from what its
    metadata (`tracking.models.model_metadata`) records: threshold, temperature, validation
    error rates; and a note when the parasitemia cannot be corrected."""
    rates, note = model_error_rates(metadata)
    labels, probability = scores.labels, scores.parasitized_probability
    threshold, temperature = threshold_of(metadata), metadata.get("temperature")
    return lab_scores(labels, probability, groups, threshold, temperature, rates), note


@dataclass(frozen=True)
class LoggedReport:
    """A report logged to its run: the summary it opens with, and where its HTML page is."""

    summary: dict
    uri: str
    run: mlflow.entities.Run


def log_run_report(
    model_uri: str, dataset_path: str, run_id: str, promotion: PromotionDecision | None
) -> LoggedReport:
    """Render the run's report (PNGs + one HTML page) from what the run logged (its test
    predictions, per-epoch metrics, augmentation previews) into its artifacts under
    `report/`."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    model = load_keras_model(model_uri)
    metadata = model_metadata(model_uri)
    threshold = threshold_of(metadata)
    dataset = open_dataset(dataset_path)
    scores, groups = load_test_predictions(run.info.artifact_uri)
    lab, _ = model_lab_scores(metadata, scores, groups)
    positions = report_cell_positions(scores.labels, scores.parasitized_probability, threshold)
    images = fit_images(split_images(dataset, "test", positions), model_image_size(model))
    evaluation = evaluate_predictions(scores.labels, scores.parasitized_probability, threshold)
    summary = {
        "variant": run.data.params.get("variant") or model.name,
        "MLflow run": run_id,
        "model": model_uri,
        "dataset": f"{dataset.name} ({dataset.rows} images)",
        "test images": evaluation.count,
        "threshold": round(threshold, 4),
        **{name: round(value, 4) for name, value in evaluation.scores().items()},
        **{name: round(value, 4) for name, value in lab.metrics().items()},
    }
    if promotion is not None:
        summary["promotion"] = f"{promotion.alias}: {promotion.reason}"
    report = build_run_report(
        title=f"Malaria CNN: {summary['variant']} run {run_id[:8]}",
        summary=summary,
        model=model,
        labels=scores.labels,
        parasitized_probability=scores.parasitized_probability,
        cells=dict(zip(positions.tolist(), images, strict=True)),
        history=_history(client, run_id),
        augmentation_grids=_augmentation_previews(client, run),
        augmentation_used=run.data.params.get("augment"),
        threshold=threshold,
        lab=lab,
    )
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name, png in report.pictures.items():
            (folder / name).write_bytes(png)
        (folder / "report.html").write_text(report.html, encoding="utf-8")
        client.log_artifacts(run_id, str(folder), REPORT_DIR)
    return LoggedReport(summary, f"{run.info.artifact_uri}/{REPORT_DIR}/report.html", run)


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


def report_markdown(report: LoggedReport, tracking_uri: str) -> str:
    """The Prefect summary of a report: its table, and where to open the page."""
    summary, run = report.summary, report.run
    rows = "\n".join(f"| {key} | {value} |" for key, value in summary.items())
    where = f"`{report.uri}`"
    if tracking_uri.startswith("http"):
        link = run_link(tracking_uri, run.info.experiment_id, run.info.run_id)
        where += f" (run {link} in the MLflow UI, Artifacts → {REPORT_DIR}/report.html)"
    return f"## {summary['variant']}: run summary\n\n| | |\n|---|---|\n{rows}\n\nReport: {where}\n"
