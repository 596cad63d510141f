"""Write errors that name their file: a full disk says which file it could not write, and an
output path that is not a file is refused before anything replaces it.

Python's and Arrow's write errors do not ("[Errno 28] No space left on device", "Error
writing bytes to file"), so a user cannot tell which disk filled up.
"""

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cnn.errors import InputError

FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
}


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


class OutputPathError(InputError):
    """An output path that names something other than a file, which a write would replace."""


def check_output_file(path: Path | str) -> None:
    """Refuse an output path that exists and is not a regular file (a directory, a device, a
    pipe, a socket, a link): an atomic write renames over whatever is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise OutputPathError(f"{str(path)!r}: a parent of it is a file, not a folder") from None
    if not stat.S_ISREG(mode):
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise OutputPathError(f"{str(path)!r} is {kind}; name a new or regular file")
