"""A full disk names the file it could not write (`/dev/full` fails every write with ENOSPC)."""

import os
import socket
import stat
from pathlib import Path

import pytest

from cnn.ingest.shards import write_shard
from cnn.io.storage import location
from cnn.io.writes import OutputPathError, WriteError, check_output_file, writing
from cnn.sources.specs import SyntheticSource

FULL_DISK = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL_DISK.exists(), reason="no /dev/full here")


@needs_dev_full
def test_a_shard_on_a_full_disk_names_the_shard(tmp_path):
    shard = tmp_path / "part-00000.parquet"
    shard.symlink_to(FULL_DISK)
    source = SyntheticSource(count=300)
    rows = [(record, "train") for record in source.list_records()]
    with pytest.raises(WriteError, match="No space left on device") as raised:
        write_shard(location(shard), 24, rows, source, None)
    assert str(raised.value).startswith(f"cannot write {shard}: ")
    assert raised.value.__cause__ is not None


def test_an_error_that_names_its_file_is_left_as_it_is(tmp_path):
    missing = tmp_path / "no-such-folder" / "file.json"
    with pytest.raises(FileNotFoundError) as raised, writing(tmp_path / "other"):
        missing.write_text("{}")
    assert raised.value.filename == str(missing)


def _make(kind: str, path: Path) -> None:
    if kind == "a directory":
        path.mkdir()
    elif kind == "a symbolic link":
        (path.parent / "target").write_bytes(b"kept")
        path.symlink_to(path.parent / "target")
    elif kind == "a named pipe":
        os.mkfifo(path)
    elif kind == "a socket":
        socket.socket(socket.AF_UNIX).bind(str(path))
    else:  # a character device with /dev/null's numbers, made by the test (root only)
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


@pytest.mark.parametrize(
    "kind",
    [
        "a directory",
        "a symbolic link",
        "a named pipe",
        "a socket",
        pytest.param(
            "a character device",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root"),
        ),
    ],
)
def test_an_output_that_is_not_a_file_is_refused_and_left_as_it_is(tmp_path, kind):
    path = tmp_path / "out.parquet"
    _make(kind, path)
    before = os.lstat(path)
    with pytest.raises(OutputPathError, match=f"is {kind}; name a new or regular file"):
        check_output_file(path)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)


def test_a_new_or_regular_output_file_is_accepted_and_a_file_parent_is_named(tmp_path):
    check_output_file(tmp_path / "new.parquet")
    (tmp_path / "old.parquet").write_bytes(b"old")
    check_output_file(tmp_path / "old.parquet")
    with pytest.raises(OutputPathError, match="a parent of it is a file"):
        check_output_file(tmp_path / "old.parquet" / "p.parquet")
