"""Predict flow: score new cell images with a registered model (the champion by default)."""

from typing import Annotated

from prefect import flow
from pydantic import Field

from cnn.config import PREDICT_BATCH, PredictBatch
from cnn.prediction.batch import PredictionSummary
from flows import names
from tasks.predict import predict_images
from tracking.config import DEFAULT_MODEL_URI
from tracking.store import require_tracking_server


@flow(name="predict", flow_run_name=names.predict_run_name, log_prints=True)
def predict(
    input: Annotated[
        str, Field(min_length=1, description="A folder of images, a dataset, or a Parquet file")
    ],
    output: Annotated[str, Field(min_length=1, description="Parquet file to write")],
    model_uri: Annotated[
        str, Field(min_length=1, description="Any MLflow model URI")
    ] = DEFAULT_MODEL_URI,
    batch_size: PredictBatch = PREDICT_BATCH,
) -> PredictionSummary:
    """Write one row per image: source id, P(parasitized), predicted label."""
    require_tracking_server()
    return predict_images(model_uri, input, output, batch_size)
