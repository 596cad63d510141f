"""Image files in the NIH layout: a folder (`folder:PATH`) or the NIH zip (`zip:PATH`), read
without trusting their entries (links, special files, paths out of the folder or archive)."""

import hashlib
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

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
    resolved_path,
)


class FolderSource(CellSource):
    """The NIH layout: `ROOT/Parasitized/*.png` and `ROOT/Uninfected/*.png`."""

    kind = "folder"

    def __init__(self, root: Path) -> None:
        self.root = resolved_path(root, "folder")
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
            yield record, _read_file(os.path.join(self.root, record.source_id))

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
        names[label] = []
        for entry in image_entries(folder):
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


def image_entries(
    folder: Path,
    recursive: bool = False,
    unlistable: Callable[[Path, OSError], None] | None = None,
) -> list[os.DirEntry]:
    """The image-named entries in `folder` (and its subfolders when `recursive`; links to
    folders are not followed), in path order. A subfolder that cannot be listed is handed to
    `unlistable` when given, else its error is raised."""
    found, folders = [], [folder]
    while folders:
        current = folders.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError as error:
            if unlistable is None:
                raise
            unlistable(current, error)
            continue
        for entry in entries:
            if recursive and entry.is_dir(follow_symlinks=False):
                folders.append(Path(entry.path))
            elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(entry)
    return sorted(found, key=lambda entry: Path(entry.path))


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
    return Unreadable(problem) if problem else _read_file(entry.path)


def _read_file(path: str) -> Payload:
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
        data = _read_at_most(descriptor, stats.st_size, MAX_ENCODED_BYTES + 1)
    except OSError as exc:
        return Unreadable(f"cannot read file: {exc.strerror or exc}")
    finally:
        os.close(descriptor)
    if len(data) > MAX_ENCODED_BYTES:
        return Unreadable("file grew too large while read")
    return data


def _read_at_most(descriptor: int, expected: int, limit: int) -> bytes:
    """Up to `limit` bytes of the open file, asking first for its `expected` size and a byte
    more (a file that grew is read on): no buffer of `limit` bytes is allocated for a small
    file, as `file.read(limit)` does."""
    chunks = []
    remaining, size = limit, expected + 1
    while remaining > 0 and (chunk := os.read(descriptor, min(size, remaining))):
        chunks.append(chunk)
        remaining, size = remaining - len(chunk), 1 << 16
    return b"".join(chunks)  # a single chunk is returned as it is, not copied


class ZipSource(CellSource):
    """The NIH `cell_images.zip`, read in place: `cell_images/Parasitized/*.png` …

    Member paths are never trusted and nothing is extracted: images are read into memory
    one by one; absolute or `..` members are skipped and reported.
    """

    kind = "zip"

    def __init__(self, path: Path) -> None:
        self.path = resolved_path(path, "zip")
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


ZIP_ENCRYPTED = 0x1
"""The general-purpose flag bit of an encrypted zip member."""
ENCRYPTED_MEMBER = "encrypted: needs a password"


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
        if info.flag_bits & ZIP_ENCRYPTED:
            skips.append({"source_id": source_id, "reason": ENCRYPTED_MEMBER})
            continue
        members.setdefault(source_id, info)
    for folder in CLASS_FOLDERS:
        if not any(source_id.startswith(f"{folder}/") for source_id in members):
            encrypted = sum(skip["reason"] == ENCRYPTED_MEMBER for skip in skips)
            if encrypted:
                raise SourceError(
                    f"zip source {str(path)!r} is encrypted ({encrypted} images need a "
                    "password): extract it with its password and ingest the folder "
                    "(--source folder:PATH)"
                )
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
