"""Parquet datasets: a directory of shards plus `manifest.json`, written last and atomically.

A dataset's directory name carries a fingerprint of its source and settings, so an unchanged
rerun finds the finished dataset and decodes nothing. Shards are written into a hidden
temporary directory that is renamed into place only once the manifest is in it: a reader
never sees a half-written dataset, and a crash leaves only a temporary directory behind.
"""

import hashlib
import itertools
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from joblib.externals.loky import get_reusable_executor

from cnn.config import IngestConfig
from cnn.images import UnreadableImageError, decode_image, resize_square
from cnn.labels import LABEL_NAMES
from cnn.locks import exclusive_lock, process_alive
from cnn.sources import CellRecord, CellSource, Payload, Unreadable
from cnn.splits import SPLITS, assign_splits

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROWS_PER_SHARD = 1024
"""At most this many rows a shard: one worker's unit of work (about 30 MB at 100 px)."""
WRITE_BATCH = 256
"""Rows per Parquet row group: what a worker holds in memory at once."""
COMPRESSION = "zstd"
DICTIONARY_COLUMNS = ["label_name", "group", "split"]
"""Chosen by benchmarks/storage.py: smallest files, and as fast to read as any."""
LOCKS_DIR = ".locks"
"""Under the datasets directory: one lock per dataset name, so concurrent runs write it once."""
PARALLEL_THRESHOLD = 256
"""Below this many images, decoding in-process beats starting worker processes."""
WORKER_IDLE_SECONDS = 10
"""Idle decode workers exit after this long, so they hold no memory while a model trains."""


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


def dataset_fingerprint(source_fingerprint: dict[str, Any], config: IngestConfig) -> str:
    """A short digest of everything that determines the dataset's content: the source's
    fingerprint (`CellSource.fingerprint()`) and the settings."""
    settings = config.model_dump(exclude={"source"})
    payload = {"format_version": FORMAT_VERSION, "source": source_fingerprint, **settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_dataset(
    source: CellSource,
    config: IngestConfig,
    datasets_dir: Path,
    workers: int | None = None,
) -> tuple[Dataset, bool]:
    """Ingest `source` into a dataset under `datasets_dir`; return it and whether it was cached."""
    source_fingerprint = source.fingerprint()  # lists the source: compute it once
    fingerprint = dataset_fingerprint(source_fingerprint, config)
    final_path = datasets_dir / f"{source.kind}-{config.image_size}px-{fingerprint}"
    if (final_path / MANIFEST_NAME).exists():
        return open_dataset(final_path), True
    with exclusive_lock(datasets_dir / LOCKS_DIR / f"{final_path.name}.lock"):
        if (final_path / MANIFEST_NAME).exists():  # a concurrent run wrote it meanwhile
            return open_dataset(final_path), True
        dataset = _write_dataset(
            source, source_fingerprint, fingerprint, config, final_path, workers
        )
        return dataset, False


def _write_dataset(
    source: CellSource,
    source_fingerprint: dict[str, Any],
    fingerprint: str,
    config: IngestConfig,
    final_path: Path,
    workers: int | None,
) -> Dataset:
    """Decode the source into a temporary directory and publish it as `final_path`."""
    datasets_dir = final_path.parent
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

    _remove_abandoned_temporaries(datasets_dir, final_path.name)
    owner = f"{socket.gethostname()}-{os.getpid()}"
    temporary_path = datasets_dir / f".{final_path.name}.tmp-{owner}-{uuid.uuid4().hex[:8]}"
    temporary_path.mkdir()
    try:
        written = _write_shards(
            temporary_path, source, records, split_of, config.image_size, workers
        )
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": final_path.name,
            "fingerprint": fingerprint,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source_fingerprint,
            "config": config.model_dump(),
            "split_strategy": strategy,
            "split_note": _split_note(config.split, strategy),
            "image_shape": [config.image_size, config.image_size, 3],
            "label_names": list(LABEL_NAMES),
            "rows": sum(shard["rows"] for shard in written.shards),
            "shards": written.shards,
            "counts": written.counts,
            "source_image_sizes": written.source_sizes,
            "skipped": source.listing_skips() + written.skipped,
        }
        if manifest["rows"] == 0:
            raise DatasetError(f"no image of source {source.kind!r} could be decoded")
        write_json_durably(temporary_path / MANIFEST_NAME, manifest)
        _publish(temporary_path, final_path)
    finally:
        shutil.rmtree(temporary_path, ignore_errors=True)
    return open_dataset(final_path)


def open_dataset(path: str | Path) -> Dataset:
    """Open a finished dataset, refusing anything without a complete manifest and shards."""
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.exists():
        reason = "is a broken link" if path.is_symlink() else "does not exist"
        raise DatasetError(f"dataset {str(path)!r} {reason}")
    if not path.is_dir():
        raise DatasetError(
            f"dataset {str(path)!r} is not a directory (a dataset is a directory of Parquet "
            f"shards and a {MANIFEST_NAME})"
        )
    if not manifest_path.is_file():
        raise DatasetError(f"dataset {str(path)!r} has no {MANIFEST_NAME}: not a finished dataset")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"dataset manifest {str(manifest_path)!r} is corrupt: {exc}") from exc
    problem = _manifest_problem(manifest)
    if problem:
        raise DatasetError(f"dataset manifest {str(manifest_path)!r} is malformed: {problem}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DatasetError(
            f"dataset {str(path)!r} has format {manifest['format_version']!r}, "
            f"expected {FORMAT_VERSION}; ingest it again"
        )
    for shard in manifest["shards"]:
        shard_path = path / shard["file"]
        if _parquet_rows(shard_path) != shard["rows"]:
            raise DatasetError(f"dataset shard {str(shard_path)!r} is missing or incomplete")
    return Dataset(path=path, manifest=manifest)


MANIFEST_FIELDS: dict[str, type] = {
    "name": str,
    "fingerprint": str,
    "source": dict,
    "split_strategy": str,
    "split_note": str,
    "image_shape": list,
    "label_names": list,
    "rows": int,
    "shards": list,
    "counts": dict,
    "skipped": list,
}
"""The manifest's fields that readers rely on, with their types."""
JSON_TYPE_NAMES = {str: "string", dict: "object", list: "array", int: "integer"}


def _manifest_problem(manifest: Any) -> str | None:
    """What makes a parsed manifest unusable (None when its structure is sound)."""
    if not isinstance(manifest, dict):
        return f"a JSON {JSON_TYPE_NAMES.get(type(manifest), 'value')}, not an object"
    if "format_version" not in manifest:
        return "no 'format_version'"
    if manifest["format_version"] != FORMAT_VERSION:
        return None  # another format: refused by version, with advice
    for key, kind in MANIFEST_FIELDS.items():
        if key not in manifest:
            return f"no {key!r}"
        value = manifest[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} is {_excerpt(value)}, not a JSON {JSON_TYPE_NAMES[kind]}"
    shape = manifest["image_shape"]
    if len(shape) != 3 or not all(_is_count(side) and side > 0 for side in shape):
        return f"'image_shape' is {_excerpt(shape)}, not [height, width, channels]"
    for index, shard in enumerate(manifest["shards"]):
        if not (
            isinstance(shard, dict)
            and isinstance(shard.get("file"), str)
            and _is_plain_file_name(shard["file"])
            and _is_count(shard.get("rows"))
        ):
            return f"shard {index} is {_excerpt(shard)}, not a file name and row count"
    return None


def _excerpt(value: Any, length: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= length else text[: length - 1] + "…"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_plain_file_name(name: str) -> bool:
    """A file inside the dataset directory itself: no folder, no `..`, not absolute."""
    return name not in ("", ".", "..") and "/" not in name and "\\" not in name


def describe_manifest(manifest: dict[str, Any], path: Path, max_skipped: int = 50) -> str:
    """A markdown summary of a dataset: counts per split and class, source image sizes,
    and the skipped files with their reasons."""
    lines = [
        f"# Dataset `{manifest['name']}`",
        "",
        f"- location: `{path}`",
        f"- source: `{json.dumps(manifest['source'])}`",
        f"- {manifest['rows']} images of {'×'.join(map(str, manifest['image_shape']))}; "
        f"{manifest['split_note']}",
        "",
        "| split | " + " | ".join(manifest["label_names"]) + " |",
        "| --- | " + " | ".join("---:" for _ in manifest["label_names"]) + " |",
    ]
    for split, per_label in manifest["counts"].items():
        lines.append(f"| {split} | " + " | ".join(str(n) for n in per_label.values()) + " |")
    sizes = manifest.get("source_image_sizes", {})
    if sizes.get("width"):
        lines += ["", "Source image sizes (pixels):", "", "| | min | median | mean | max |"]
        lines.append("| --- | ---: | ---: | ---: | ---: |")
        for axis, stats in sizes.items():
            values = (stats[name] for name in ("min", "median", "mean", "max"))
            lines.append(f"| {axis} | " + " | ".join(map(str, values)) + " |")
    skipped = manifest["skipped"]
    lines += ["", f"Skipped: {len(skipped)}"]
    lines += [f"- `{entry['source_id']}`: {entry['reason']}" for entry in skipped[:max_skipped]]
    if len(skipped) > max_skipped:
        lines.append(f"- … and {len(skipped) - max_skipped} more (listed in the manifest)")
    return "\n".join(lines) + "\n"


def _parquet_rows(path: Path) -> int | None:
    """Rows recorded in a Parquet file's footer, or None if it is missing or unreadable."""
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException):
        return None


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
class _ShardResult:
    """What one shard received: its rows, their counts, and what was skipped."""

    file: str
    rows: int = 0
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {split: dict.fromkeys(LABEL_NAMES, 0) for split in SPLITS}
    )
    skipped: list[dict[str, str]] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    heights: list[int] = field(default_factory=list)


ShardJob = tuple[Path, int, list[tuple[CellRecord, str]], CellSource | None, list[Payload] | None]
"""Shard path, image size, (record, split) rows, and either the source or the payloads."""


def _write_shard(
    path: Path,
    image_size: int,
    rows: list[tuple[CellRecord, str]],
    source: CellSource | None,
    payloads: list[Payload] | None,
) -> _ShardResult:
    """Read, decode, resize and write one shard (in a worker process when parallel).

    A random-access source reads its own payloads here, so no pixels cross processes; a
    sequential source's payloads come from the parent.
    """
    split_of = {record.source_id: split for record, split in rows}
    records = [record for record, _ in rows]
    stream = source.iter_payloads(records) if source else zip(records, payloads, strict=True)
    schema = _schema(image_size)
    result = _ShardResult(file=path.name)
    writer: pq.ParquetWriter | None = None
    batch: list[tuple[CellRecord, np.ndarray]] = []

    def flush() -> None:
        nonlocal writer
        if writer is None:
            writer = pq.ParquetWriter(
                path, schema, compression=COMPRESSION, use_dictionary=DICTIONARY_COLUMNS
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
            writer.close()
    if writer is not None:
        _fsync(path)
    return result


@dataclass
class _WriteSummary:
    shards: list[dict[str, Any]]
    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]]
    source_sizes: dict[str, dict[str, float]]


def _write_shards(
    directory: Path,
    source: CellSource,
    records: Sequence[CellRecord],
    split_of: dict[str, str],
    image_size: int,
    workers: int | None,
) -> _WriteSummary:
    """Write all records as shards, over worker processes when there are enough images."""
    workers = workers or os.cpu_count() or 1
    rows = [(record, split_of[record.source_id]) for record in records]
    shard_rows = min(ROWS_PER_SHARD, max(WRITE_BATCH, -(-len(rows) // (4 * workers))))
    jobs = _shard_jobs(directory, source, rows, shard_rows, image_size)
    if workers == 1 or len(rows) < PARALLEL_THRESHOLD:
        results = [_write_shard(*job) for job in jobs]
    else:
        # loky spawns fresh workers (never forks a process running TensorFlow) without
        # re-running the caller's __main__, and reuses them across calls.
        pool = get_reusable_executor(max_workers=workers, timeout=WORKER_IDLE_SECONDS)
        results = list(_bounded_map(pool, _write_shard, jobs, max_in_flight=2 * workers))
    results.sort(key=lambda result: result.file)
    counts = {split: dict.fromkeys(LABEL_NAMES, 0) for split in SPLITS}
    for result in results:
        for split, per_label in result.counts.items():
            for label_name, count in per_label.items():
                counts[split][label_name] += count
    widths = [width for result in results for width in result.widths]
    heights = [height for result in results for height in result.heights]
    return _WriteSummary(
        shards=[{"file": result.file, "rows": result.rows} for result in results if result.rows],
        counts=counts,
        skipped=[entry for result in results for entry in result.skipped],
        source_sizes={"width": _describe(widths), "height": _describe(heights)},
    )


def _shard_jobs(
    directory: Path,
    source: CellSource,
    rows: list[tuple[CellRecord, str]],
    shard_rows: int,
    image_size: int,
) -> Iterator[ShardJob]:
    """One job per shard: random-access sources read in the job, others stream from here."""
    if source.random_access:
        for index, start in enumerate(range(0, len(rows), shard_rows)):
            path = directory / f"part-{index:05d}.parquet"
            yield path, image_size, rows[start : start + shard_rows], source, None
        return
    split_of = dict((record.source_id, split) for record, split in rows)
    stream = source.iter_payloads([record for record, _ in rows])
    for index in itertools.count():
        chunk = list(islice(stream, shard_rows))
        if not chunk:
            return
        chunk_rows = [(record, split_of[record.source_id]) for record, _ in chunk]
        path = directory / f"part-{index:05d}.parquet"
        yield path, image_size, chunk_rows, None, [payload for _, payload in chunk]


def _bounded_map(pool, function, jobs: Iterable[tuple], max_in_flight: int) -> Iterator:
    """Like `pool.map`, but never more than `max_in_flight` jobs are held at once."""
    pending: set = set()
    try:
        for job in jobs:
            pending.add(pool.submit(function, *job))
            if len(pending) >= max_in_flight:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    finally:
        for future in pending:
            future.cancel()


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


def write_json_durably(path: Path, content: dict[str, Any]) -> None:
    """Write JSON and fsync it, so a rename that publishes it never exposes an empty file."""
    with open(path, "w") as handle:
        json.dump(content, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _remove_abandoned_temporaries(datasets_dir: Path, name: str) -> None:
    """Delete temporary directories of `name` left by dead processes of this host.

    Directories of live processes (a concurrent ingest) or of other hosts are left alone.
    """
    prefix = f".{name}.tmp-{socket.gethostname()}-"
    for path in datasets_dir.glob(f".{name}.tmp-*"):
        pid, _, _ = path.name.removeprefix(prefix).partition("-")
        if path.name.startswith(prefix) and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


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
