"""Parquet datasets: a directory of shards plus `manifest.json`, written last and atomically.

A dataset's directory name carries a fingerprint of its source and settings, so an unchanged
rerun finds the finished dataset and decodes nothing. Shards are written into a hidden
temporary directory that is renamed into place only once the manifest is in it: a reader
never sees a half-written dataset, and a crash leaves only a temporary directory behind.
"""

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from joblib.externals.loky import get_reusable_executor

from cnn.config import IngestConfig
from cnn.images import UnreadableImageError, decode_and_resize
from cnn.labels import LABEL_NAMES
from cnn.sources import CellRecord, CellSource, Payload, Unreadable
from cnn.splits import SPLITS, assign_splits

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROWS_PER_SHARD = 2048
DECODE_CHUNK = 256
"""Images decoded per round trip to the worker processes: bounds memory while streaming."""
PARALLEL_THRESHOLD = 64
"""Below this many images, decoding in-process beats starting worker processes."""


class DatasetError(ValueError):
    """A dataset path is missing, incomplete or not a dataset; the message names it."""


@dataclass(frozen=True)
class Dataset:
    """A finished dataset on disk, as described by its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["image_shape"])

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / shard["file"] for shard in self.manifest["shards"]]


def dataset_fingerprint(source: CellSource, config: IngestConfig) -> str:
    """A short digest of everything that determines the dataset's content."""
    settings = config.model_dump(exclude={"source"})
    payload = {"format_version": FORMAT_VERSION, "source": source.fingerprint(), **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_dataset(
    source: CellSource,
    config: IngestConfig,
    datasets_dir: Path,
    workers: int | None = None,
) -> tuple[Dataset, bool]:
    """Ingest `source` into a dataset under `datasets_dir`; return it and whether it was cached."""
    fingerprint = dataset_fingerprint(source, config)
    final_path = datasets_dir / f"{source.kind}-{config.image_size}px-{fingerprint}"
    if (final_path / MANIFEST_NAME).exists():
        return open_dataset(final_path), True

    records = select_subset(source.list_records(), config.limit, config.seed)
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

    datasets_dir.mkdir(parents=True, exist_ok=True)
    temporary_path = datasets_dir / f".{final_path.name}.tmp-{uuid.uuid4().hex[:8]}"
    temporary_path.mkdir()
    try:
        decoded = _decode_stream(source.iter_payloads(records), config.image_size, workers)
        shards, counts, skipped = _write_shards(
            temporary_path, decoded, split_of, config.image_size
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": final_path.name,
            "fingerprint": fingerprint,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source.fingerprint(),
            "config": config.model_dump(),
            "split_strategy": strategy,
            "split_note": _split_note(config.split, strategy),
            "image_shape": [config.image_size, config.image_size, 3],
            "label_names": list(LABEL_NAMES),
            "rows": sum(shard["rows"] for shard in shards),
            "shards": shards,
            "counts": counts,
            "skipped": source.listing_skips() + skipped,
        }
        if manifest["rows"] == 0:
            raise DatasetError(f"no image of source {source.kind!r} could be decoded")
        _write_json_durably(temporary_path / MANIFEST_NAME, manifest)
        _publish(temporary_path, final_path)
    finally:
        shutil.rmtree(temporary_path, ignore_errors=True)
    return open_dataset(final_path), False


def open_dataset(path: str | Path) -> Dataset:
    """Open a finished dataset, refusing anything without a complete manifest and shards."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise DatasetError(f"dataset {str(path)!r} does not exist")
    if not manifest_path.is_file():
        raise DatasetError(f"dataset {str(path)!r} has no {MANIFEST_NAME}: not a finished dataset")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset manifest {str(manifest_path)!r} is corrupt: {exc}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"dataset {str(path)!r} has format {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}; ingest it again"
        )
    for shard in manifest["shards"]:
        shard_path = path / shard["file"]
        if (
            not shard_path.is_file()
            or pq.ParquetFile(shard_path).metadata.num_rows != shard["rows"]
        ):
            raise DatasetError(f"dataset shard {str(shard_path)!r} is missing or incomplete")
    return Dataset(path=path, manifest=manifest)


def load_split(dataset: Dataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8, N × H × W × 3) and labels (int) of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    table = pq.read_table(
        dataset.shard_paths, columns=["image", "label"], filters=[("split", "=", split)]
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


def _schema(image_size: int) -> pa.Schema:
    return pa.schema(
        [
            ("image", pa.binary(image_size * image_size * 3)),
            ("label", pa.int8()),
            ("label_name", pa.string()),
            ("source_id", pa.string()),
            ("group", pa.string()),
            ("split", pa.string()),
        ],
        metadata={"image_shape": json.dumps([image_size, image_size, 3])},
    )


def _decode_payload(payload: Payload, image_size: int) -> np.ndarray | str:
    """Decoded pixels, or the reason the payload could not be read or decoded."""
    if isinstance(payload, Unreadable):
        return payload.reason
    try:
        return decode_and_resize(payload, image_size)
    except UnreadableImageError as exc:
        return str(exc)


def _decode_stream(
    payloads: Iterable[tuple[CellRecord, Payload]], image_size: int, workers: int | None
) -> Iterator[tuple[CellRecord, np.ndarray | str]]:
    """Decode payloads in chunks, over worker processes when there are enough to pay off."""
    workers = workers or os.cpu_count() or 1
    payloads = iter(payloads)
    first = list(islice(payloads, PARALLEL_THRESHOLD))
    if workers == 1 or len(first) < PARALLEL_THRESHOLD:
        for record, payload in _chained(first, payloads):
            yield record, _decode_payload(payload, image_size)
        return
    # loky spawns fresh workers (never forks a process running TensorFlow) without
    # re-running the caller's __main__, and reuses them across calls.
    pool = get_reusable_executor(max_workers=workers)
    stream = _chained(first, payloads)
    while chunk := list(islice(stream, DECODE_CHUNK)):
        records = [record for record, _ in chunk]
        results = pool.map(
            _decode_payload,
            [payload for _, payload in chunk],
            [image_size] * len(chunk),
            chunksize=max(1, len(chunk) // (4 * workers)),
        )
        yield from zip(records, results, strict=True)


def _chained(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def _write_shards(
    directory: Path,
    decoded: Iterable[tuple[CellRecord, np.ndarray | str]],
    split_of: dict[str, str],
    image_size: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]], list[dict[str, str]]]:
    """Stream decoded images into Parquet shards; return shard list, counts and skipped files."""
    schema = _schema(image_size)
    shards: list[dict[str, Any]] = []
    counts = {split: dict.fromkeys(LABEL_NAMES, 0) for split in SPLITS}
    skipped: list[dict[str, str]] = []
    writer: pq.ParquetWriter | None = None
    rows_in_shard = 0
    batch: list[tuple[CellRecord, np.ndarray]] = []

    def flush() -> None:
        nonlocal writer, rows_in_shard
        if not batch:
            return
        if writer is None:
            shards.append({"file": f"part-{len(shards):05d}.parquet", "rows": 0})
            writer = pq.ParquetWriter(directory / shards[-1]["file"], schema, compression="zstd")
        writer.write_table(_rows_table(batch, split_of, schema))
        shards[-1]["rows"] += len(batch)
        rows_in_shard += len(batch)
        batch.clear()
        if rows_in_shard >= ROWS_PER_SHARD:
            writer.close()
            writer, rows_in_shard = None, 0

    for record, result in decoded:
        if isinstance(result, str):
            skipped.append({"source_id": record.source_id, "reason": result})
            continue
        batch.append((record, result))
        counts[split_of[record.source_id]][LABEL_NAMES[record.label]] += 1
        if len(batch) >= DECODE_CHUNK:
            flush()
    flush()
    if writer is not None:
        writer.close()
    for shard in shards:
        _fsync(directory / shard["file"])
    return shards, counts, skipped


def _rows_table(
    batch: Sequence[tuple[CellRecord, np.ndarray]], split_of: dict[str, str], schema: pa.Schema
) -> pa.Table:
    records = [record for record, _ in batch]
    return pa.table(
        {
            "image": [pixels.tobytes() for _, pixels in batch],
            "label": [record.label for record in records],
            "label_name": [LABEL_NAMES[record.label] for record in records],
            "source_id": [record.source_id for record in records],
            "group": [record.group for record in records],
            "split": [split_of[record.source_id] for record in records],
        },
        schema=schema,
    )


def _split_note(requested: str, used: str) -> str:
    if requested == used:
        return f"{used} split as requested"
    return (
        f"{requested} split requested, but the source has no patient ids: stratified {used} split"
    )


def _write_json_durably(path: Path, content: dict[str, Any]) -> None:
    with open(path, "w") as handle:
        json.dump(content, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _publish(temporary_path: Path, final_path: Path) -> None:
    """Rename the finished directory into place; a concurrent identical ingest may win."""
    try:
        temporary_path.rename(final_path)
    except OSError:
        if not (final_path / MANIFEST_NAME).exists():
            raise
    directory_fd = os.open(final_path.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)
