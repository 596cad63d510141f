"""Train tasks: fit one variant into its MLflow run, and read a variant's run back."""

from contextlib import ExitStack

from prefect import get_run_logger, task

from cnn.config import TrainConfig
from cnn.data.dataset import open_dataset
from cnn.models.variants import check_downloads
from cnn.settings import data_dir
from cnn.training.checkpoints import claim_checkpoints
from tasks.keys import artifact_key
from tasks.locks import data_locks
from tasks.progress import TaskProgress
from tasks.retry import IO_RETRIES
from tracking import runs
from tracking.runs import TrainedModel, VariantRun
from tracking.training import fit_and_register


@task(name="check-downloads")
def check_variant_downloads(variants: list[str], config: TrainConfig) -> None:
    """Fail before any training if a variant needs weights that cannot be downloaded."""
    check_downloads(variants, config.variant_options)


@task(name="train-model", task_run_name="train-model {variant}", **IO_RETRIES)
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
    dataset = open_dataset(dataset_path)
    with ExitStack() as held:
        folder = data_dir()
        locks = data_locks(folder)
        checkpoints = claim_checkpoints(
            folder / "checkpoints", dataset, variant, config, held, logger, locks
        )
        with _training_progress(variant, config.epochs, run_id) as progress:
            result, info = fit_and_register(
                dataset, variant, config, run_id, registered_model, checkpoints, logger, progress
            )
            progress.finish()
        if checkpoints is not None:
            checkpoints.clear()  # the model is safe in MLflow now
    logger.info(
        "%s: %d parameters, %d epochs (best %d) in %.1f s → %s",
        *(variant, result.model.count_params(), result.epochs_run, result.best_epoch),
        *(result.seconds, info.model_uri),
    )
    return TrainedModel(model_uri=info.model_uri, version=int(info.registered_model_version))


def _training_progress(variant: str, epochs: int, run_id: str) -> TaskProgress:
    return TaskProgress(
        artifact_key("training-progress", variant),
        f"train {variant}",
        f"{variant}: share of {epochs} epochs trained, MLflow run {run_id}",
    )


@task(name="read-variant-run", **IO_RETRIES)
def variant_run(run_id: str) -> VariantRun:
    """The finished run's summary, read back from MLflow (the record every worker shares)."""
    return runs.read_variant_run(run_id)


@task(name="find-variant-run", retries=3, retry_delay_seconds=2)
def variant_run_of(flow_run_id: str, experiment: str) -> VariantRun:
    """The MLflow run that the `train-variant` flow run `flow_run_id` made, wherever it ran."""
    return runs.find_variant_run(flow_run_id, experiment)
