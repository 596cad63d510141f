"""Predict task: score a folder or Parquet file with any model, write Parquet predictions."""

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from cnn.predict import (
    InputReport,
    iter_input_batches,
    model_image_size,
    score_batches,
    write_predictions,
)
from tasks.registry import load_keras_model, model_threshold
from tasks.retry import IO_RETRIES


class PredictionSummary(BaseModel):
    """Where the predictions went and what the input needed."""

    model_uri: str
    input: str
    output: str
    rows: int
    parasitized: int
    resized: int
    converted_to_rgb: int
    skipped: list[dict[str, str]]
    seconds: float


@task(name="predict-images", **IO_RETRIES)
def predict_images(
    model_uri: str, input_path: str, output_path: str, batch_size: int
) -> PredictionSummary:
    """Score every image of the input with the model, in batches, at the model's image size;
    labels at the model's operating point."""
    logger = get_run_logger()
    started = time.perf_counter()
    model = load_keras_model(model_uri)
    report = InputReport()
    batches = iter_input_batches(input_path, model_image_size(model), batch_size, report)
    table = score_batches(model, batches, model_threshold(model_uri))
    write_predictions(table, output_path, {"model_uri": model_uri, "input": input_path})
    for note in report.notes():
        logger.warning("%s", note)
    parasitized = sum(name == "parasitized" for name in table.column("predicted_name").to_pylist())
    summary = PredictionSummary(
        model_uri=model_uri,
        input=input_path,
        output=output_path,
        rows=table.num_rows,
        parasitized=parasitized,
        resized=report.resized,
        converted_to_rgb=report.converted_to_rgb,
        skipped=report.skipped,
        seconds=round(time.perf_counter() - started, 3),
    )
    create_table_artifact(
        key="predictions",
        table=[{"field": key, "value": str(value)} for key, value in summary.model_dump().items()],
        description=f"Predictions of {model_uri} for {input_path}",
    )
    logger.info(
        "Scored %d images (%d parasitized) with %s → %s",
        table.num_rows,
        parasitized,
        model_uri,
        output_path,
    )
    return summary
