"""A training in its MLflow run: params and dataset first, every epoch's metrics as it ends
(kept while the server is away), then the model's facts, augmentation previews and the
registered model; a model MLflow would not take is kept on disk."""

import time
import warnings
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from cnn.config import AUGMENTATIONS, TrainConfig
from cnn.data.dataset import Dataset
from cnn.models.augmentation import augmentation_preview
from cnn.progress import Progress
from cnn.training.checkpoints import CheckpointStore
from cnn.training.train import TrainingResult, fit_variant
from tracking.models import ModelNotLoggedError, keep_model, log_served_model, validation_sample
from tracking.store import first_line, tracking_uri

AUGMENTATION_DIR = "augmentation"
MAX_METRICS_PER_BATCH = 1000
"""MLflow's limit for one `log_batch` call."""


def augmentation_preview_path(policy: str) -> str:
    """Where a run keeps the preview of a named augmentation policy."""
    return f"{AUGMENTATION_DIR}/{policy}.png"


def fit_and_register(
    dataset: Dataset,
    variant: str,
    config: TrainConfig,
    run_id: str,
    registered_model: str,
    checkpoints: CheckpointStore | None,
    logger: Any,
    on_progress: Progress | None = None,
) -> tuple[TrainingResult, ModelInfo]:
    """Train (resuming from `checkpoints`, telling `on_progress` how far it is), log the run
    and the registered model; if the model cannot be logged, keep it on disk and say where."""
    client = mlflow.MlflowClient()
    epoch_log = EpochMetricLog(client, run_id, logger, f"{variant} epoch %d/{config.epochs}")
    result = None
    try:
        with mlflow.start_run(run_id=run_id, log_system_metrics=True):
            mlflow.log_params(
                {
                    "variant": variant,
                    **flatten_params(config.model_dump()),
                    "image_shape": dataset.image_shape,
                }
            )
            log_dataset_inputs(run_id, dataset_input(dataset, "training"))
            mlflow.log_dict(dataset.manifest.model_dump(mode="json"), "dataset/manifest.json")
            result = fit_variant(
                dataset,
                variant,
                config,
                on_epoch_end=epoch_log.report,
                on_progress=on_progress,
                checkpoints=checkpoints,
            )
            if result.resumed_epochs:
                logger.info(
                    "%s resumed after epoch %d from its checkpoint in %s",
                    variant,
                    result.resumed_epochs,
                    checkpoints.root.uri,
                )
                epoch_log.backfill(result.history, result.resumed_epochs)
            epoch_log.flush()
            return result, _log_trained_model(dataset, config, result, registered_model)
    except Exception as error:
        served = result.operating_point.served if result else None
        kept = keep_model(served, checkpoints, run_id)
        if kept is None:  # nothing trained yet
            raise
        raise ModelNotLoggedError(
            f"the trained model could not be logged to MLflow ({tracking_uri()}: "
            f"{first_line(error)}); it is kept at {kept.uri}"
            + ("; a retry or rerun logs it without training again" if checkpoints else "")
        ) from error


def _log_trained_model(
    dataset: Dataset, config: TrainConfig, result: TrainingResult, registered_model: str
) -> ModelInfo:
    """Log the trained model's facts, augmentation preview and the model itself (registered)
    to the active run."""
    mlflow.log_params(
        {
            "parameters": result.model.count_params(),
            "device": result.device,
            "batch_size_used": result.batch_size,
            "devices_used": result.devices,
        }
    )
    mlflow.log_metrics(
        {
            "train_seconds": result.seconds,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "resumed_epochs": result.resumed_epochs,
        }
    )
    sample = validation_sample(dataset)
    for policy in AUGMENTATIONS:
        if policy != "none":  # every named policy's preview, so runs can be compared
            preview = augmentation_preview(sample[0], AUGMENTATIONS[policy], seed=config.seed)
            mlflow.log_image(preview, augmentation_preview_path(policy))
    return log_served_model(sample, result.operating_point, config, registered_model)


class EpochMetricLog:
    """Logs each epoch's metrics to the run as it ends; while the tracking server is away,
    keeps them (training goes on) and logs them with `flush`."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str, logger: Any, label: str) -> None:
        self._client, self._run_id, self._logger, self._label = client, run_id, logger, label
        self._pending: list[Metric] = []

    def report(self, epoch: int, metrics: dict[str, float]) -> None:
        self._logger.info(
            self._label + ": %s",
            epoch,
            ", ".join(f"{name}={value:.4f}" for name, value in metrics.items()),
        )
        self._pending += _metrics_of_epoch(epoch, metrics)
        if len(self._pending) > len(metrics):
            return  # already failing: keep them for `flush`, do not stall training
        try:
            self.flush()
        except Exception as error:  # the tracking server is away: keep on training
            self._logger.warning(
                "Cannot log epoch %d's metrics (%s); keeping them to log after training",
                epoch,
                type(error).__name__,
            )

    def backfill(self, history: dict[str, list[float]], epochs: int) -> None:
        """Queue the first `epochs` epochs of `history` (taken from a checkpoint) that the
        run does not have yet."""
        logged = {metric.step for metric in self._client.get_metric_history(self._run_id, "loss")}
        for epoch in range(1, epochs + 1):
            if epoch not in logged:
                values = {name: values[epoch - 1] for name, values in history.items()}
                self._pending += _metrics_of_epoch(epoch, values)

    def flush(self) -> None:
        """Log every kept metric; raises if the server still cannot take them."""
        while self._pending:
            self._client.log_batch(self._run_id, metrics=self._pending[:MAX_METRICS_PER_BATCH])
            del self._pending[:MAX_METRICS_PER_BATCH]


def _metrics_of_epoch(epoch: int, metrics: dict[str, float]) -> list[Metric]:
    timestamp = int(time.time() * 1000)
    return [Metric(name, float(value), timestamp, epoch) for name, value in metrics.items()]


def flatten_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted MLflow params: {"augmentation.zoom": 0.15, …}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


DUPLICATE_ROW_MESSAGES = ("UNIQUE constraint failed", "duplicate key", "Duplicate entry")
"""How SQLite, PostgreSQL and MySQL say a row with that key was inserted meanwhile."""


def log_dataset_inputs(run_id: str, *inputs: DatasetInput) -> None:
    """Log datasets as the run's inputs (`dataset_input` makes them).

    Runs that start at once on a dataset new to the experiment (the fan-out's variants) can
    both insert it; the store refuses the second, which finds it logged when it tries again.
    """
    client = mlflow.MlflowClient()
    try:
        client.log_inputs(run_id, datasets=list(inputs))
    except MlflowException as error:
        if not any(message in str(error) for message in DUPLICATE_ROW_MESSAGES):
            raise
        client.log_inputs(run_id, datasets=list(inputs))


def as_mlflow_dataset(dataset: Dataset, split: str | None = None) -> MetaDataset:
    """The dataset (or one of its splits, named `<dataset>/<split>`) as an MLflow input: its
    location and content fingerprint as digest."""
    with warnings.catch_warnings():  # MLflow registers its local source class twice
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(
            dataset.path.as_uri() if dataset.location.is_local else dataset.uri
        )
    return MetaDataset(
        source=source,
        name=f"{dataset.name}/{split}" if split else dataset.name,
        digest=dataset.manifest.fingerprint,
    )


def dataset_input(dataset: Dataset, context: str, split: str | None = None) -> DatasetInput:
    """The dataset as a run input for `MlflowClient.log_inputs` (which, unlike
    `mlflow.log_input`, leaves the run's status alone)."""
    logged = as_mlflow_dataset(dataset, split)._to_mlflow_entity()
    return DatasetInput(logged, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
