"""Ingest task: source → Parquet dataset, with a Prefect table of what landed where."""

import os
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from cnn.config import IngestConfig
from cnn.dataset import build_dataset, describe_manifest
from cnn.sources import open_source
from tasks.retry import IO_RETRIES

MAX_LOGGED_SKIPS = 20


class DatasetRef(BaseModel):
    """What later stages need to know of a dataset: where it is, and what it holds."""

    path: str
    name: str
    rows: int
    cache_hit: bool
    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]]
    split_strategy: str
    seconds: float


def data_dir() -> Path:
    """`MALARIA_DATA_DIR`, default ./data."""
    return Path(os.environ.get("MALARIA_DATA_DIR", "data"))


@task(name="ingest-dataset", **IO_RETRIES)
def ingest_dataset(config: IngestConfig) -> DatasetRef:
    """Build (or find, when nothing changed) the dataset for `config`."""
    logger = get_run_logger()
    started = time.perf_counter()
    source = open_source(config.source, limit=config.limit)
    dataset, cache_hit = build_dataset(source, config, data_dir().absolute() / "datasets")
    manifest = dataset.manifest
    ref = DatasetRef(
        path=str(dataset.path),
        name=dataset.name,
        rows=dataset.rows,
        cache_hit=cache_hit,
        counts=manifest["counts"],
        skipped=manifest["skipped"],
        split_strategy=manifest["split_strategy"],
        seconds=round(time.perf_counter() - started, 3),
    )
    logger.info(
        "%s dataset %s: %d images in %.1f s (%s)",
        "Reused" if cache_hit else "Wrote",
        ref.path,
        ref.rows,
        ref.seconds,
        manifest["split_note"],
    )
    for skipped in ref.skipped[:MAX_LOGGED_SKIPS]:
        logger.warning("Skipped %s: %s", skipped["source_id"], skipped["reason"])
    if len(ref.skipped) > MAX_LOGGED_SKIPS:
        logger.warning(
            "… and %d more skipped (see the manifest)", len(ref.skipped) - MAX_LOGGED_SKIPS
        )
    create_table_artifact(
        key="dataset-counts",
        table=[{"split": split, **per_label} for split, per_label in ref.counts.items()],
        description=f"Images per split and class in `{ref.name}` ({len(ref.skipped)} skipped)",
    )
    create_markdown_artifact(
        key="dataset-validation",
        markdown=describe_manifest(manifest, dataset.path),
        description=f"What `{ref.name}` holds and what was skipped",
    )
    return ref
