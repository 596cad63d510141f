"""Datasets derived from a finished one: the same rows with new splits, some rows left out.

The input is never edited: the copy is written shard by shard (each file at once, atomically,
through `cnn.io`) under a new name, and its manifest, with counts matching its shards, last.
"""

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cnn.data.dataset import SPLITS, Dataset, open_dataset
from cnn.data.manifest import MANIFEST_NAME, Manifest, Shard
from cnn.io.storage import Location

ROW_GROUP_SIZE = 256
"""Rows per Parquet row group, as ingested shards have them (training reads a group at once)."""
COMPRESSION = "zstd"


def dataset_column(dataset: Dataset, column: str) -> np.ndarray:
    """One small column of every row, in the dataset's row order."""
    parts = [shard.parquet().read(columns=[column])[column] for shard in dataset.shards]
    return np.concatenate([part.to_numpy(zero_copy_only=False) for part in parts])


def derive_dataset(
    dataset: Dataset,
    where: Location,
    splits: np.ndarray,
    fingerprint: str,
    split_note: str,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """A copy of `dataset` at `where` whose rows carry `splits` (one per row of `dataset`, in
    its order; None leaves the row out), named after `where`, with `extra` manifest fields."""
    if len(splits) != dataset.rows:
        raise ValueError(f"{len(splits)} splits for the {dataset.rows} rows of {dataset.name!r}")
    where.delete()  # an earlier attempt's files: never a dataset without its manifest
    where.make_folder()
    shards, counts, offset = [], Counter(), 0
    for index, source in enumerate(dataset.shards):
        table = source.parquet().read()
        chosen = splits[offset : offset + table.num_rows]
        offset += table.num_rows
        kept = np.flatnonzero([split is not None for split in chosen])
        if not len(kept):
            continue
        table = _with_splits(table.take(pa.array(kept)), chosen[kept].astype(str))
        file = f"part-{index:05d}.parquet"
        (where / file).write_bytes(_parquet_bytes(table))
        shards.append(Shard(file=file, rows=table.num_rows))
        labels = table["label_name"].to_numpy(zero_copy_only=False)
        counts.update(zip(chosen[kept], labels, strict=True))
    manifest = Manifest.model_validate(
        {
            **dataset.manifest.model_dump(mode="json"),
            **(extra or {}),
            "name": where.name,
            "fingerprint": fingerprint,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "split_note": split_note,
            "rows": sum(shard.rows for shard in shards),
            "shards": [shard.model_dump() for shard in shards],
            "counts": _counts(counts, dataset.manifest.label_names),
        }
    )
    manifest.write(where / MANIFEST_NAME)
    return open_dataset(where)


def _with_splits(table: pa.Table, splits: np.ndarray) -> pa.Table:
    column = table.schema.get_field_index("split")
    kind = table.schema.field("split").type
    return table.set_column(column, "split", pa.array(splits.tolist(), type=kind))


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, row_group_size=ROW_GROUP_SIZE, compression=COMPRESSION)
    return buffer.getvalue().to_pybytes()


def _counts(held: Counter, label_names: list[str]) -> dict[str, dict[str, int]]:
    """Images per split and class, every class named in each split (zeros too)."""
    present = {split for split, _ in held}
    splits = [split for split in SPLITS if split in present] + sorted(present - set(SPLITS))
    return {split: {name: held[split, name] for name in label_names} for split in splits}
