"""Where cell images come from: `tfds`, `folder:PATH` and `zip:PATH` (NIH layout), `synthetic`.

A source lists its records cheaply (id, label, patient group) before any image is decoded,
so subsets and splits are decided first; then it streams the payloads of chosen records.
"""

import hashlib
import os
import socket
import stat
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np

from cnn import synthetic
from cnn.labels import CLASS_FOLDERS

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SOURCE_KINDS = ("tfds", "synthetic", "folder:PATH", "zip:PATH")
MAX_ENCODED_BYTES = 64 * 1024 * 1024
"""A cell PNG is about 10 KB: a larger file is skipped without being read (memory guard)."""
SYNTHETIC_DEFAULT_COUNT = 2_500
"""The lecture's dataset size; `--limit` draws a balanced subset of it."""
SYNTHETIC_MAX_COUNT = 1_000_000
"""36× the NIH set: a larger `--limit` is a typo, and listing it alone would exhaust memory."""
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


@dataclass(frozen=True)
class Unreadable:
    """A record whose bytes could not be read: it is skipped and reported, never fatal."""

    reason: str


Payload = bytes | np.ndarray | Unreadable


class CellSource(ABC):
    """A source of labelled cell images."""

    kind: str
    has_patient_groups: bool = True
    random_access: bool = True
    """Whether `iter_payloads` of any subset is cheap, so worker processes can read."""

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able description that changes whenever the source's content changes."""

    @abstractmethod
    def list_records(self) -> list[CellRecord]:
        """All records, in a stable order, without decoding any image."""

    @abstractmethod
    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        """Yield the encoded bytes or pixels of the given records (in any order)."""

    def listing_skips(self) -> list[dict[str, str]]:
        """Entries left out while listing (unsafe or outside paths), each with its reason."""
        return []


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
    return FolderSource(Path(argument))


def _resolved(path: Path, kind: str) -> Path:
    """The absolute path with links followed; a loop of links is named, not raised."""
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # Python 3.11 raises RuntimeError on a loop
        raise SourceError(f"{kind} source {str(path)!r} cannot be resolved: {exc}") from exc


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
        self.root = _resolved(root, "folder")
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
        self._listing: _FolderListing | None = None

    def _listed(self) -> "_FolderListing":
        """The image files per label with their sizes and mtimes, listed once, on first use."""
        if self._listing is None:
            self._listing = _list_folder(self.root)
        return self._listing

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "files_digest": self._listed().digest}

    def list_records(self) -> list[CellRecord]:
        return [
            CellRecord(
                source_id=f"{CLASS_FOLDERS[label]}/{name}", label=label, group=patient_group(name)
            )
            for label, names in self._listed().names.items()
            for name in names
        ]

    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        for record in records:
            yield record, _read_file(self.root / record.source_id)

    def listing_skips(self) -> list[dict[str, str]]:
        return list(self._listed().skips)

    def __getstate__(self) -> dict[str, Any]:
        """Workers only read files: leave the listing behind when pickled."""
        return {**self.__dict__, "_listing": None}


@dataclass(frozen=True)
class _FolderListing:
    names: dict[int, list[str]]
    skips: list[dict[str, str]]
    digest: str
    """Over every listed file's relative path, size and mtime."""


def _list_folder(root: Path) -> _FolderListing:
    """One pass of `os.scandir` per class folder: names, stats, and links that leave `root`."""
    names: dict[int, list[str]] = {}
    skips: list[dict[str, str]] = []
    digest = hashlib.sha256()
    for label, class_folder in enumerate(CLASS_FOLDERS):
        folder = root / class_folder
        with os.scandir(folder) as entries:
            candidates = sorted(
                (entry for entry in entries if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES),
                key=lambda entry: entry.name,
            )
        names[label] = []
        for entry in candidates:
            source_id = f"{class_folder}/{entry.name}"
            problem = _entry_problem(entry, root)
            if problem:
                skips.append({"source_id": source_id, "reason": problem})
                continue
            stats = entry.stat()
            digest.update(f"{source_id}\0{stats.st_size}\0{stats.st_mtime_ns}\n".encode())
            names[label].append(entry.name)
        if not names[label]:
            raise SourceError(f"class folder {str(folder)!r} holds no images")
    return _FolderListing(names=names, skips=skips, digest=digest.hexdigest())


def _entry_problem(entry: os.DirEntry, root: Path) -> str | None:
    """Why an image-named entry is not an image file of the source (None when it is one)."""
    try:
        if entry.is_symlink() and not Path(entry.path).resolve(strict=True).is_relative_to(root):
            return "links outside the source"
        if not stat.S_ISREG(entry.stat().st_mode):  # a directory, FIFO, socket or device
            return "not a regular file"
    except (OSError, RuntimeError) as exc:  # a dangling link, or a loop of links
        return f"broken link: {getattr(exc, 'strerror', None) or exc}"
    return None


def read_folder_entry(entry: os.DirEntry, root: Path) -> Payload:
    """An image-named entry's bytes, or why it is skipped, as a folder source reports it:
    links out of `root` (resolved), broken links and non-files are never read."""
    problem = _entry_problem(entry, root)
    return Unreadable(problem) if problem else _read_file(Path(entry.path))


def _read_file(path: Path) -> Payload:
    """The file's bytes, checked on the open file: never blocks on a FIFO put in its place."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return Unreadable(f"cannot read file: {exc.strerror or exc}")
    try:
        stats = os.fstat(descriptor)
        if not stat.S_ISREG(stats.st_mode):
            return Unreadable("not a regular file")
        if stats.st_size > MAX_ENCODED_BYTES:
            return Unreadable(f"file too large ({stats.st_size:,} bytes)")
        with open(descriptor, "rb", closefd=False) as file:
            data = file.read(MAX_ENCODED_BYTES + 1)
    except OSError as exc:
        return Unreadable(f"cannot read file: {exc.strerror or exc}")
    finally:
        os.close(descriptor)
    if len(data) > MAX_ENCODED_BYTES:
        return Unreadable("file grew too large while read")
    return data


class ZipSource(CellSource):
    """The NIH `cell_images.zip`, read in place: `cell_images/Parasitized/*.png` …

    Member paths are never trusted and nothing is extracted: images are read into memory
    one by one; absolute or `..` members are skipped and reported.
    """

    kind = "zip"

    def __init__(self, path: Path) -> None:
        self.path = _resolved(path, "zip")
        if not self.path.exists():
            raise SourceError(f"zip source {str(path)!r} does not exist")
        if not self.path.is_file() or not zipfile.is_zipfile(self.path):
            raise SourceError(f"zip source {str(path)!r} is not a zip archive")
        try:  # reads the central directory only: a corrupt one fails here, by name
            zipfile.ZipFile(self.path).close()
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
            raise SourceError(f"zip source {str(path)!r} is a corrupt zip archive: {exc}") from exc
        self._listing: _ZipListing | None = None

    def _listed(self, archive: zipfile.ZipFile | None = None) -> "_ZipListing":
        """The image members and skipped entries, indexed once (from `archive` if open)."""
        if self._listing is None:
            if archive is None:
                with zipfile.ZipFile(self.path) as opened:
                    self._listing = _list_zip(opened, self.path)
            else:
                self._listing = _list_zip(archive, self.path)
        return self._listing

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for source_id, info in sorted(self._listed().members.items()):
            digest.update(f"{source_id}\0{info.CRC}\0{info.file_size}\n".encode())
        return {
            "kind": self.kind,
            "path": str(self.path),
            "size": self.path.stat().st_size,
            "members_digest": digest.hexdigest(),
        }

    def list_records(self) -> list[CellRecord]:
        return [
            CellRecord(
                source_id=source_id,
                label=CLASS_FOLDERS.index(source_id.partition("/")[0]),
                group=patient_group(source_id.partition("/")[2]),
            )
            for source_id in sorted(self._listed().members)
        ]

    def iter_payloads(self, records: Sequence[CellRecord]) -> Iterator[tuple[CellRecord, Payload]]:
        with zipfile.ZipFile(self.path) as archive:
            members = self._listed(archive).members
            for record in records:
                yield record, _read_member(archive, members[record.source_id])

    def listing_skips(self) -> list[dict[str, str]]:
        return list(self._listed().skips)

    def __getstate__(self) -> dict[str, Any]:
        """Leave the index behind when pickled: a worker indexes the archive it opens."""
        return {**self.__dict__, "_listing": None}


@dataclass(frozen=True)
class _ZipListing:
    members: dict[str, zipfile.ZipInfo]
    """Image members by source id (`Parasitized/<file>`); the first of duplicate names wins."""
    skips: list[dict[str, str]]


def _list_zip(archive: zipfile.ZipFile, path: Path) -> _ZipListing:
    """Index the image members of an NIH zip from its central directory; trust no path."""
    members: dict[str, zipfile.ZipInfo] = {}
    skips: list[dict[str, str]] = []
    for info in archive.infolist():
        if not _is_safe_member(info.filename):
            skips.append({"source_id": info.filename, "reason": "unsafe member path"})
            continue
        parts = PurePosixPath(info.filename).parts
        is_image = PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES
        if not (is_image and len(parts) >= 2 and parts[-2] in CLASS_FOLDERS):
            continue
        source_id = f"{parts[-2]}/{parts[-1]}"
        if not _is_regular_member(info):
            skips.append({"source_id": source_id, "reason": "not a regular file"})
            continue
        members.setdefault(source_id, info)
    for folder in CLASS_FOLDERS:
        if not any(source_id.startswith(f"{folder}/") for source_id in members):
            raise SourceError(f"zip source {str(path)!r} has no {folder}/ images")
    return _ZipListing(members=members, skips=skips)


def _is_safe_member(name: str) -> bool:
    """A relative POSIX path with no `..`, no drive and no backslash."""
    path = PurePosixPath(name)
    return not (
        path.is_absolute()
        or "\\" in name
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
    )


def _is_regular_member(info: zipfile.ZipInfo) -> bool:
    """Not a directory, nor a symbolic link or device recorded in the member's Unix mode."""
    file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
    return not info.is_dir() and file_type in (0, stat.S_IFREG)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Payload:
    if info.file_size > MAX_ENCODED_BYTES:
        return Unreadable(f"member too large ({info.file_size:,} bytes)")
    try:
        with archive.open(info) as member:
            data = member.read(MAX_ENCODED_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError) as exc:
        return Unreadable(f"cannot read zip member: {exc}")
    if len(data) > MAX_ENCODED_BYTES:
        return Unreadable("member larger than its header says")
    return data


class TfdsSource(CellSource):
    """`tfds.load("malaria")`: one `train` split of 27,558 PNGs, no file names, so no patients."""

    kind = "tfds"
    has_patient_groups = False
    random_access = False

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
