"""Evaluate task: score a logged model on a dataset's test split, log scores and pictures."""

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cnn.data.dataset import open_dataset, split_groups
from cnn.evaluation.lab_scores import LabScores
from cnn.evaluation.metrics import evaluate_predictions
from cnn.evaluation.scoring import predict_split
from cnn.serving import threshold_of
from tasks.keys import artifact_key
from tasks.retry import IO_RETRIES
from tracking.evaluation import log_evaluation, model_lab_scores
from tracking.models import load_keras_model, model_metadata
from tracking.runs import link_to_run
from tracking.store import tracking_uri


@task(name="evaluate-model", task_run_name="evaluate-model {label}", **IO_RETRIES)
def evaluate_model(model_uri: str, dataset_path: str, run_id: str, label: str) -> dict:
    """Test-split scores of `model_uri` at its operating point, logged to the run as `test_*`
    metrics (calibration error, Brier score and per-patient parasitemia error included), a
    confusion table and a per-patient table (MLflow, and Prefect under
    `confusion-matrix-<label>` and `patients-<label>`), a confusion heatmap, a ROC curve and
    a reliability diagram; the test split is the run's evaluation input."""
    logger = get_run_logger()
    model = load_keras_model(model_uri)
    dataset = open_dataset(dataset_path)
    scores = predict_split(model, dataset, "test")
    if scores.resized_from:
        logger.warning(
            "The model takes %d px images; the dataset's %d px test images were resized",
            *(model.input_shape[1], scores.resized_from),
        )
    metadata = model_metadata(model_uri)  # one lookup: threshold, temperature, error rates
    threshold = threshold_of(metadata)
    evaluation = evaluate_predictions(scores.labels, scores.parasitized_probability, threshold)
    lab, note = model_lab_scores(metadata, scores, split_groups(dataset, "test"))
    confusion = log_evaluation(run_id, dataset, scores, evaluation, threshold, lab)
    logger.info(
        "Test accuracy %.3f (threshold %.3f) on %d images; confusion (rows true:yes/no, "
        "cols pred:yes/no) %s",
        *(evaluation.accuracy, threshold, evaluation.count, evaluation.confusion_matrix),
    )
    _publish_tables(confusion, lab, note, model_uri, run_id, label)
    return {**evaluation.as_dict(), **lab.metrics(), "threshold": threshold}


def _publish_tables(
    confusion: pd.DataFrame,
    lab: LabScores,
    note: str | None,
    model_uri: str,
    run_id: str,
    label: str,
) -> None:
    """The confusion matrix and the per-patient table as Prefect table artifacts."""
    in_mlflow = f"MLflow run {link_to_run(tracking_uri(), run_id)}"
    create_table_artifact(
        key=artifact_key("confusion-matrix", label),
        table=confusion.to_dict(orient="records"),
        description=f"Test confusion matrix of {model_uri} (yes = parasitized), {in_mlflow}",
    )
    create_table_artifact(
        key=artifact_key("patients", label),
        table=lab.patients.to_dict(orient="records"),
        description=f"Test patients of {model_uri}: estimated vs labelled parasitemia, mean "
        f"absolute error {lab.parasitemia_mae:.4f}{'; ' + note if note else ''}; {in_mlflow}",
    )
