"""Decoding a source into Parquet shards, over worker processes when there are enough images,
or over any engine that runs a function on each job (a Dask cluster, through Prefect).

Each worker decodes, resizes and writes whole shards (row groups of `WRITE_BATCH` rows)
straight to the dataset's folder or prefix, so memory stays bounded by the shards in flight;
the caller commits them with the manifest.
"""

import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn.data.dataset import SPLITS
from cnn.images import UnreadableImageError, decode_image, resize_square
from cnn.ingest.parallel import parallel_map, worker_count
from cnn.io.storage import Location
from cnn.io.writes import writing
from cnn.labels import LABEL_NAMES
from cnn.progress import Progress
from cnn.sources.records import CellRecord, CellSource, Payload, Unreadable

ROWS_PER_SHARD = 1024
"""At most this many rows a shard: one worker's unit of work (about 30 MB at 100 px)."""
WRITE_BATCH = 256
"""Rows per Parquet row group: what a worker holds in memory at once."""
COMPRESSION = "zstd"
DICTIONARY_COLUMNS = ["label_name", "group", "split"]
"""Chosen by benchmarks/storage.py: smallest files, and as fast to read as any."""


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


Decoded = tuple[np.ndarray, tuple[int, int]] | str
"""Resized pixels with the source's (width, height), or why the image was skipped."""


def _decode_payload(payload: Payload, image_size: int) -> Decoded:
    if isinstance(payload, Unreadable):
        return payload.reason
    try:
        image = decode_image(payload)
    except UnreadableImageError as exc:
        return str(exc)
    return resize_square(image, image_size), image.size


@dataclass
class ShardResult:
    """What one shard received: its rows, their counts, and what was skipped."""

    file: str
    rows: int = 0
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {split: dict.fromkeys(LABEL_NAMES, 0) for split in SPLITS}
    )
    skipped: list[dict[str, str]] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)


ShardJob = tuple[
    Location, int, list[tuple[CellRecord, str]], CellSource | None, list[Payload] | None
]
"""Shard file, image size, (record, split) rows, and either the source or the payloads."""

ShardMap = Callable[[Iterator[ShardJob]], Iterable[ShardResult]]
"""Runs `write_shard(*job)` for each job, wherever it likes, and yields the results in the
jobs' order."""


def write_shard(
    shard: Location,
    image_size: int,
    rows: list[tuple[CellRecord, str]],
    source: CellSource | None,
    payloads: list[Payload] | None,
) -> ShardResult:
    """Read, decode, resize and write one shard (in a worker process when parallel).

    A random-access source reads its own payloads here, so no pixels cross processes; a
    sequential source's payloads come from the parent.
    """
    split_of = {record.source_id: split for record, split in rows}
    records = [record for record, _ in rows]
    stream = source.iter_payloads(records) if source else zip(records, payloads, strict=True)
    schema = _schema(image_size)
    result = ShardResult(file=shard.name)
    writer: pq.ParquetWriter | None = None
    batch: list[tuple[CellRecord, np.ndarray]] = []

    def flush() -> None:
        nonlocal writer
        with writing(shard.uri):
            if writer is None:
                writer = pq.ParquetWriter(
                    shard.path,
                    schema,
                    filesystem=shard.filesystem,
                    compression=COMPRESSION,
                    use_dictionary=DICTIONARY_COLUMNS,
                )
            writer.write_table(_rows_table(batch, split_of, schema))
        result.rows += len(batch)
        batch.clear()

    try:
        for record, payload in stream:
            decoded = _decode_payload(payload, image_size)
            if isinstance(decoded, str):
                result.skipped.append({"source_id": record.source_id, "reason": decoded})
                continue
            pixels, (width, height) = decoded
            batch.append((record, pixels))
            result.widths.append(width)
            result.heights.append(height)
            result.counts[split_of[record.source_id]][LABEL_NAMES[record.label]] += 1
            if len(batch) >= WRITE_BATCH:
                flush()
        if batch:
            flush()
    finally:
        if writer is not None:
            with writing(shard.uri):
                writer.close()
    if writer is not None and shard.is_local:
        with writing(shard.uri), open(shard.path, "rb") as handle:
            os.fsync(handle.fileno())  # on disk before the manifest names it
    return result


@dataclass
class WriteSummary:
    """What the shards received: their files and rows, counts, skips and source sizes."""

    shards: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]]
    source_sizes: dict[str, dict[str, float]]


def write_shards(
    folder: Location,
    attempt: str,
    source: CellSource,
    records: Sequence[CellRecord],
    split_of: dict[str, str],
    image_size: int,
    workers: int | None,
    on_progress: Progress | None = None,
    map_shards: ShardMap | None = None,
) -> WriteSummary:
    """Write all records as shards in `folder`, named by `attempt` (so a manifest lists only
    its own attempt's), with `map_shards` (by default over this host's worker processes when
    there are enough images; `workers` is how many work at once, for the shards' size);
    `on_progress` hears the share of the records written after each shard."""
    workers = worker_count(workers)
    rows = [(record, split_of[record.source_id]) for record in records]
    shard_rows = min(ROWS_PER_SHARD, max(WRITE_BATCH, -(-len(rows) // (4 * workers))))
    jobs = _shard_jobs(folder, attempt, source, rows, shard_rows, image_size)
    if map_shards is None:
        results_of = parallel_map(write_shard, jobs, len(rows), workers)
    else:
        results_of = map_shards(jobs)
    results = []
    for result in results_of:
        results.append(result)
        if on_progress is not None:
            on_progress(min(1.0, len(results) * shard_rows / max(len(rows), 1)))
    counts = {split: dict.fromkeys(LABEL_NAMES, 0) for split in SPLITS}
    for result in results:
        for split, per_label in result.counts.items():
            for label_name, count in per_label.items():
                counts[split][label_name] += count
    widths = [width for result in results for width in result.widths]
    heights = [height for result in results for height in result.heights]
    return WriteSummary(
        shards=[{"file": result.file, "rows": result.rows} for result in results if result.rows],
        counts=counts,
        skipped=[entry for result in results for entry in result.skipped],
        source_sizes={"width": _describe(widths), "height": _describe(heights)},
    )


def _shard_jobs(
    folder: Location,
    attempt: str,
    source: CellSource,
    rows: list[tuple[CellRecord, str]],
    shard_rows: int,
    image_size: int,
) -> Iterator[ShardJob]:
    """One job per shard: random-access sources read in the job, others stream from here."""
    if source.random_access:
        for index, start in enumerate(range(0, len(rows), shard_rows)):
            shard = folder / f"part-{index:05d}-{attempt}.parquet"
            yield shard, image_size, rows[start : start + shard_rows], source, None
        return
    split_of = dict((record.source_id, split) for record, split in rows)
    stream = source.iter_payloads([record for record, _ in rows])
    for index in itertools.count():
        chunk = list(islice(stream, shard_rows))
        if not chunk:
            return
        chunk_rows = [(record, split_of[record.source_id]) for record, _ in chunk]
        shard = folder / f"part-{index:05d}-{attempt}.parquet"
        yield shard, image_size, chunk_rows, None, [payload for _, payload in chunk]


def _describe(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "min": int(array.min()),
        "median": float(np.median(array)),
        "mean": round(float(array.mean()), 1),
        "max": int(array.max()),
    }


def _rows_table(
    batch: Sequence[tuple[CellRecord, np.ndarray]], split_of: dict[str, str], schema: pa.Schema
) -> pa.Table:
    records = [record for record, _ in batch]
    pixels = np.stack([pixels for _, pixels in batch])  # one buffer: Arrow takes it as it is
    images = pa.FixedSizeBinaryArray.from_buffers(
        schema.field("image").type, len(batch), [None, pa.py_buffer(pixels)]
    )
    return pa.table(
        {
            "image": images,
            "label": [record.label for record in records],
            "label_name": [LABEL_NAMES[record.label] for record in records],
            "source_id": [record.source_id for record in records],
            "group": [record.group for record in records],
            "split": [split_of[record.source_id] for record in records],
        },
        schema=schema,
    )
