"""Predict task: score a folder or Parquet file with any model, write Parquet predictions."""

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cnn.prediction.batch import PredictionSummary, predict_to_file
from tasks.retry import IO_RETRIES
from tracking.models import load_keras_model, model_threshold


@task(name="predict-images", **IO_RETRIES)
def predict_images(
    model_uri: str, input_path: str, output_path: str, batch_size: int
) -> PredictionSummary:
    """Score every image of the input with the model, in batches, at the model's image size;
    labels at the model's operating point."""
    logger = get_run_logger()
    model, threshold = load_keras_model(model_uri), model_threshold(model_uri)
    summary, notes = predict_to_file(
        model, threshold, model_uri, input_path, output_path, batch_size
    )
    for note in notes:
        logger.warning("%s", note)
    create_table_artifact(
        key="predictions",
        table=[{"field": key, "value": str(value)} for key, value in summary.model_dump().items()],
        description=f"Predictions of {model_uri} for {input_path}",
    )
    logger.info(
        "Scored %d images (%d parasitized) with %s → %s",
        *(summary.rows, summary.parasitized, model_uri, output_path),
    )
    return summary
