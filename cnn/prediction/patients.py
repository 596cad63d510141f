"""Batch prediction per patient (or slide): which group each scored cell belongs to, and the
per-group table written beside the cell table as `<output stem>.patients.parquet`."""

from collections.abc import Callable
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from cnn.config import COLUMN_GROUPING
from cnn.data.dataset import open_dataset
from cnn.data.manifest import manifest_path
from cnn.errors import InputError
from cnn.evaluation.parasitemia import PATIENT_SCHEMA, ErrorRates, patient_table
from cnn.io.storage import location
from cnn.sources.records import patient_group

PATIENTS_SUFFIX = ".patients.parquet"


class GroupingError(InputError):
    """A grouping that names nothing this input has."""


def patients_location(output: str) -> str:
    """Where the per-patient table of the cell table at `output` goes: beside it, the same
    stem (`scored.parquet` → `scored.patients.parquet`)."""
    head, slash, name = output.rpartition("/")
    stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
    return f"{head}{slash}{stem}{PATIENTS_SUFFIX}"


def cell_grouper(grouping: str, input_path: str) -> Callable[[list[str]], np.ndarray]:
    """What gives each scored cell its group, in order, from its source id. A `column:NAME`
    grouping reads the column now, so a missing one is named before any scoring."""
    if grouping == "prefix":
        return lambda ids: np.array([patient_group(PurePosixPath(i).name) for i in ids], object)
    if grouping == "folder":
        return lambda ids: np.array([PurePosixPath(i).parent.name or "." for i in ids], object)
    column = grouping.removeprefix(COLUMN_GROUPING)
    by_id = _column_by_source_id(input_path, column)

    def from_column(source_ids: list[str]) -> np.ndarray:
        missing = [i for i in source_ids if i not in by_id]
        if missing:
            raise GroupingError(
                f"input {input_path!r}: column {column!r} has no value for {missing[0]!r}"
            )
        return np.array([by_id[i] for i in source_ids], dtype=object)

    return from_column


def _column_by_source_id(input_path: str, column: str) -> dict[str, str]:
    where = location(input_path)
    if where.info().type == FileType.Directory:
        if not manifest_path(where):
            raise GroupingError(
                f"input {where.uri!r} is a folder of images: group it by prefix or folder, "
                "not by a column"
            )
        files = [shard.parquet() for shard in open_dataset(where).shards]
    else:
        files = [where.parquet()]
    pairs: dict[str, str] = {}
    for parquet in files:
        names = parquet.schema_arrow.names
        if column not in names:
            raise GroupingError(f"input {where.uri!r} has no column {column!r} to group by")
        table = parquet.read(columns=[column, *(["source_id"] if "source_id" in names else [])])
        values = [str(value) for value in table[column].to_pylist()]
        ids = (
            table["source_id"].to_pylist()
            if "source_id" in names
            else [f"row-{len(pairs) + offset}" for offset in range(len(values))]
        )
        pairs.update(zip(ids, values, strict=True))
    return pairs


def patient_frame(
    groups: np.ndarray, predicted_parasitized: np.ndarray, rates: ErrorRates, flag_above: float
) -> pd.DataFrame:
    """The per-group table with the columns and types of `PATIENT_SCHEMA`."""
    table = patient_table(groups, predicted_parasitized, rates, flag_above)
    return pa.Table.from_pandas(table, schema=PATIENT_SCHEMA, preserve_index=False).to_pandas()


def patient_table_bytes(frame: pd.DataFrame, metadata: dict[str, str]) -> bytes:
    """The per-group table as Parquet bytes (for one atomic write)."""
    table = pa.Table.from_pandas(frame, schema=PATIENT_SCHEMA, preserve_index=False)
    encoded = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(metadata), encoded)
    return encoded.getvalue().to_pybytes()
