"""An ensemble of a run's variants, logged and registered like any trained model."""

import time
from dataclasses import dataclass

import mlflow

from cnn.config import TrainConfig
from cnn.data.dataset import open_dataset
from cnn.models.ensembles import ENSEMBLE, build_ensemble
from cnn.training.train import operating_point
from tracking.models import load_keras_model, log_served_model, validation_sample
from tracking.runs import TrainedModel, VariantRun
from tracking.training import dataset_input, log_dataset_inputs


@dataclass(frozen=True)
class LoggedEnsemble:
    """The registered ensemble, and the members it averages with their validation losses."""

    model: TrainedModel
    members: list[VariantRun]
    validation_loss: dict[str, float]


def log_ensemble_model(
    dataset_path: str,
    candidates: list[VariantRun],
    config: TrainConfig,
    run_id: str,
    registered_model: str,
) -> LoggedEnsemble:
    """Average the `config.ensemble` candidates with the lowest validation loss, choose its
    threshold on validation, and log and register it to the run `run_id`."""
    client = mlflow.MlflowClient()
    started = time.perf_counter()
    best_loss = {
        run.run_id: min(point.value for point in client.get_metric_history(run.run_id, "val_loss"))
        for run in candidates
    }
    members = sorted(candidates, key=lambda run: best_loss[run.run_id])[: config.ensemble]
    dataset = open_dataset(dataset_path)
    ensemble = build_ensemble([load_keras_model(run.model_uri) for run in members])
    point = operating_point(ensemble, dataset, config, test_time_augmentation=False)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(
            {
                "variant": ENSEMBLE,
                "members": ",".join(run.variant for run in members),
                "member_runs": ",".join(run.run_id for run in members),
                "parameters": ensemble.count_params(),
                "target_sensitivity": config.target_sensitivity,
            }
        )
        log_dataset_inputs(run_id, dataset_input(dataset, "training"))
        mlflow.log_metrics({"epochs_run": 0, "train_seconds": time.perf_counter() - started})
        sample = validation_sample(dataset)
        info = log_served_model(sample, point, config, registered_model)
    trained = TrainedModel(model_uri=info.model_uri, version=int(info.registered_model_version))
    return LoggedEnsemble(trained, members, {run.variant: best_loss[run.run_id] for run in members})
