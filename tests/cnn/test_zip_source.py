import zipfile

import pytest

from cnn.config import IngestConfig
from cnn.ingest.build import build_dataset
from cnn.sources.files import ZipSource
from cnn.sources.records import SourceError
from cnn.sources.specs import open_source
from tests.conftest import write_nih_zip


def test_zip_lists_the_nih_members_with_labels_and_patients(nih_folder, tmp_path):
    archive = write_nih_zip(tmp_path / "cell_images.zip", nih_folder)
    records = ZipSource(archive).list_records()
    assert len(records) == 60
    assert sum(record.label for record in records) == 30
    assert "C100P61ThinF" in {record.group for record in records}


def test_zip_never_trusts_member_paths_and_extracts_nothing(nih_folder, tmp_path):
    hostile = {
        "../escaped.png": b"x",
        "cell_images/Parasitized/../../../etc/evil.png": b"x",
        "/abs/Parasitized/rooted.png": b"x",
        "cell_images\\Parasitized\\backslash.png": b"x",
    }
    archive = write_nih_zip(tmp_path / "hostile.zip", nih_folder, extra=hostile)
    work = tmp_path / "work"
    config = IngestConfig(source=f"zip:{archive}", image_size=24, split="random")
    dataset, _ = build_dataset(open_source(config.source), config, work / "datasets")
    assert dataset.rows == 60
    reported = {entry["source_id"]: entry["reason"] for entry in dataset.manifest.skipped}
    assert set(reported) == set(hostile)
    assert set(reported.values()) == {"unsafe member path"}
    assert not (tmp_path / "escaped.png").exists()
    assert not any(
        path.name.endswith(".png") for path in tmp_path.rglob("*") if "cells" not in path.parts
    )


def test_corrupt_members_are_skipped_by_name(nih_folder, tmp_path):
    extra = {"cell_images/Uninfected/C1P1_IMG_x_cell_1.png": b"\x89PNG\r\n\x1a\nbroken"}
    archive = write_nih_zip(tmp_path / "cells.zip", nih_folder, extra=extra)
    config = IngestConfig(source=f"zip:{archive}", image_size=24, split="random")
    dataset, _ = build_dataset(open_source(config.source), config, tmp_path / "datasets")
    assert dataset.rows == 60
    assert [entry["source_id"] for entry in dataset.manifest.skipped] == [
        "Uninfected/C1P1_IMG_x_cell_1.png"
    ]


def test_zip_and_folder_ingest_the_same_pixels(nih_folder, tmp_path):
    import pyarrow.parquet as pq

    archive = write_nih_zip(tmp_path / "cells.zip", nih_folder)
    tables = []
    for spec in (f"folder:{nih_folder}", f"zip:{archive}"):
        config = IngestConfig(source=spec, image_size=24)
        dataset, _ = build_dataset(open_source(spec), config, tmp_path / "datasets")
        tables.append(pq.read_table(dataset.shard_paths).sort_by("source_id"))
    assert tables[0]["image"] == tables[1]["image"]
    assert tables[0]["split"] == tables[1]["split"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.zip", "does not exist"),
        (
            lambda tmp: (tmp / "plain.zip").write_text("not a zip") and tmp / "plain.zip",
            "not a zip",
        ),
        (lambda tmp: tmp, "not a zip"),
    ],
    ids=["missing", "not-a-zip", "a-directory"],
)
def test_bad_zip_paths_are_named(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        open_source(f"zip:{make(tmp_path)}")


def test_zip_without_a_class_is_refused(tmp_path):
    archive = tmp_path / "half.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("cell_images/Parasitized/a_IMG_1.png", b"x")
    with pytest.raises(SourceError, match="no Uninfected/ images"):
        ZipSource(archive).list_records()
