"""Evaluate task: score a logged model on a dataset's test split, log the scores."""

import mlflow
import mlflow.keras
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cnn.batches import SplitBatches
from cnn.dataset import open_dataset
from cnn.metrics import CONFUSION_COLUMNS, CONFUSION_ROWS, evaluate_predictions
from cnn.training import PREDICT_BATCH, predict_uninfected_probability
from tasks.tracking import configure_tracking


@task(name="evaluate-model")
def evaluate_model(model_uri: str, dataset_path: str, run_id: str) -> dict:
    """Test-split scores of `model_uri`, logged as `test_*` metrics and a confusion table."""
    logger = get_run_logger()
    configure_tracking()
    dataset = open_dataset(dataset_path)
    model = mlflow.keras.load_model(model_uri)
    test_batches = SplitBatches(dataset, "test", PREDICT_BATCH)
    probabilities = predict_uninfected_probability(model, test_batches)
    evaluation = evaluate_predictions(test_batches.labels, probabilities)
    confusion = pd.DataFrame(
        evaluation.confusion_matrix, index=list(CONFUSION_ROWS), columns=list(CONFUSION_COLUMNS)
    )
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"test_{name}": value for name, value in evaluation.scores().items()})
        mlflow.log_dict(evaluation.as_dict(), "evaluation/test_scores.json")
        mlflow.log_table(confusion.reset_index(names="actual"), "evaluation/confusion_matrix.json")
    logger.info(
        "Test accuracy %.3f on %d images; confusion (rows true:yes/no, cols pred:yes/no) %s",
        evaluation.accuracy,
        evaluation.count,
        evaluation.confusion_matrix,
    )
    create_table_artifact(
        key="confusion-matrix",
        table=confusion.reset_index(names="actual").to_dict(orient="records"),
        description=f"Test confusion matrix of {model_uri} (yes = parasitized)",
    )
    return evaluation.as_dict()
