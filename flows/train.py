"""Train flows: one `train-variant` flow run per CNN variant, each its own MLflow run."""

from prefect import flow
from pydantic import BaseModel

from cnn.config import DEFAULT_VARIANTS, TrainConfig, VariantName, VariantNames
from tasks.evaluate import evaluate_model
from tasks.tracking import TrackingConfig, tracked_run
from tasks.train import train_model


class VariantRun(BaseModel):
    """One variant's trained, evaluated and registered model."""

    variant: str
    run_id: str
    model_uri: str
    registered_version: int | None
    parameters: int
    epochs_run: int
    train_seconds: float
    test_accuracy: float
    test_scores: dict


@flow(name="train-variant", log_prints=True)
def train_variant(
    dataset: str,
    variant: VariantName = "simple",
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
) -> VariantRun:
    """Train one variant on the dataset, evaluate it on the test split, register it."""
    tags = {"variant": variant, "dataset": dataset}
    with tracked_run(tracking.experiment, run_name=variant, tags=tags) as run_id:
        trained = train_model(dataset, variant, training, run_id, tracking.registered_model)
        scores = evaluate_model(trained.model_uri, dataset, run_id)
    return VariantRun(
        variant=variant,
        run_id=run_id,
        model_uri=trained.model_uri,
        registered_version=trained.registered_version,
        parameters=trained.parameters,
        epochs_run=trained.epochs_run,
        train_seconds=trained.train_seconds,
        test_accuracy=scores["accuracy"],
        test_scores=scores,
    )


@flow(name="train", log_prints=True)
def train(
    dataset: str,
    variants: VariantNames = DEFAULT_VARIANTS,
    training: TrainConfig = TrainConfig(),
    tracking: TrackingConfig = TrackingConfig(),
) -> list[VariantRun]:
    """Train each variant as its own `train-variant` flow run, one after another."""
    return [train_variant(dataset, variant, training, tracking) for variant in variants]
