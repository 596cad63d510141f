"""Predict task: score a folder or Parquet file with any model, write Parquet predictions
(a row per cell, and a row per patient beside them)."""

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from cnn.evaluation.parasitemia import model_error_rates
from cnn.prediction.batch import PatientOptions, PredictionSummary, predict_to_file
from cnn.serving import threshold_of
from tasks.retry import IO_RETRIES
from tracking.models import load_keras_model, model_metadata


@task(name="predict-images", **IO_RETRIES)
def predict_images(
    model_uri: str,
    input_path: str,
    output_path: str,
    batch_size: int,
    grouping: str,
    flag_above: float,
) -> PredictionSummary:
    """Score every image of the input with the model, in batches, at the model's image size;
    labels at the model's operating point; per patient the parasitemia corrected for the
    model's validation error rates."""
    logger = get_run_logger()
    model, metadata = load_keras_model(model_uri), model_metadata(model_uri)
    rates, uncorrected = model_error_rates(metadata)
    patients = PatientOptions(grouping, rates, flag_above)
    summary, per_patient, notes = predict_to_file(
        model, threshold_of(metadata), model_uri, input_path, output_path, batch_size, patients
    )
    for note in [*notes, *filter(None, [uncorrected])]:
        logger.warning("%s", note)
    create_table_artifact(
        key="predictions",
        table=[{"field": key, "value": str(value)} for key, value in summary.model_dump().items()],
        description=f"Predictions of {model_uri} for {input_path}",
    )
    create_table_artifact(
        key="patients",
        table=per_patient.to_dict(orient="records"),
        description=f"Parasitemia per {grouping} group of {input_path} ({model_uri})",
    )
    logger.info(
        "Scored %d images (%d parasitized) of %d groups (%d flagged) with %s → %s, %s",
        *(summary.rows, summary.parasitized, summary.groups, len(summary.flagged_groups)),
        *(model_uri, output_path, summary.patients),
    )
    return summary
