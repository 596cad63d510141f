import os
import time

import pytest

from cnn.sources.files import FolderSource
from cnn.sources.records import SourceError, SourceUnavailableError, patient_group
from cnn.sources.specs import SyntheticSource, check_source_spec, open_source
from cnn.sources.tfds_source import TfdsSource


@pytest.mark.parametrize("spec", ["tfds", "synthetic", "folder:/some/where"])
def test_known_source_specs_are_accepted(spec):
    check_source_spec(spec)


@pytest.mark.parametrize("spec", ["", "folder:", "ftp:/x", "synthetic:3", "Folder:/x"])
def test_unknown_source_specs_are_refused_by_name(spec):
    with pytest.raises(SourceError, match=repr(spec)):
        check_source_spec(spec)


def test_patient_group_is_the_nih_prefix_before_img():
    assert patient_group("C100P61ThinF_IMG_20150918_144104_cell_164.png") == "C100P61ThinF"
    assert patient_group("plain_name.png") == "plain_name"


def test_folder_source_lists_labels_and_patients(nih_folder):
    (nih_folder / "Uninfected" / "Thumbs.db").write_bytes(b"junk")  # as in the NIH zip
    records = FolderSource(nih_folder).list_records()
    assert len(records) == 60
    assert {record.label for record in records if record.source_id.startswith("Parasitized/")} == {
        0
    }
    assert {record.label for record in records if record.source_id.startswith("Uninfected/")} == {1}
    assert {record.group for record in records} >= {"C100P61ThinF", "C68P29N"}


def test_folder_fingerprint_changes_when_a_file_changes(nih_folder):
    before = FolderSource(nih_folder).fingerprint()
    victim = next((nih_folder / "Parasitized").iterdir())
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert FolderSource(nih_folder).fingerprint() != before


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"folder:{tmp_path / 'nowhere'}")


def test_folder_without_a_class_folder_is_named(tmp_path):
    (tmp_path / "Parasitized").mkdir()
    with pytest.raises(SourceError, match="Uninfected"):
        open_source(f"folder:{tmp_path}")


def test_empty_class_folder_is_named(nih_folder):
    for path in (nih_folder / "Uninfected").iterdir():
        path.unlink()
    with pytest.raises(SourceError, match="Uninfected' holds no images"):
        FolderSource(nih_folder).list_records()


def test_synthetic_source_is_balanced_and_grouped_into_patients():
    records = SyntheticSource(count=100).list_records()
    assert sum(record.label for record in records) == 50
    assert len({record.group for record in records}) == 10
    payloads = dict(SyntheticSource(count=100).iter_payloads(records[:3]))
    assert all(pixels.dtype.name == "uint8" for pixels in payloads.values())


def test_tfds_offline_fails_fast_and_suggests_the_folder_source(tmp_path):
    source = TfdsSource(data_dir=str(tmp_path), download_url="https://malaria.invalid/cells.zip")
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="folder:PATH"):
        source.list_records()
    assert time.monotonic() - started < 30


def test_links_out_of_the_folder_and_huge_files_are_skipped_and_reported(
    nih_folder, tmp_path, monkeypatch
):
    import cnn.sources.files
    from cnn.sources.records import Unreadable

    outside = tmp_path / "outside.png"
    outside.write_bytes((nih_folder / "Parasitized").iterdir().__next__().read_bytes())
    (nih_folder / "Parasitized" / "C1P1_IMG_link_cell_1.png").symlink_to(outside)
    source = FolderSource(nih_folder)
    assert len(source.list_records()) == 60
    assert source.listing_skips() == [
        {"source_id": "Parasitized/C1P1_IMG_link_cell_1.png", "reason": "links outside the source"}
    ]
    record = source.list_records()[0]
    monkeypatch.setattr(cnn.sources.files, "MAX_ENCODED_BYTES", 100)
    ((_, payload),) = source.iter_payloads([record])
    assert isinstance(payload, Unreadable) and "too large" in payload.reason


def test_a_folder_image_is_read_without_a_buffer_of_the_size_limit(nih_folder):
    """Each cell (about 12 KB) was read into a fresh buffer of MAX_ENCODED_BYTES (64 MiB) that
    was then shrunk: three times the cost of reading it, once for every image ingested."""
    import tracemalloc

    source = FolderSource(nih_folder)
    record = source.list_records()[0]
    expected = (nih_folder / record.source_id).read_bytes()
    tracemalloc.start()
    try:
        ((_, payload),) = source.iter_payloads([record])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert payload == expected
    assert peak < 4 * len(expected) + 64 * 1024


def test_a_file_longer_than_its_size_said_is_read_on_up_to_the_limit(tmp_path):
    """A file that grew after its size was taken is read on, but never past the limit."""
    from cnn.sources.files import _read_at_most

    path = tmp_path / "growing.png"
    path.write_bytes(bytes(range(256)) * 800)  # 204,800 bytes
    descriptor = os.open(path, os.O_RDONLY)
    try:
        assert _read_at_most(descriptor, 10, 150_000) == path.read_bytes()[:150_000]
        os.lseek(descriptor, 0, os.SEEK_SET)
        assert _read_at_most(descriptor, 10, 10**9) == path.read_bytes()
    finally:
        os.close(descriptor)
