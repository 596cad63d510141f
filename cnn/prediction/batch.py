"""Batch prediction: read cell images from a folder or Parquet, fit them to a model, score.

A model's own preprocessing is inside it (rescaling, a backbone's `preprocess_input`); what
the caller must match is its input size, so images of another size are resized (bilinear,
as at ingest) and grayscale or alpha images converted to RGB, and both are counted.
"""

import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType
from pydantic import BaseModel

from cnn.config import DEFAULT_FLAG_PARASITEMIA, DEFAULT_GROUPING
from cnn.data.dataset import Dataset, images_from_column, open_dataset
from cnn.data.manifest import manifest_path
from cnn.errors import InputError
from cnn.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    predicted_labels,
)
from cnn.evaluation.parasitemia import UNCORRECTED, ErrorRates
from cnn.evaluation.scoring import (
    fit_images,
    model_image_size,
    parasitized_probability,
)
from cnn.images import fit_encoded
from cnn.ingest.parallel import parallel_map
from cnn.io.storage import Location, location
from cnn.io.writes import OutputPathError, check_output_file
from cnn.labels import LABEL_NAMES, PARASITIZED
from cnn.prediction.patients import (
    cell_grouper,
    patient_frame,
    patient_table_bytes,
    patients_location,
)
from cnn.sources.files import image_entries, read_folder_entry
from cnn.sources.records import Unreadable

PREDICTION_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("parasitized_probability", pa.float32()),
        ("predicted_label", pa.int8()),
        ("predicted_name", pa.string()),
    ]
)


class PredictionInputError(InputError):
    """The input to score is missing, empty, or in a layout this cannot read."""


@dataclass
class InputReport:
    """What had to be done to the input so the model could score it."""

    scored: int = 0
    resized: int = 0
    converted_to_rgb: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """Plain sentences for logs and summaries, one per kind of adjustment."""
        notes = []
        if self.resized:
            notes.append(f"{self.resized} image(s) resized to the model's input size")
        if self.converted_to_rgb:
            notes.append(f"{self.converted_to_rgb} grayscale or alpha image(s) converted to RGB")
        if self.skipped:
            notes.append(f"{len(self.skipped)} file(s) skipped as unreadable")
        return notes


Batch = tuple[list[str], np.ndarray]
"""Source ids and their uint8 images (N × size × size × 3)."""


def iter_input_batches(
    source: str | Path, image_size: int, batch_size: int, report: InputReport
) -> Iterator[Batch]:
    """Batches from a folder of images (searched recursively), a dataset directory, or a
    Parquet file (a dataset shard, or an `image` column of encoded image bytes)."""
    where = location(source)
    kind = where.info().type
    if kind == FileType.NotFound:
        raise PredictionInputError(f"input {where.uri!r} does not exist")
    if kind == FileType.Directory and manifest_path(where):
        batches = _dataset_batches(open_dataset(where), image_size, batch_size, report)
    elif kind == FileType.Directory:
        if not where.is_local:
            raise PredictionInputError(
                f"input {where.uri!r}: a folder of images must be local (datasets and Parquet "
                "files can be anywhere)"
            )
        batches = _folder_batches(Path(where.path), image_size, batch_size, report)
    else:
        batches = _parquet_batches(where, image_size, batch_size, report)
    empty = True
    for batch in batches:
        empty = False
        report.scored += len(batch[0])
        yield batch
    if empty:
        raise PredictionInputError(f"input {where.uri!r} holds no readable image")


def score_batches(
    model: keras.Model, batches: Iterator[Batch], threshold: float = DEFAULT_THRESHOLD
) -> pa.Table:
    """One row per image: source id, P(parasitized), predicted label (parasitized where
    P(parasitized) > `threshold`) and its name."""
    source_ids: list[str] = []

    def images_of_batches() -> Iterator[np.ndarray]:
        for ids, images in batches:
            source_ids.extend(ids)
            yield images

    parasitized = parasitized_probability(model, images_of_batches())
    labels = predicted_labels(parasitized, threshold)
    return pa.table(
        [
            pa.array(source_ids, pa.string()),
            pa.array(parasitized, pa.float32()),
            pa.array(labels, pa.int8()),
            pa.array([LABEL_NAMES[label] for label in labels], pa.string()),
        ],
        schema=PREDICTION_SCHEMA,
    )


def write_predictions(table: pa.Table, output: str | Path, metadata: dict[str, str]) -> str:
    """Write the predictions atomically (a crash leaves no partial file at `output`), to a
    local file or an object store's URI; return where they are."""
    where = location(output)
    if where.is_local:
        check_output_file(Path(where.path))
    elif where.is_dir():
        raise OutputPathError(f"{where.uri!r} is a folder of objects; name a .parquet file")
    encoded = pa.BufferOutputStream()  # a row per image, no pixels: small enough to hold
    pq.write_table(table.replace_schema_metadata(metadata), encoded)
    where.write_bytes(encoded.getvalue().to_pybytes())
    return where.uri


class PredictionSummary(BaseModel):
    """Where the predictions went (a row per cell, and a row per patient beside them) and
    what the input needed."""

    model_uri: str
    input: str
    output: str
    patients: str
    rows: int
    parasitized: int
    groups: int
    flagged_groups: list[str]
    resized: int
    converted_to_rgb: int
    skipped: list[dict[str, str]]
    seconds: float


@dataclass(frozen=True)
class PatientOptions:
    """How cells make patients: the grouping (`cnn.prediction.patients`), the model's error
    rates that correct the parasitemia, and the parasitemia above which a patient is flagged."""

    grouping: str = DEFAULT_GROUPING
    rates: ErrorRates = UNCORRECTED
    flag_above: float = DEFAULT_FLAG_PARASITEMIA


def predict_to_file(
    model: keras.Model,
    threshold: float,
    model_uri: str,
    input_path: str,
    output_path: str,
    batch_size: int,
    patients: PatientOptions = PatientOptions(),
) -> tuple[PredictionSummary, pd.DataFrame, list[str]]:
    """Score every image of the input in batches at the model's image size, labels at
    `threshold`; write them atomically to `output_path`, and the per-patient table beside
    them (`patients_location`). Returns the summary, the per-patient table and notes on what
    the input needed (resized, converted, skipped images)."""
    started = time.perf_counter()
    patients_output = patients_location(output_path)
    if location(patients_output).is_local:  # refused before the scoring, not after it
        check_output_file(location(patients_output).path)
    groups_of = cell_grouper(patients.grouping, input_path)
    report = InputReport()
    batches = iter_input_batches(input_path, model_image_size(model), batch_size, report)
    table = score_batches(model, batches, threshold)
    labels = table.column("predicted_label").to_numpy()
    groups = groups_of(table.column("source_id").to_pylist())
    per_patient = patient_frame(groups, labels == PARASITIZED, patients.rates, patients.flag_above)
    metadata = {"model_uri": model_uri, "input": input_path}
    write_predictions(table, output_path, metadata)
    location(patients_output).write_bytes(
        patient_table_bytes(per_patient, {**metadata, "grouping": patients.grouping})
    )
    summary = PredictionSummary(
        model_uri=model_uri,
        input=input_path,
        output=output_path,
        patients=patients_output,
        groups=len(per_patient),
        flagged_groups=per_patient.loc[per_patient["flagged"], "group"].tolist(),
        rows=table.num_rows,
        parasitized=int(np.sum(labels == PARASITIZED)),
        resized=report.resized,
        converted_to_rgb=report.converted_to_rgb,
        skipped=report.skipped,
        seconds=round(time.perf_counter() - started, 3),
    )
    return summary, per_patient, report.notes()


def _folder_batches(
    folder: Path, image_size: int, batch_size: int, report: InputReport
) -> Iterator[Batch]:
    """Images of the folder's image-named files in path order, each read as a folder source
    reads it (size-capped, links out of the folder and non-files skipped and reported)."""
    root = folder.resolve()
    entries = _image_entries(root, report)
    chunks = (
        _read_entries(entries[start : start + batch_size], root, report)
        for start in range(0, len(entries), batch_size)
    )
    return _decoded_batches(chunks, len(entries), image_size, batch_size, report)


def _decoded_batches(
    chunks: Iterator[tuple[list[str], list[bytes]]],
    images: int,
    image_size: int,
    batch_size: int,
    report: InputReport,
) -> Iterator[Batch]:
    """Chunks of (source ids, encoded images) decoded and fitted to the model, over worker
    processes a few chunks ahead of the model when there are enough `images` (at a priority
    below the model's, so that on CPUs they decode while it waits, not while it computes);
    yielded in order, in full batches. Images that cannot be decoded are reported."""
    chunk_ids: deque[list[str]] = deque()

    def jobs() -> Iterator[tuple[list[bytes], int]]:
        for ids, payloads in chunks:
            chunk_ids.append(ids)
            yield payloads, image_size

    ids, pixels = [], []
    for fitted in parallel_map(fit_encoded, jobs(), images, workers=None, yield_to_caller=True):
        for source_id, image in zip(chunk_ids.popleft(), fitted, strict=True):
            if isinstance(image, str):
                report.skipped.append({"source_id": source_id, "reason": image})
                continue
            report.converted_to_rgb += image.converted_to_rgb
            report.resized += image.resized
            ids.append(source_id)
            pixels.append(image.pixels)
        while len(ids) >= batch_size:
            yield ids[:batch_size], np.stack(pixels[:batch_size])
            ids, pixels = ids[batch_size:], pixels[batch_size:]
    if ids:
        yield ids, np.stack(pixels)


def _read_entries(
    entries: list[os.DirEntry], root: Path, report: InputReport
) -> tuple[list[str], list[bytes]]:
    """The source ids and bytes of the entries that can be read; the others are reported."""
    ids, payloads = [], []
    for entry in entries:
        source_id = str(Path(entry.path).relative_to(root))
        payload = read_folder_entry(entry, root)
        if isinstance(payload, Unreadable):
            report.skipped.append({"source_id": source_id, "reason": payload.reason})
            continue
        ids.append(source_id)
        payloads.append(payload)
    return ids, payloads


def _image_entries(root: Path, report: InputReport) -> list[os.DirEntry]:
    """Image-named entries under `root`, searched recursively (a folder that cannot be listed
    is reported)."""

    def unlistable(folder: Path, error: OSError) -> None:
        reason = f"cannot list folder: {error.strerror or error}"
        report.skipped.append({"source_id": str(folder.relative_to(root)), "reason": reason})

    return image_entries(root, recursive=True, unlistable=unlistable)


def _dataset_batches(
    dataset: Dataset, image_size: int, batch_size: int, report: InputReport
) -> Iterator[Batch]:
    for shard in dataset.shards:
        yield from _raw_pixel_batches(
            shard.parquet(), dataset.image_shape, image_size, batch_size, report
        )


def _parquet_batches(
    path: Location, image_size: int, batch_size: int, report: InputReport
) -> Iterator[Batch]:
    try:
        parquet = path.parquet()
    except (pa.ArrowInvalid, OSError) as error:
        raise PredictionInputError(f"input {path.uri!r} is not a Parquet file: {error}") from error
    schema = parquet.schema_arrow
    if "image" not in schema.names:
        raise PredictionInputError(f"Parquet input {path.uri!r} has no 'image' column")
    shape = (schema.metadata or {}).get(b"image_shape")
    if shape is not None:  # a dataset shard: raw pixels
        yield from _raw_pixel_batches(parquet, json.loads(shape), image_size, batch_size, report)
        return
    _check_column_types(path, schema)
    columns = ["image", "source_id"] if "source_id" in schema.names else ["image"]
    yield from _decoded_batches(
        _encoded_chunks(parquet, columns, batch_size),
        parquet.metadata.num_rows,
        image_size,
        batch_size,
        report,
    )


COLUMN_TYPES = {
    "image": ("image bytes", (pa.types.is_binary, pa.types.is_large_binary)),
    "source_id": ("text", (pa.types.is_string, pa.types.is_large_string)),
}
"""What the columns of a Parquet input that are read must hold, and the Arrow types for it."""


def _check_column_types(path: Location, schema: pa.Schema) -> None:
    for name, (content, accepted) in COLUMN_TYPES.items():
        kind = schema.field(name).type if name in schema.names else None
        if kind is not None and not any(is_type(kind) for is_type in accepted):
            raise PredictionInputError(
                f"Parquet input {path.uri!r}: column {name!r} holds {kind}, not {content}"
            )


def _encoded_chunks(
    parquet: pq.ParquetFile, columns: list[str], batch_size: int
) -> Iterator[tuple[list[str], list[bytes]]]:
    """(source ids, encoded images) of a Parquet file's rows; ids `row-N` when it has none."""
    row = 0
    for record_batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
        payloads = [payload or b"" for payload in record_batch.column("image").to_pylist()]
        ids = (
            record_batch.column("source_id").to_pylist()
            if "source_id" in columns
            else [f"row-{row + offset}" for offset in range(len(payloads))]
        )
        row += len(payloads)
        yield ids, payloads


def _raw_pixel_batches(
    parquet: pq.ParquetFile,
    image_shape: list[int] | tuple[int, ...],
    image_size: int,
    batch_size: int,
    report: InputReport,
) -> Iterator[Batch]:
    for record_batch in parquet.iter_batches(batch_size=batch_size, columns=["image", "source_id"]):
        images = images_from_column(pa.chunked_array([record_batch.column("image")]), image_shape)
        if tuple(image_shape[:2]) != (image_size, image_size):
            report.resized += len(images)
        yield record_batch.column("source_id").to_pylist(), fit_images(images, image_size)
