"""Write errors that name their file: a full disk says which file it could not write.

Python's and Arrow's write errors do not ("[Errno 28] No space left on device", "Error
writing bytes to file"), so a user cannot tell which disk filled up.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteError(OSError):
    """A file could not be written; the message names it and says why."""


@contextmanager
def writing(path: Path | str) -> Iterator[None]:
    """Re-raise an OSError of the block that names no file as a WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        if error.filename is not None:
            raise
        reason = error.strerror or str(error) or type(error).__name__
        raise WriteError(f"cannot write {path}: {reason}") from error
