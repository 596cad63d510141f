"""Predict flow: score new cell images with a registered model (the champion by default)."""

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.predict import PredictionSummary, predict_images
from tasks.tracking import require_tracking_server

DEFAULT_MODEL_URI = "models:/malaria-cnn@champion"


@flow(name="predict", log_prints=True)
def predict(
    input: Annotated[
        str, Field(min_length=1, description="A folder of images, a dataset, or a Parquet file")
    ],
    output: Annotated[str, Field(min_length=1, description="Parquet file to write")],
    model_uri: Annotated[
        str, Field(min_length=1, description="Any MLflow model URI")
    ] = DEFAULT_MODEL_URI,
    batch_size: Annotated[int, Field(ge=1, le=4096, description="Images per batch")] = 256,
) -> PredictionSummary:
    """Write one row per image: source id, P(parasitized), predicted label."""
    require_tracking_server()
    return predict_images(model_uri, input, output, batch_size)
