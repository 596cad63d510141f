"""Ingest task: source → Parquet dataset, with a Prefect table of what landed where."""

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cnn.config import IngestConfig
from cnn.data.dataset import Dataset, DatasetRef
from cnn.ingest.build import build_dataset
from cnn.settings import datasets_dir
from cnn.sources.specs import open_source
from tasks.engines import shard_engine
from tasks.locks import data_locks
from tasks.progress import TaskProgress
from tasks.retry import IO_RETRIES

MAX_LOGGED_SKIPS = 20


@task(name="ingest-dataset", **IO_RETRIES)
def ingest_dataset(config: IngestConfig) -> DatasetRef:
    """Build (or find, when nothing changed) the dataset for `config`."""
    logger = get_run_logger()
    started = time.perf_counter()
    source = open_source(config.source, limit=config.limit)
    written = f"Images of {config.source} written"
    with TaskProgress("ingest-progress", "ingest", written) as progress:
        folder, engine = datasets_dir(), shard_engine(config)
        dataset, cache_hit = build_dataset(
            source,
            config,
            folder,
            on_progress=progress,
            locks=data_locks(folder),
            map_shards=engine,
        )
        progress.finish()
    ref = DatasetRef.of(dataset, cache_hit, time.perf_counter() - started)
    logger.info(
        "%s dataset %s: %d images in %.1f s (%s)",
        *("Reused" if cache_hit else "Wrote", ref.path, ref.rows, ref.seconds),
        dataset.manifest.split_note,
    )
    _log_skips(logger, ref.skipped)
    _dataset_artifacts(ref, dataset)
    return ref


def _log_skips(logger, skipped: list[dict[str, str]]) -> None:
    """The first `MAX_LOGGED_SKIPS` images skipped, each with its reason, and how many more."""
    for entry in skipped[:MAX_LOGGED_SKIPS]:
        logger.warning("Skipped %s: %s", entry["source_id"], entry["reason"])
    if len(skipped) > MAX_LOGGED_SKIPS:
        logger.warning("… and %d more skipped (see the manifest)", len(skipped) - MAX_LOGGED_SKIPS)


def _dataset_artifacts(ref: DatasetRef, dataset: Dataset) -> None:
    """A table of images per split and class, and the manifest's summary with the skips."""
    create_table_artifact(
        key="dataset-counts",
        table=[{"split": split, **per_label} for split, per_label in ref.counts.items()],
        description=f"Images per split and class in `{ref.name}` ({len(ref.skipped)} skipped)",
    )
    create_markdown_artifact(
        key="dataset-validation",
        markdown=dataset.manifest.describe(dataset.uri),
        description=f"What `{ref.name}` holds and what was skipped",
    )
