"""Parquet datasets: a folder (or object-store prefix) of shards plus `_manifest.json`, the
commit record, written last and atomically.

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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType
from pydantic import BaseModel

from cnn.config import ENGINE_FIELDS, IngestConfig
from cnn.labels import LABEL_NAMES
from cnn.locks import Locks, folder_locks
from cnn.manifest import FORMAT_VERSION, MANIFEST_NAME, DatasetError, Manifest, manifest_path
from cnn.parallel import start_decode_workers
from cnn.progress import Progress
from cnn.records import CellRecord, CellSource
from cnn.shards import ShardMap, write_shards
from cnn.splits import SPLITS, assign_splits
from cnn.storage import Location, location


@dataclass(frozen=True)
class Dataset:
    """A finished dataset (in a local folder or under an object-store prefix), as described
    by its manifest."""

    location: Location
    manifest: Manifest

    @property
    def uri(self) -> str:
        """Where it is, as users name it: a local path or a `scheme://` URI."""
        return self.location.uri

    @property
    def path(self) -> Path:
        """Its local folder (a dataset on object storage has none)."""
        if not self.location.is_local:
            raise DatasetError(f"dataset {self.uri!r} is not in a local folder")
        return Path(self.location.path)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def rows(self) -> int:
        return self.manifest.rows

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.image_shape

    @property
    def shards(self) -> list[Location]:
        return [self.location / shard.file for shard in self.manifest.shards]

    @property
    def shard_paths(self) -> list[Path]:
        """The shards' files in its local folder."""
        return [self.path / shard.file for shard in self.manifest.shards]


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

    @classmethod
    def of(cls, dataset: Dataset, cache_hit: bool, seconds: float) -> "DatasetRef":
        manifest = dataset.manifest
        return cls(
            path=dataset.uri,
            name=manifest.name,
            rows=manifest.rows,
            cache_hit=cache_hit,
            counts=manifest.counts,
            skipped=manifest.skipped,
            split_strategy=manifest.split_strategy,
            seconds=round(seconds, 3),
        )


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
    `cnn.locks.folder_locks`), so concurrent identical ingests write it once. `map_shards`
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


def open_dataset(where: str | Path | Location) -> Dataset:
    """Open a finished dataset (a local folder or a URI), refusing anything without a
    complete manifest and shards."""
    found = location(where)
    kind = found.info().type
    if kind == FileType.NotFound:
        reason = "is a broken link" if found.is_local and Path(found.path).is_symlink() else ""
        raise DatasetError(f"dataset {found.uri!r} {reason or 'does not exist'}")
    if kind != FileType.Directory:
        raise DatasetError(
            f"dataset {found.uri!r} is not a directory (a dataset is a directory of Parquet "
            f"shards and a {MANIFEST_NAME})"
        )
    if (manifest_file := manifest_path(found)) is None:
        raise DatasetError(f"dataset {found.uri!r} has no {MANIFEST_NAME}: not a finished dataset")
    manifest = Manifest.read(manifest_file)
    _check_counts(found, manifest_file, manifest)
    return Dataset(location=found, manifest=manifest)


def _check_counts(dataset: Location, manifest_file: Location, manifest: Manifest) -> None:
    """Every count the manifest states, checked against its shards: each shard's rows and
    image width, the total, and the images of each class in each split (reading only the
    small split and label columns)."""
    held: Counter[tuple[str, str]] = Counter()
    image_type = pa.binary(int(np.prod(manifest.image_shape)))
    for shard in manifest.shards:
        shard_file = dataset / shard.file
        try:
            parquet = shard_file.parquet()
            columns = parquet.read(columns=["split", "label_name"])
            shard_image_type = parquet.schema_arrow.field("image").type
        except (OSError, pa.ArrowException, KeyError):
            columns, shard_image_type = None, None
        if columns is None or columns.num_rows != shard.rows:
            raise DatasetError(f"dataset shard {shard_file.uri!r} is missing or incomplete")
        if shard_image_type != image_type:
            raise DatasetError(
                f"dataset shard {shard_file.uri!r} holds images of {shard_image_type}, not the "
                f"{manifest.image_shape} pixels that {manifest_file.uri!r} states"
            )
        held.update(zip(*columns.to_pydict().values(), strict=True))
    problem = _count_mismatch(manifest, held)
    if problem:
        raise DatasetError(
            f"dataset manifest {manifest_file.uri!r} {problem}: it was altered or is not this "
            "dataset's; ingest again"
        )


def _count_mismatch(manifest: Manifest, held: Counter[tuple[str, str]]) -> str | None:
    """What the manifest states that its shards' rows do not hold, or None."""
    if manifest.rows != held.total():
        return f"states {manifest.rows} rows; its shards hold {held.total()}"
    stated = Counter(
        {
            (split, label): count
            for split, per_label in manifest.counts.items()
            for label, count in per_label.items()
        }
    )
    for key in sorted(stated.keys() | held.keys()):
        if stated[key] != held[key]:
            split, label = key
            return f"counts {stated[key]} {label} {split} images; its shards hold {held[key]}"
    return None


def load_split(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N × H × W × 3) and labels (int) of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    table = pq.read_table(
        [shard.path for shard in dataset.shards],
        filesystem=dataset.location.filesystem,
        columns=["image", "label"],
        filters=[("split", "=", split)],
    )
    return images_from_column(table["image"], dataset.image_shape), table["label"].to_numpy()


def images_from_column(column: pa.ChunkedArray, image_shape: Sequence[int]) -> np.ndarray:
    """View a fixed-size-binary image column as a uint8 array of images (one copy at most)."""
    array = column.combine_chunks()
    width = int(np.prod(image_shape))
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    data = data[array.offset * width : (array.offset + len(array)) * width]
    return data.reshape(len(array), *image_shape)


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
