"""Evaluate task: score a logged model on a dataset's test split, log scores and pictures."""

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cnn.dataset import open_dataset
from cnn.metrics import evaluate_predictions
from cnn.predict import predict_split
from tasks.retry import IO_RETRIES
from tracking.evaluation import log_evaluation
from tracking.models import load_keras_model, model_threshold
from tracking.store import configure_tracking


@task(name="evaluate-model", **IO_RETRIES)
def evaluate_model(model_uri: str, dataset_path: str, run_id: str) -> dict:
    """Test-split scores of `model_uri` at its operating point, logged to the run as `test_*`
    metrics, a confusion table (MLflow and Prefect), a confusion heatmap and a ROC curve."""
    logger = get_run_logger()
    configure_tracking()
    model = load_keras_model(model_uri)
    scores = predict_split(model, open_dataset(dataset_path), "test")
    if scores.resized_from:
        logger.warning(
            "The model takes %d px images; the dataset's %d px test images were resized",
            *(model.input_shape[1], scores.resized_from),
        )
    threshold = model_threshold(model_uri)
    evaluation = evaluate_predictions(scores.labels, scores.uninfected_probability, threshold)
    confusion = log_evaluation(run_id, scores, evaluation, threshold)
    logger.info(
        "Test accuracy %.3f (threshold %.3f) on %d images; confusion (rows true:yes/no, "
        "cols pred:yes/no) %s",
        *(evaluation.accuracy, threshold, evaluation.count, evaluation.confusion_matrix),
    )
    create_table_artifact(
        key="confusion-matrix",
        table=confusion.to_dict(orient="records"),
        description=f"Test confusion matrix of {model_uri} (yes = parasitized)",
    )
    return {**evaluation.as_dict(), "threshold": threshold}
