"""Where cell images come from: `synthetic`, `folder:PATH` (NIH layout) and `tfds`.

A source lists its records cheaply (id, label, patient group) before any image is decoded,
so subsets and splits are decided first; then it streams the payloads of chosen records.
"""

import hashlib
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from cnn import synthetic
from cnn.labels import CLASS_FOLDERS

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SOURCE_KINDS = ("tfds", "synthetic", "folder:PATH")
SYNTHETIC_DEFAULT_COUNT = 2_500
"""The lecture's dataset size; `--limit` draws a balanced subset of it."""
SYNTHETIC_CELLS_PER_PATIENT = 10
"""About the NIH average (the sample: 2,500 cells of 144 patients)."""
TFDS_DOWNLOAD_URL = "https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip"


class SourceError(ValueError):
    """The source specification or its location is unusable; the message names it."""


class SourceUnavailableError(RuntimeError):
    """The source exists but cannot be reached now (for example: offline)."""


@dataclass(frozen=True)
class CellRecord:
    """One image of a source, known before decoding."""

    source_id: str
    label: int
    group: str
    """Patient/slide id: the NIH file-name prefix before `_IMG_`."""


Payload = bytes | np.ndarray


class CellSource(ABC):
    """A source of labelled cell images."""

    kind: str
    has_patient_groups: bool = True

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able description that changes whenever the source's content changes."""

    @abstractmethod
    def list_records(self) -> list[CellRecord]:
        """All records, in a stable order, without decoding any image."""

    @abstractmethod
    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        """Yield the encoded bytes or pixels of the given records (in any order)."""


def check_source_spec(spec: str) -> None:
    """Raise SourceError unless `spec` is a well-formed source specification."""
    kind, _, argument = spec.partition(":")
    if kind in ("tfds", "synthetic") and not argument:
        return
    if kind == "folder" and argument:
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
        return SyntheticSource(count=limit or SYNTHETIC_DEFAULT_COUNT)
    if kind == "tfds":
        return TfdsSource(data_dir=tfds_data_dir)
    return FolderSource(Path(argument))


def patient_group(file_name: str) -> str:
    """The NIH patient/slide id of a file name (the part before `_IMG_`), else its stem."""
    stem = Path(file_name).stem
    prefix, marker, _ = stem.partition("_IMG_")
    return prefix if marker else stem


class SyntheticSource(CellSource):
    """Procedurally drawn cells (see `cnn.synthetic`), balanced, in synthetic patients."""

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


class FolderSource(CellSource):
    """The NIH layout: `ROOT/Parasitized/*.png` and `ROOT/Uninfected/*.png`."""

    kind = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        if not self.root.exists():
            raise SourceError(f"folder source {str(root)!r} does not exist")
        if not self.root.is_dir():
            raise SourceError(f"folder source {str(root)!r} is not a directory")
        missing = [name for name in CLASS_FOLDERS if not (self.root / name).is_dir()]
        if missing:
            raise SourceError(
                f"folder source {str(root)!r} lacks the class folder(s) {', '.join(missing)} "
                f"(expected {'/ and '.join(CLASS_FOLDERS)}/)"
            )
        self._listing: dict[int, list[Path]] | None = None

    @property
    def _files(self) -> dict[int, list[Path]]:
        """Image files per label, listed once, on first use."""
        if self._listing is None:
            self._listing = {
                label: self._image_files(name) for label, name in enumerate(CLASS_FOLDERS)
            }
        return self._listing

    def _image_files(self, class_folder: str) -> list[Path]:
        folder = self.root / class_folder
        files = sorted(
            path
            for path in folder.iterdir()
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
        )
        if not files:
            raise SourceError(f"class folder {str(folder)!r} holds no images")
        return files

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for files in self._files.values():
            for path in files:
                stat = path.stat()
                digest.update(
                    f"{path.relative_to(self.root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
                )
        return {"kind": self.kind, "root": str(self.root), "files_digest": digest.hexdigest()}

    def list_records(self) -> list[CellRecord]:
        return [
            CellRecord(
                source_id=f"{CLASS_FOLDERS[label]}/{path.name}",
                label=label,
                group=patient_group(path.name),
            )
            for label, files in self._files.items()
            for path in files
        ]

    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        for record in records:
            yield record, (self.root / record.source_id).read_bytes()


class TfdsSource(CellSource):
    """`tfds.load("malaria")`: one `train` split of 27,558 PNGs, no file names, so no patients."""

    kind = "tfds"
    has_patient_groups = False

    def __init__(self, data_dir: str | None = None, download_url: str = TFDS_DOWNLOAD_URL) -> None:
        self.data_dir = data_dir
        self.download_url = download_url

    def _builder(self):
        import tensorflow_datasets as tfds

        return tfds.builder("malaria", data_dir=self.data_dir)

    def _prepared_builder(self):
        builder = self._builder()
        if not builder.is_prepared():
            _require_reachable(self.download_url)
            builder.download_and_prepare()
        return builder

    def _encoded_examples(self) -> Iterator[tuple[int, bytes, int]]:
        import tensorflow_datasets as tfds

        dataset = self._prepared_builder().as_dataset(
            split="train", decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
        )
        for index, example in enumerate(dataset.as_numpy_iterator()):
            yield index, example["image"], int(example["label"])

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": "malaria", "version": str(self._builder().version)}

    def list_records(self) -> list[CellRecord]:
        return [
            CellRecord(
                source_id=f"tfds_malaria_{index:06d}",
                label=label,
                group=f"tfds_malaria_{index:06d}",
            )
            for index, _, label in self._encoded_examples()
        ]

    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        wanted = {record.source_id: record for record in records}
        for index, encoded, _ in self._encoded_examples():
            record = wanted.pop(f"tfds_malaria_{index:06d}", None)
            if record is not None:
                yield record, encoded
            if not wanted:
                return


def _require_reachable(url: str, timeout_seconds: float = 5.0) -> None:
    """Fail fast when the download host cannot be reached (TFDS itself retries for minutes)."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or 443
    try:
        with socket.create_connection((host, port), timeout=timeout_seconds):
            return
    except OSError as exc:
        raise SourceUnavailableError(
            f"source 'tfds' cannot download the malaria dataset: {host} is unreachable ({exc}). "
            "Offline? Use --source folder:PATH with the NIH cell_images folder "
            "(PATH/Parasitized, PATH/Uninfected), or --source synthetic."
        ) from exc
