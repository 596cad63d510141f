"""A folder source on object storage (`folder:s3://bucket/cells`): the NIH layout under a
prefix, listed and read through `cnn.io.storage`, so hosts without the images on disk ingest
them. Object stores hold no links or special files, so only the sizes need guarding."""

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.fs as pafs

from cnn.io.storage import Location
from cnn.labels import CLASS_FOLDERS
from cnn.sources.records import (
    IMAGE_SUFFIXES,
    MAX_ENCODED_BYTES,
    CellRecord,
    CellSource,
    Payload,
    SourceError,
    Unreadable,
    patient_group,
)

READ_THREADS = 16
"""Objects requested at once: a request's latency, not its bytes, bounds a cell's read."""


class StoredFolderSource(CellSource):
    """`PREFIX/Parasitized/*.png` and `PREFIX/Uninfected/*.png` on a remote filesystem."""

    kind = "folder"

    def __init__(self, root: Location) -> None:
        self.root = root
        if not root.is_dir():
            raise SourceError(f"folder source {root.uri!r} does not exist")
        missing = [name for name in CLASS_FOLDERS if not (root / name).is_dir()]
        if missing:
            raise SourceError(
                f"folder source {root.uri!r} lacks the class folder(s) {', '.join(missing)} "
                f"(expected {'/ and '.join(CLASS_FOLDERS)}/)"
            )
        self._files: dict[int, list[pafs.FileInfo]] | None = None

    def _listed(self) -> dict[int, list[pafs.FileInfo]]:
        """The image objects of each class folder, with their sizes, listed once."""
        if self._files is None:
            self._files = {}
            for label, name in enumerate(CLASS_FOLDERS):
                self._files[label] = _image_objects(self.root / name)
        return self._files

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for label, files in self._listed().items():
            for info in files:
                stamp = info.mtime_ns or 0
                digest.update(
                    f"{CLASS_FOLDERS[label]}/{info.base_name}\0{info.size}\0{stamp}\n".encode()
                )
        return {"kind": self.kind, "root": self.root.uri, "files_digest": digest.hexdigest()}

    def list_records(self) -> list[CellRecord]:
        return [
            CellRecord(
                source_id=f"{CLASS_FOLDERS[label]}/{info.base_name}",
                label=label,
                group=patient_group(info.base_name),
            )
            for label, files in self._listed().items()
            for info in files
        ]

    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        with ThreadPoolExecutor(READ_THREADS) as pool:
            yield from zip(records, pool.map(self._read, records), strict=True)

    def _read(self, record: CellRecord) -> Payload:
        """The object's bytes; one deleted since the listing is skipped, while a store that
        does not answer raises (a retry of the ingest may bridge it; skipping would not)."""
        stored = self.root / record.source_id
        try:
            with stored.filesystem.open_input_file(stored.path) as handle:
                if handle.size() > MAX_ENCODED_BYTES:
                    return Unreadable(f"file too large ({handle.size():,} bytes)")
                return handle.read()
        except FileNotFoundError:
            return Unreadable("deleted since it was listed")

    def __getstate__(self) -> dict[str, Any]:
        """Workers only read objects: leave the listing behind when pickled."""
        return {**self.__dict__, "_files": None}


def _image_objects(folder: Location) -> list[pafs.FileInfo]:
    """The image files directly in `folder`, by name; SourceError when there are none."""
    found = folder.filesystem.get_file_info(pafs.FileSelector(folder.path))
    images = sorted(
        (
            info
            for info in found
            if info.type == pafs.FileType.File and f".{info.extension.lower()}" in IMAGE_SUFFIXES
        ),
        key=lambda info: info.base_name,
    )
    if not images:
        raise SourceError(f"class folder {folder.uri!r} holds no images")
    return images
