"""Finished Parquet datasets: a folder (or object-store prefix) of shards plus
`_manifest.json`; opened only when the manifest's counts match its shards, read by split."""

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow.fs import FileType
from pydantic import BaseModel

from cnn.data.manifest import MANIFEST_NAME, DatasetError, Manifest, manifest_path
from cnn.io.storage import Location, location

SPLITS: tuple[str, str, str] = ("train", "validation", "test")


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


def split_groups(dataset: Dataset, split: str) -> np.ndarray:
    """The patient (group) of each row of a split, in the split's order."""
    table = pq.read_table(
        [shard.path for shard in dataset.shards],
        filesystem=dataset.location.filesystem,
        columns=["group"],
        filters=[("split", "=", split)],
    )
    return np.asarray(table["group"].to_pylist(), dtype=object)


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


def images_at(dataset: Dataset, rows: Sequence[int]) -> np.ndarray:
    """The images of the dataset's rows at positions `rows` (in its row order), in the order
    given; only the shards that hold them are read."""
    wanted = np.asarray(rows, dtype=int)
    images = np.empty((len(wanted), *dataset.image_shape), dtype=np.uint8)
    offset = 0
    for shard, listed in zip(dataset.shards, dataset.manifest.shards, strict=True):
        inside = np.flatnonzero((wanted >= offset) & (wanted < offset + listed.rows))
        if len(inside):
            column = shard.parquet().read(columns=["image"])["image"]
            images[inside] = images_from_column(column, dataset.image_shape)[
                wanted[inside] - offset
            ]
        offset += listed.rows
    return images
