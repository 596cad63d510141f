"""A full disk names the file it could not write (`/dev/full` fails every write with ENOSPC)."""

import errno
from pathlib import Path

import pytest

from cnn.manifest import write_json_durably
from cnn.shards import _write_shard
from cnn.sources import SyntheticSource
from cnn.writes import WriteError, writing

FULL_DISK = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not FULL_DISK.exists(), reason="no /dev/full here")


@needs_dev_full
def test_a_shard_on_a_full_disk_names_the_shard(tmp_path):
    shard = tmp_path / "part-00000.parquet"
    shard.symlink_to(FULL_DISK)
    source = SyntheticSource(count=300)
    rows = [(record, "train") for record in source.list_records()]
    with pytest.raises(WriteError, match="No space left on device") as raised:
        _write_shard(shard, 24, rows, source, None)
    assert str(raised.value).startswith(f"cannot write {shard}: ")
    assert raised.value.__cause__ is not None


@needs_dev_full
def test_a_manifest_on_a_full_disk_names_it():
    with pytest.raises(WriteError) as raised:
        write_json_durably(FULL_DISK, {"rows": 1})
    assert str(raised.value) == f"cannot write {FULL_DISK}: No space left on device"
    assert raised.value.__cause__.errno == errno.ENOSPC


def test_an_error_that_names_its_file_is_left_as_it_is(tmp_path):
    missing = tmp_path / "no-such-folder" / "file.json"
    with pytest.raises(FileNotFoundError) as raised, writing(tmp_path / "other"):
        missing.write_text("{}")
    assert raised.value.filename == str(missing)
