"""Predict flow: score new cell images with a registered model (the champion by default)."""

from typing import Annotated

from prefect import flow
from pydantic import AfterValidator, Field

from cnn.config import (
    DEFAULT_FLAG_PARASITEMIA,
    DEFAULT_GROUPING,
    PREDICT_BATCH,
    PredictBatch,
    check_grouping,
)
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
    group_by: Annotated[
        str,
        AfterValidator(check_grouping),
        Field(description="Cells of one patient: prefix (NIH file name), folder, column:NAME"),
    ] = DEFAULT_GROUPING,
    flag_parasitemia: Annotated[
        float, Field(ge=0.0, le=1.0, description="Flag a patient whose parasitemia is above this")
    ] = DEFAULT_FLAG_PARASITEMIA,
) -> PredictionSummary:
    """Write one row per image (source id, P(parasitized), predicted label) and, beside it,
    one row per patient (cells, predicted parasitized, parasitemia with its 95% interval,
    flagged)."""
    require_tracking_server()
    return predict_images(model_uri, input, output, batch_size, group_by, flag_parasitemia)
