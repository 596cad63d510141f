"""Ingest task: source → Parquet dataset, with a Prefect table of what landed where."""

import time

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from cnn.config import IngestConfig
from cnn.data.dataset import Dataset, DatasetRef
from cnn.ingest.build import build_dataset
from cnn.settings import datasets_dir, settings
from cnn.sources.specs import open_source
from tasks.engines import shards_on_dask
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
    address = config.dask_address or settings().dask_address
    map_shards = shards_on_dask(address) if address else None  # else this host's processes
    with TaskProgress("ingest-progress", "ingest", written) as progress:
        folder = datasets_dir()
        dataset, cache_hit = build_dataset(
            source,
            config,
            folder,
            on_progress=progress,
            locks=data_locks(folder),
            map_shards=map_shards,
        )
        progress.finish()
    ref = DatasetRef.of(dataset, cache_hit, time.perf_counter() - started)
    logger.info(
        "%s dataset %s: %d images in %.1f s (%s)",
        *("Reused" if cache_hit else "Wrote", ref.path, ref.rows, ref.seconds),
        dataset.manifest.split_note,
    )
    shown = ref.skipped[:MAX_LOGGED_SKIPS]
    for skipped in shown:
        logger.warning("Skipped %s: %s", skipped["source_id"], skipped["reason"])
    if len(ref.skipped) > len(shown):
        logger.warning("… and %d more skipped (see the manifest)", len(ref.skipped) - len(shown))
    _dataset_artifacts(ref, dataset)
    return ref


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
