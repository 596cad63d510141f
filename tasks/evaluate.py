"""Evaluate task: score a logged model on a dataset's test split, log scores and pictures."""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cnn.dataset import open_dataset
from cnn.metrics import CONFUSION_COLUMNS, CONFUSION_ROWS, evaluate_predictions
from cnn.predict import SplitScores, predict_split
from cnn.reports import confusion_heatmap, roc_curve_figure
from tasks.registry import load_keras_model, model_threshold
from tasks.retry import IO_RETRIES
from tasks.tracking import configure_tracking

TEST_PREDICTIONS = "evaluation/test_predictions.parquet"
"""Label and P(uninfected) of every test image, in the split's order (the report reads it)."""


@task(name="evaluate-model", **IO_RETRIES)
def evaluate_model(model_uri: str, dataset_path: str, run_id: str) -> dict:
    """Test-split scores of `model_uri` at its operating point, logged to the run as `test_*`
    metrics, a confusion table (MLflow and Prefect), a confusion heatmap and a ROC curve."""
    logger = get_run_logger()
    configure_tracking()
    dataset = open_dataset(dataset_path)
    model = load_keras_model(model_uri)
    scores = predict_split(model, dataset, "test")
    if scores.resized_from:
        logger.warning(
            "The model takes %d px images; the dataset's %d px test images were resized",
            model.input_shape[1],
            scores.resized_from,
        )
    threshold = model_threshold(model_uri)
    evaluation = evaluate_predictions(scores.labels, scores.uninfected_probability, threshold)
    scores_at_threshold = {**evaluation.as_dict(), "threshold": threshold}
    confusion = pd.DataFrame(
        evaluation.confusion_matrix, index=list(CONFUSION_ROWS), columns=list(CONFUSION_COLUMNS)
    ).reset_index(names="actual")
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(
            {
                **{f"test_{name}": value for name, value in evaluation.scores().items()},
                "test_threshold": threshold,
            }
        )
        mlflow.log_dict(scores_at_threshold, "evaluation/test_scores.json")
        _log_test_predictions(scores)
        mlflow.log_table(confusion, "evaluation/confusion_matrix.json")
        mlflow.log_figure(confusion_heatmap(evaluation), "evaluation/confusion_matrix.png")
        mlflow.log_figure(
            roc_curve_figure(scores.labels, scores.uninfected_probability, threshold),
            "evaluation/roc_curve.png",
        )
    logger.info(
        "Test accuracy %.3f (threshold %.3f) on %d images; confusion (rows true:yes/no, "
        "cols pred:yes/no) %s",
        evaluation.accuracy,
        threshold,
        evaluation.count,
        evaluation.confusion_matrix,
    )
    create_table_artifact(
        key="confusion-matrix",
        table=confusion.to_dict(orient="records"),
        description=f"Test confusion matrix of {model_uri} (yes = parasitized)",
    )
    return scores_at_threshold


def _log_test_predictions(scores: SplitScores) -> None:
    table = pd.DataFrame(
        {
            "label": scores.labels.astype(np.int8),
            "uninfected_probability": scores.uninfected_probability,
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / Path(TEST_PREDICTIONS).name
        table.to_parquet(path, index=False)
        mlflow.log_artifact(str(path), str(Path(TEST_PREDICTIONS).parent))


def load_test_predictions(artifact_uri: str) -> SplitScores:
    """The test labels and P(uninfected) that `evaluate-model` logged to a run."""
    table = pd.read_parquet(
        mlflow.artifacts.download_artifacts(f"{artifact_uri}/{TEST_PREDICTIONS}")
    )
    return SplitScores(
        labels=table["label"].to_numpy(),
        uninfected_probability=table["uninfected_probability"].to_numpy(np.float32),
        resized_from=None,
    )
