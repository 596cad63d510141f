"""Evaluate task: score a logged model on a dataset's test split, log scores and pictures."""

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cnn.data.dataset import open_dataset
from cnn.evaluation.metrics import evaluate_predictions
from cnn.evaluation.scoring import predict_split
from tasks.keys import artifact_key
from tasks.retry import IO_RETRIES
from tracking.evaluation import log_evaluation
from tracking.models import load_keras_model, model_threshold
from tracking.runs import link_to_run
from tracking.store import tracking_uri


@task(name="evaluate-model", task_run_name="evaluate-model {label}", **IO_RETRIES)
def evaluate_model(model_uri: str, dataset_path: str, run_id: str, label: str) -> dict:
    """Test-split scores of `model_uri` at its operating point, logged to the run as `test_*`
    metrics, a confusion table (MLflow, and Prefect under `confusion-matrix-<label>`), a
    confusion heatmap and a ROC curve; the test split is the run's evaluation input."""
    logger = get_run_logger()
    model = load_keras_model(model_uri)
    dataset = open_dataset(dataset_path)
    scores = predict_split(model, dataset, "test")
    if scores.resized_from:
        logger.warning(
            "The model takes %d px images; the dataset's %d px test images were resized",
            *(model.input_shape[1], scores.resized_from),
        )
    threshold = model_threshold(model_uri)
    evaluation = evaluate_predictions(scores.labels, scores.parasitized_probability, threshold)
    confusion = log_evaluation(run_id, dataset, scores, evaluation, threshold)
    logger.info(
        "Test accuracy %.3f (threshold %.3f) on %d images; confusion (rows true:yes/no, "
        "cols pred:yes/no) %s",
        *(evaluation.accuracy, threshold, evaluation.count, evaluation.confusion_matrix),
    )
    create_table_artifact(
        key=artifact_key("confusion-matrix", label),
        table=confusion.to_dict(orient="records"),
        description=f"Test confusion matrix of {model_uri} (yes = parasitized), MLflow run "
        + link_to_run(tracking_uri(), run_id),
    )
    return {**evaluation.as_dict(), "threshold": threshold}
