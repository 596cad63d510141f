"""Ensemble task: average the best variants of a run into one registered model."""

from prefect import get_run_logger, task

from cnn.config import TrainConfig
from tasks.retry import IO_RETRIES
from tracking.ensembles import log_ensemble_model
from tracking.runs import TrainedModel, VariantRun


@task(name="log-ensemble", **IO_RETRIES)
def log_ensemble(
    dataset_path: str,
    candidates: list[VariantRun],
    config: TrainConfig,
    run_id: str,
    registered_model: str,
) -> TrainedModel:
    """Average the `config.ensemble` candidates with the lowest validation loss, choose its
    threshold on validation, and log and register it to the run `run_id`."""
    logged = log_ensemble_model(dataset_path, candidates, config, run_id, registered_model)
    get_run_logger().info(
        "Ensemble of %s (validation loss %s) → %s",
        ", ".join(logged.validation_loss),
        ", ".join(f"{loss:.4f}" for loss in logged.validation_loss.values()),
        logged.model.model_uri,
    )
    return logged.model
