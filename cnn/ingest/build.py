"""Building a dataset from a source: a folder (or object-store prefix) of Parquet shards plus
`_manifest.json`, the commit record, written last and atomically.

A dataset's name carries a fingerprint of its source and settings, so an unchanged rerun finds
the finished dataset and decodes nothing. The same protocol holds on a local disk and on
object storage, which has no rename: holding the dataset's lock, a writer clears what a dead
attempt left, writes shards named by its own attempt, and then the manifest that lists them.
A reader trusts only a folder with a manifest whose shards hold what it states, so a crash at
any moment leaves nothing that a later run would trust, and the rerun completes.
"""

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cnn.config import ENGINE_FIELDS, IngestConfig
from cnn.data.dataset import Dataset, open_dataset
from cnn.data.manifest import FORMAT_VERSION, MANIFEST_NAME, DatasetError, Manifest, manifest_path
from cnn.ingest.parallel import start_decode_workers
from cnn.ingest.shards import ShardMap, write_shards
from cnn.ingest.splits import assign_splits
from cnn.io.locks import Locks, folder_locks
from cnn.io.storage import Location, location
from cnn.labels import LABEL_NAMES
from cnn.progress import Progress
from cnn.sources.records import CellRecord, CellSource


def dataset_fingerprint(source_fingerprint: dict[str, Any], config: IngestConfig) -> str:
    """A short digest of everything that determines the dataset's content: the source's
    fingerprint (`CellSource.fingerprint()`) and the settings."""
    settings = config.model_dump(exclude={"source", *ENGINE_FIELDS})
    payload = {"format_version": FORMAT_VERSION, "source": source_fingerprint, **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_dataset(
    source: CellSource,
    config: IngestConfig,
    datasets_dir: str | Path | Location,
    workers: int | None = None,
    on_progress: Progress | None = None,
    locks: Locks | None = None,
    map_shards: ShardMap | None = None,
) -> tuple[Dataset, bool]:
    """Ingest `source` into a dataset under `datasets_dir` (telling `on_progress` the share of
    images written); return it and whether it was cached.

    Writers of one dataset take turns on its lock from `locks` (by default file locks:
    `cnn.io.locks.folder_locks`), so concurrent identical ingests write it once. `map_shards`
    writes the shards elsewhere than this host's worker processes (`workers` of them at once).
    """
    folder = location(datasets_dir)
    source_fingerprint = source.fingerprint()  # lists the source: compute it once
    fingerprint = dataset_fingerprint(source_fingerprint, config)
    final = folder / _dataset_name(source, config, fingerprint)
    if manifest_path(final):
        return open_dataset(final), True
    with (locks or folder_locks(folder))(f"dataset-{final.name}", None):
        if manifest_path(final):  # a concurrent run wrote it meanwhile
            return open_dataset(final), True
        dataset = _write_dataset(
            source, source_fingerprint, fingerprint, config, final, workers, on_progress, map_shards
        )
        return dataset, False


def find_dataset(
    source: CellSource, config: IngestConfig, datasets_dir: str | Path | Location
) -> Dataset | None:
    """The finished dataset of `source` with `config` under `datasets_dir`, if there is one.

    Lists the source (to fingerprint it) but decodes nothing.
    """
    folder = location(datasets_dir)
    fingerprint = dataset_fingerprint(source.fingerprint(), config)
    found = folder / _dataset_name(source, config, fingerprint)
    return open_dataset(found) if manifest_path(found) else None


def _dataset_name(source: CellSource, config: IngestConfig, fingerprint: str) -> str:
    return f"{source.kind}-{config.image_size}px-{fingerprint}"


def _write_dataset(
    source: CellSource,
    source_fingerprint: dict[str, Any],
    fingerprint: str,
    config: IngestConfig,
    final: Location,
    workers: int | None,
    on_progress: Progress | None,
    map_shards: ShardMap | None,
) -> Dataset:
    """Decode the source into shards under `final`, then commit them with the manifest."""
    records = select_subset(source.list_records(), config.limit, config.seed)
    if map_shards is None:
        start_decode_workers(len(records), workers)
    strategy = config.split if source.has_patient_groups else "random"
    splits = assign_splits(
        [record.label for record in records],
        [record.group for record in records],
        strategy,
        config.test_fraction,
        config.validation_fraction,
        config.seed,
    )
    split_of = {record.source_id: split for record, split in zip(records, splits, strict=True)}

    final.delete()  # a dead attempt's shards: never a dataset (no manifest), and the lock is ours
    final.make_folder()
    attempt = uuid.uuid4().hex[:8]
    written = write_shards(
        final,
        attempt,
        source,
        records,
        split_of,
        config.image_size,
        workers,
        on_progress,
        map_shards,
    )
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        name=final.name,
        fingerprint=fingerprint,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source_fingerprint,
        config=config.model_dump(mode="json", exclude=ENGINE_FIELDS),
        split_strategy=strategy,
        split_note=_split_note(config.split, strategy),
        image_shape=(config.image_size, config.image_size, 3),
        label_names=list(LABEL_NAMES),
        rows=sum(shard["rows"] for shard in written.shards),
        shards=written.shards,
        counts=written.counts,
        source_image_sizes=written.source_sizes,
        skipped=source.listing_skips() + written.skipped,
    )
    if manifest.rows == 0:
        final.delete()
        raise DatasetError(f"no image of source {source.kind!r} could be decoded")
    gone = [shard.file for shard in manifest.shards if not (final / shard.file).is_file()]
    if gone:  # never commit a gap
        raise DatasetError(
            f"shard {gone[0]!r} of {final.uri!r} is not there: its writer wrote it where this "
            "host cannot see it (Dask workers on other hosts need the data folder on object "
            "storage), or another host deleted it, ingesting the same source without a lock "
            "both share (a Prefect server)"
        )
    manifest.write(final / MANIFEST_NAME)
    return open_dataset(final)


def select_subset(records: Sequence[CellRecord], limit: int | None, seed: int) -> list[CellRecord]:
    """A class-balanced, seeded subset of `limit` records (all records when `limit` is unset)."""
    if limit is None or limit >= len(records):
        return list(records)
    rng = np.random.default_rng(seed)
    by_label = {label: [i for i, r in enumerate(records) if r.label == label] for label in (0, 1)}
    smaller = min(by_label, key=lambda label: len(by_label[label]))
    quota = {smaller: min(len(by_label[smaller]), limit // 2)}
    quota[1 - smaller] = limit - quota[smaller]
    chosen = np.concatenate(
        [rng.choice(by_label[label], size=quota[label], replace=False) for label in (0, 1)]
    )
    return [records[i] for i in np.sort(chosen)]


def _split_note(requested: str, used: str) -> str:
    if requested == used:
        return f"{used} split as requested"
    return (
        f"{requested} split requested, but the source has no patient ids: stratified {used} split"
    )
