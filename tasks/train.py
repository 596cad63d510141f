"""Train task: fit one variant, log params, per-epoch metrics and the model to its MLflow run."""

import hashlib
import json
import os
import time
import uuid
import warnings
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import keras
import mlflow
import mlflow.keras
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.models import Model, infer_signature
from mlflow.models.model import MLMODEL_FILE_NAME, ModelInfo
from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from cnn.augmentation import augmentation_preview
from cnn.batches import SplitBatches
from cnn.checkpoints import CheckpointStore
from cnn.config import AUGMENTATIONS, TrainConfig
from cnn.dataset import Dataset, open_dataset
from cnn.locks import LockTimeoutError, exclusive_lock
from cnn.models import check_downloads
from cnn.serving import LOADER_MODULE, ServedModel
from cnn.training import TrainingResult, train_on_dataset
from tasks.ingest import data_dir
from tasks.retry import IO_RETRIES
from tasks.tracking import configure_tracking, first_line, tracking_uri

AUGMENTATION_DIR = "augmentation"


def augmentation_preview_path(policy: str) -> str:
    """Where a run keeps the preview of a named augmentation policy."""
    return f"{AUGMENTATION_DIR}/{policy}.png"


MAX_METRICS_PER_BATCH = 1000
"""MLflow's limit for one `log_batch` call."""


class TrainedModel(BaseModel):
    """A logged, registered model: where to load it, and its registry version."""

    model_uri: str
    version: int


class VariantRun(BaseModel):
    """One variant's trained, evaluated and registered model, as its MLflow run records it."""

    variant: str
    run_id: str
    model_uri: str
    registered_version: int | None
    parameters: int
    epochs_run: int
    train_seconds: float
    test_accuracy: float
    test_scores: dict
    alias: str | None = Field(None, description="champion or challenger, after promotion")
    promotion_reason: str | None = None


@task(name="check-downloads")
def check_variant_downloads(variants: list[str], config: TrainConfig) -> None:
    """Fail before any training if a variant needs weights that cannot be downloaded."""
    check_downloads(variants, config.variant_options)


@task(name="train-model", **IO_RETRIES)
def train_model(
    dataset_path: str, variant: str, config: TrainConfig, run_id: str, registered_model: str
) -> TrainedModel:
    """Train `variant` on the dataset, log everything to the MLflow run `run_id`, and register
    the model.

    Training checkpoints every epoch (unless `config.checkpoints` is off) and resumes from
    the last checkpoint of an identical unfinished training, so a retry after a lost tracking
    server or a rerun after a killed worker goes on where it stopped. A model that cannot be
    logged is kept on disk and the error names the path.
    """
    logger = get_run_logger()
    configure_tracking()
    dataset = open_dataset(dataset_path)
    with ExitStack() as held:
        checkpoints = _claim_checkpoints(dataset, variant, config, held, logger)
        result, info = _train_and_log(
            dataset, variant, config, run_id, registered_model, checkpoints, logger
        )
        if checkpoints is not None:
            checkpoints.clear()  # the model is safe in MLflow now
    logger.info(
        "%s: %d parameters, %d epochs (best %d) in %.1f s → %s",
        variant,
        result.model.count_params(),
        result.epochs_run,
        result.best_epoch,
        result.seconds,
        info.model_uri,
    )
    return TrainedModel(model_uri=info.model_uri, version=int(info.registered_model_version))


def _claim_checkpoints(
    dataset: Dataset, variant: str, config: TrainConfig, held: ExitStack, logger: Any
) -> CheckpointStore | None:
    """This training's checkpoint store, locked for as long as `held` is open; None when
    checkpoints are off, or when an identical training (another run with the same dataset,
    variant and settings) holds it: two trainings must not write one checkpoint."""
    if not config.checkpoints:
        return None
    store = CheckpointStore(checkpoint_dir(dataset, variant, config))
    try:
        held.enter_context(
            exclusive_lock(store.root.parent / f"{store.root.name}.lock", timeout_seconds=0)
        )
    except LockTimeoutError:
        logger.warning(
            "An identical training is running and holds %s: this one trains without checkpoints",
            store.root,
        )
        return None
    return store


def _train_and_log(
    dataset: Dataset,
    variant: str,
    config: TrainConfig,
    run_id: str,
    registered_model: str,
    checkpoints: CheckpointStore | None,
    logger: Any,
) -> tuple[TrainingResult, ModelInfo]:
    """Train (resuming from `checkpoints`), log the run and the registered model; if the
    model cannot be logged, keep it on disk and say where."""
    client = mlflow.MlflowClient()
    epoch_log = EpochMetricLog(client, run_id, logger, f"{variant} epoch %d/{config.epochs}")
    result = None
    try:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params(
                {
                    "variant": variant,
                    **_flatten(config.model_dump()),
                    "image_shape": dataset.image_shape,
                }
            )
            mlflow.log_input(as_mlflow_dataset(dataset), context="training")
            mlflow.log_dict(dataset.manifest, "dataset/manifest.json")
            result = train_on_dataset(
                dataset, variant, config, on_epoch_end=epoch_log.report, checkpoints=checkpoints
            )
            if result.resumed_epochs:
                logger.info(
                    "%s resumed after epoch %d from its checkpoint in %s",
                    variant,
                    result.resumed_epochs,
                    checkpoints.root,
                )
                epoch_log.backfill(result.history, result.resumed_epochs)
            epoch_log.flush()
            return result, _log_trained_model(dataset, config, result, registered_model)
    except Exception as error:
        kept = _keep_model(result.served if result else None, checkpoints, run_id)
        if kept is None:  # nothing trained yet
            raise
        raise ModelNotLoggedError(
            f"the trained model could not be logged to MLflow ({tracking_uri()}: "
            f"{first_line(error)}); it is kept at {kept}"
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
    sample, _ = SplitBatches(dataset, "validation", batch_size=8)[0]
    for policy in AUGMENTATIONS:
        if policy != "none":  # every named policy's preview, so runs can be compared
            preview = augmentation_preview(sample[0], AUGMENTATIONS[policy], seed=config.seed)
            mlflow.log_image(preview, augmentation_preview_path(policy))
    return log_served_model(dataset, result.served, result.threshold, config, registered_model)


def log_served_model(
    dataset: Dataset,
    model: keras.Model,
    threshold: float,
    config: TrainConfig,
    registered_model: str,
) -> ModelInfo:
    """Log and register `model` with its operating point to the active run; tag the run with
    where it went."""
    mlflow.log_metric("operating_threshold", threshold)
    sample, _ = SplitBatches(dataset, "validation", batch_size=8)[0]
    signature = infer_signature(sample, ServedModel(model, threshold).predict(sample))
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=_KerasFlavor(),
        model=model,
        signature=signature,
        input_example=sample[:1],
        registered_model_name=registered_model,
        pip_requirements=model_requirements(),
        metadata={
            "threshold": threshold,
            "target_sensitivity": config.target_sensitivity,
            "test_time_augmentation": config.test_time_augmentation,
        },
    )
    mlflow.set_tags(
        {"model_uri": info.model_uri, "registered_version": info.registered_model_version}
    )
    return info


class ModelNotLoggedError(RuntimeError):
    """Training finished but the model could not be logged; the message says where it is."""


def _keep_model(
    model: keras.Model | None, checkpoints: CheckpointStore | None, run_id: str
) -> Path | None:
    """Save the trained model beside its checkpoints (or under the data directory) and return
    the path; without a model, the path an earlier attempt kept it at, if any."""
    folder = checkpoints.root if checkpoints is not None else data_dir() / "unlogged" / run_id
    path = folder.absolute() / "model.keras"
    if model is None:
        return path if path.is_file() else None
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".model-{uuid.uuid4().hex[:8]}.keras")
    model.save(temporary)
    temporary.replace(path)
    return path


AFTER_TRAINING_SETTINGS = {
    "checkpoints",
    "test_time_augmentation",
    "target_sensitivity",
    "ensemble",
}
"""Settings that leave the trained weights as they are: a change of them resumes training."""


def checkpoint_dir(dataset: Dataset, variant: str, config: TrainConfig) -> Path:
    """Where one training's checkpoints live: the data directory, by dataset, variant and a
    digest of the settings (an identical training finds them; a changed one starts anew)."""
    trained_by = config.model_dump(mode="json", exclude=AFTER_TRAINING_SETTINGS)
    settings = json.dumps({"variant": variant, **trained_by}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
    return data_dir().absolute() / "checkpoints" / dataset.name / f"{variant}-{digest}"


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


class _KerasFlavor:
    """`mlflow.keras` for `Model.log` with `cnn.serving` as the pyfunc loader, and the model
    directory made before the input example is written into it: mlflow 3.17.2's
    `mlflow.keras.save_model` writes the example first and fails with FileNotFoundError
    (`mlflow.keras.log_model(input_example=...)`)."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        """Save as `mlflow.keras` does, with `cnn.serving` as the `python_function` loader
        (labels at the threshold in the model's metadata)."""
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)
        model = kwargs["mlflow_model"]
        model.flavors["python_function"]["loader_module"] = LOADER_MODULE
        model.save(os.path.join(path, MLMODEL_FILE_NAME))


def model_requirements() -> list[str]:
    """What loading a logged model needs, pinned to this environment.

    Given explicitly because MLflow's own inference re-imports the model in a subprocess,
    which took 6.6 s of every training run here (explicit: 0.04 s).
    """
    backend = {"tensorflow": ("tensorflow-cpu", "tensorflow"), "jax": ("jax",)}.get(
        keras.backend.backend(), ()
    )
    requirements = []
    for names in (("mlflow",), ("keras",), ("numpy",), backend):
        for name in names:
            try:
                requirements.append(f"{name}=={version(name)}")
                break
            except PackageNotFoundError:
                continue
    return requirements


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted MLflow params: {"augmentation.zoom": 0.15, …}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def as_mlflow_dataset(dataset: Dataset) -> MetaDataset:
    """The dataset as an MLflow input: its location and content fingerprint as digest."""
    with warnings.catch_warnings():  # MLflow registers its local source class twice
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(dataset.path.absolute().as_uri())
    return MetaDataset(
        source=source,
        name=dataset.name,
        digest=dataset.manifest["fingerprint"],
    )


@task(name="read-variant-run", **IO_RETRIES)
def read_variant_run(run_id: str) -> VariantRun:
    """The finished run's summary, read back from MLflow (the record every worker shares)."""
    configure_tracking()
    return _variant_run(mlflow.MlflowClient().get_run(run_id))


@task(name="find-variant-run", retries=3, retry_delay_seconds=2)
def find_variant_run(flow_run_id: str, experiment: str) -> VariantRun:
    """The MLflow run that the `train-variant` flow run `flow_run_id` made, wherever it ran."""
    configure_tracking()
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'",
        output_format="list",
    )
    if not runs:
        raise LookupError(f"no MLflow run in {experiment!r} for flow run {flow_run_id}")
    return _variant_run(runs[0])


def _variant_run(run: mlflow.entities.Run) -> VariantRun:
    metrics, params, tags = run.data.metrics, run.data.params, run.data.tags
    version = tags.get("registered_version")
    return VariantRun(
        variant=params["variant"],
        run_id=run.info.run_id,
        model_uri=tags["model_uri"],
        registered_version=int(version) if version and version != "None" else None,
        parameters=int(params["parameters"]),
        epochs_run=int(metrics["epochs_run"]),
        train_seconds=round(metrics["train_seconds"], 3),
        test_accuracy=metrics["test_accuracy"],
        test_scores=mlflow.artifacts.load_dict(
            f"{run.info.artifact_uri}/evaluation/test_scores.json"
        ),
        alias=tags.get("promotion.alias"),
        promotion_reason=tags.get("promotion.reason"),
    )
