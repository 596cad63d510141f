"""A dataset's manifest: what the dataset holds, written last, read back and checked whole.

The manifest is the dataset's commit record: shards are written first and the manifest
last, so a directory without one is not a dataset. Reading it checks every field a reader
relies on (types, an image shape, shard file names that stay inside the directory) and says
which one is wrong.
"""

import json
import typing
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
)

from cnn.errors import InputError
from cnn.io.storage import Location

FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
"""Beside the shards; the leading underscore makes pyarrow and pandas skip it, so
`pd.read_parquet(dataset_dir)` reads the rows."""
LEGACY_MANIFEST_NAME = "manifest.json"
"""The name datasets written before had; they open as they are."""


def manifest_path(dataset_dir: Location) -> Location | None:
    """The manifest of a dataset directory (either name), or None when it has none yet."""
    for name in (MANIFEST_NAME, LEGACY_MANIFEST_NAME):
        if (dataset_dir / name).is_file():
            return dataset_dir / name
    return None


class DatasetError(InputError):
    """A dataset path is missing, incomplete or not a dataset; the message names it."""


def _plain_file_name(name: str) -> str:
    """A file inside the dataset directory itself: no folder, no `..`, not absolute."""
    if name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError("not a file name inside the dataset")
    return name


Count = Annotated[StrictInt, Field(ge=0)]
Side = Annotated[StrictInt, Field(gt=0)]


class Shard(BaseModel):
    """One Parquet file of the dataset and how many rows it holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    file: Annotated[StrictStr, AfterValidator(_plain_file_name)]
    rows: Count


class Manifest(BaseModel):
    """Everything a reader of the dataset relies on (extra fields are kept as they are)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format_version: StrictInt
    name: StrictStr
    fingerprint: StrictStr
    created_at: StrictStr | None = None
    source: dict[str, Any]
    config: dict[str, Any] = Field(default_factory=dict)
    split_strategy: StrictStr
    split_note: StrictStr
    image_shape: tuple[Side, Side, Side]
    label_names: list[StrictStr]
    rows: Count
    shards: list[Shard]
    counts: dict[str, dict[str, Count]]
    source_image_sizes: dict[str, Any] = Field(default_factory=dict)
    skipped: list[dict[str, Any]]

    @classmethod
    def read(cls, location: Location) -> "Manifest":
        """The manifest at `location`, or a `DatasetError` naming it and what is wrong."""
        path = location.uri
        try:
            content = json.loads(location.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"dataset manifest {path!r} is corrupt: {exc}") from exc
        if not isinstance(content, dict):
            kind = JSON_TYPE_NAMES.get(type(content), "value")
            raise DatasetError(
                f"dataset manifest {path!r} is malformed: a JSON {kind}, not an object"
            )
        version = content.get("format_version")
        if version is None:
            raise DatasetError(f"dataset manifest {path!r} is malformed: no 'format_version'")
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"dataset {path.rsplit('/', 1)[0]!r} has format {version!r}, expected "
                f"{FORMAT_VERSION}; ingest it again"
            )
        try:
            return cls.model_validate(content)
        except ValidationError as error:
            problem = _problem(error, content)
            raise DatasetError(f"dataset manifest {path!r} is malformed: {problem}") from None

    def describe(self, path: str, max_skipped: int = 50) -> str:
        """A markdown summary of the dataset at `path`: counts per split and class, source
        image sizes, and the skipped files with their reasons."""
        lines = [
            f"# Dataset `{self.name}`",
            "",
            f"- location: `{path}`",
            f"- source: `{json.dumps(self.source)}`",
            f"- {self.rows} images of {'×'.join(map(str, self.image_shape))}; {self.split_note}",
            "",
            "| split | " + " | ".join(self.label_names) + " |",
            "| --- | " + " | ".join("---:" for _ in self.label_names) + " |",
        ]
        for split, per_label in self.counts.items():
            lines.append(f"| {split} | " + " | ".join(str(n) for n in per_label.values()) + " |")
        sizes = self.source_image_sizes
        if sizes.get("width"):
            lines += ["", "Source image sizes (pixels):", "", "| | min | median | mean | max |"]
            lines.append("| --- | ---: | ---: | ---: | ---: |")
            for axis, stats in sizes.items():
                values = (stats[name] for name in ("min", "median", "mean", "max"))
                lines.append(f"| {axis} | " + " | ".join(map(str, values)) + " |")
        skipped = self.skipped
        lines += ["", f"Skipped: {len(skipped)}"]
        lines += [f"- `{entry['source_id']}`: {entry['reason']}" for entry in skipped[:max_skipped]]
        if len(skipped) > max_skipped:
            lines.append(f"- … and {len(skipped) - max_skipped} more (listed in the manifest)")
        return "\n".join(lines) + "\n"

    def write(self, where: Location) -> None:
        """Write the manifest at `where` atomically: the dataset's commit."""
        where.write_bytes(json.dumps(self.model_dump(mode="json"), indent=2).encode())


JSON_TYPE_NAMES = {str: "string", dict: "object", list: "array", int: "integer", float: "number"}
SHAPE = "[height, width, channels]"


def _problem(error: ValidationError, content: dict[str, Any]) -> str:
    """The first thing wrong, in the manifest's own terms: a missing field, or a field, the
    value it holds and what it should be."""
    first = error.errors()[0]
    location = first["loc"]
    field = str(location[0])
    if first["type"] == "missing" and len(location) == 1:
        return f"no {field!r}"
    if field == "shards" and len(location) > 1 and isinstance(location[1], int):
        shard = _excerpt(content["shards"][location[1]])
        return f"shard {location[1]} is {shard}, not a file name and row count"
    value = content.get(field)
    if field == "image_shape":
        return f"'image_shape' is {_excerpt(value)}, not {SHAPE}"
    kind = typing.get_origin(Manifest.model_fields[field].annotation)
    kind = kind or Manifest.model_fields[field].annotation
    if kind in JSON_TYPE_NAMES and (not isinstance(value, kind) or isinstance(value, bool)):
        return f"{field!r} is {_excerpt(value)}, not a JSON {JSON_TYPE_NAMES[kind]}"
    return f"{field!r} is {_excerpt(value)}: {first['msg'].lower()}"


def _excerpt(value: Any, length: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= length else text[: length - 1] + "…"
