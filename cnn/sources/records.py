"""What every source yields: records known before decoding, their payloads, the errors."""

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnn.errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
MAX_ENCODED_BYTES = 64 * 1024 * 1024
"""A cell PNG is about 10 KB: a larger file is skipped without being read (memory guard)."""


class SourceError(InputError):
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


def resolved_path(path: Path, kind: str) -> Path:
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
