"""Where cell images come from: `tfds`, `folder:PATH` (a local folder or a URI such as
`s3://bucket/cells`) and `zip:PATH` (NIH layout), `synthetic`.

A source lists its records cheaply (id, label, patient group) before any image is decoded,
so subsets and splits are decided first; then it streams the payloads of chosen records.
"""

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnn.io.storage import location
from cnn.sources import synthetic
from cnn.sources.files import FolderSource, ZipSource
from cnn.sources.records import CellRecord, CellSource, Payload, SourceError
from cnn.sources.stored_folder import StoredFolderSource
from cnn.sources.tfds_source import TfdsSource

SOURCE_KINDS = ("tfds", "synthetic", "folder:PATH", "zip:PATH")
SYNTHETIC_DEFAULT_COUNT = 2_500
"""A synthetic source's size when no `--limit` is given; a `--limit` sets it instead."""
SYNTHETIC_MAX_COUNT = 1_000_000
"""36× the NIH set: a larger `--limit` is a typo, and listing it alone would exhaust memory."""
SYNTHETIC_CELLS_PER_PATIENT = 10
"""About the NIH average (the sample: 2,500 cells of 144 patients)."""


def check_source_spec(spec: str) -> None:
    """Raise SourceError unless `spec` is a well-formed source specification."""
    kind, _, argument = spec.partition(":")
    if kind in ("tfds", "synthetic") and not argument:
        return
    if kind in ("folder", "zip") and argument:
        return
    raise SourceError(f"unknown source {spec!r}; expected one of {', '.join(SOURCE_KINDS)}")


def open_source(
    spec: str, *, limit: int | None = None, tfds_data_dir: str | None = None
) -> CellSource:
    """Build the source that `spec` names, checking that its location is usable.

    The synthetic source draws `limit` cells (default 2,500); the others hold what they hold.
    """
    check_source_spec(spec)
    kind, _, argument = spec.partition(":")
    if kind == "synthetic":
        if limit is not None and limit > SYNTHETIC_MAX_COUNT:
            raise SourceError(
                f"source 'synthetic' draws at most {SYNTHETIC_MAX_COUNT:,} cells (limit {limit:,})"
            )
        return SyntheticSource(count=limit or SYNTHETIC_DEFAULT_COUNT)
    if kind == "tfds":
        return TfdsSource(data_dir=tfds_data_dir)
    if kind == "zip":
        return ZipSource(Path(argument))
    if "://" in argument:
        return StoredFolderSource(location(argument))
    return FolderSource(Path(argument))


class SyntheticSource(CellSource):
    """Procedurally drawn cells (see `cnn.sources.synthetic`), balanced, in synthetic patients."""

    kind = "synthetic"

    def __init__(self, count: int = SYNTHETIC_DEFAULT_COUNT, seed: int = 0) -> None:
        self.count = count
        self.seed = seed

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "seed": self.seed,
            "generator_version": synthetic.GENERATOR_VERSION,
        }

    def list_records(self) -> list[CellRecord]:
        return [
            CellRecord(
                source_id=f"synthetic_{index:06d}.png",
                label=index % 2,
                group=f"SYN{index // SYNTHETIC_CELLS_PER_PATIENT:04d}",
            )
            for index in range(self.count)
        ]

    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        for record in records:
            index = int(record.source_id.removeprefix("synthetic_").removesuffix(".png"))
            rng = np.random.default_rng([self.seed, index])
            yield record, synthetic.draw_cell(rng, parasitized=record.label == 0)
