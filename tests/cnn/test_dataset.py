import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from cnn.config import IngestConfig
from cnn.data.dataset import load_split, open_dataset
from cnn.data.manifest import LEGACY_MANIFEST_NAME, MANIFEST_NAME, DatasetError
from cnn.ingest.build import build_dataset, dataset_fingerprint, select_subset
from cnn.io.locks import LOCKS_DIR
from cnn.sources.files import FolderSource
from cnn.sources.records import CellRecord
from cnn.sources.specs import SyntheticSource


def _ingest(source, tmp_path, **settings):
    config = IngestConfig(source="synthetic", image_size=32, **settings)
    return build_dataset(source, config, tmp_path / "datasets", workers=2)


def test_dataset_has_the_design_columns_and_consistent_counts(tmp_path):
    dataset, cache_hit = _ingest(SyntheticSource(count=200), tmp_path)
    assert not cache_hit and dataset.rows == 200
    table = pq.read_table(dataset.shard_paths)
    assert table.column_names == ["image", "label", "label_name", "source_id", "group", "split"]
    assert set(table["label_name"].to_pylist()) == {"parasitized", "uninfected"}
    counts = dataset.manifest.counts
    assert sum(sum(per_label.values()) for per_label in counts.values()) == 200
    for split, per_label in counts.items():
        images, labels = load_split(dataset, split)
        assert images.shape == (sum(per_label.values()), 32, 32, 3) and images.dtype == np.uint8
        assert int(np.sum(labels == 0)) == per_label["parasitized"]


def test_stored_pixels_are_the_decoded_images(tmp_path):
    source = SyntheticSource(count=40)
    dataset, _ = _ingest(source, tmp_path)
    table = pq.read_table(dataset.shard_paths, columns=["source_id", "image"])
    first_id = table["source_id"][0].as_py()
    record = next(r for r in source.list_records() if r.source_id == first_id)
    ((_, pixels),) = source.iter_payloads([record])
    from cnn.images import decode_and_resize

    expected = decode_and_resize(pixels, 32)
    stored = np.frombuffer(table["image"][0].as_py(), dtype=np.uint8).reshape(32, 32, 3)
    np.testing.assert_array_equal(stored, expected)


def test_unchanged_rerun_is_a_cache_hit_that_reads_no_image(tmp_path, monkeypatch):
    first, _ = _ingest(SyntheticSource(count=60), tmp_path)

    def no_reads(self, records):
        raise AssertionError("a cache hit must not read images")

    monkeypatch.setattr(SyntheticSource, "iter_payloads", no_reads)
    again, cache_hit = _ingest(SyntheticSource(count=60), tmp_path)
    assert cache_hit and again.path == first.path


def test_other_settings_make_another_dataset(tmp_path):
    first, _ = _ingest(SyntheticSource(count=60), tmp_path)
    other, cache_hit = _ingest(SyntheticSource(count=60), tmp_path, seed=1)
    assert not cache_hit and other.path != first.path


def test_patients_never_share_splits_in_the_dataset(nih_folder, tmp_path):
    config = IngestConfig(source=f"folder:{nih_folder}", image_size=32)
    dataset, _ = build_dataset(FolderSource(nih_folder), config, tmp_path / "datasets")
    table = pq.read_table(dataset.shard_paths, columns=["group", "split"]).to_pandas()
    assert (table.groupby("group")["split"].nunique() == 1).all()
    assert set(table["split"]) == {"train", "validation", "test"}


def test_unreadable_files_are_skipped_and_named(nih_folder, tmp_path):
    broken = nih_folder / "Parasitized" / "C100P61ThinF_IMG_broken_cell_1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    config = IngestConfig(source=f"folder:{nih_folder}", image_size=32, split="random")
    dataset, _ = build_dataset(FolderSource(nih_folder), config, tmp_path / "datasets")
    assert dataset.rows == 60
    assert [entry["source_id"] for entry in dataset.manifest.skipped] == [
        "Parasitized/C100P61ThinF_IMG_broken_cell_1.png"
    ]


def test_a_crash_leaves_no_dataset_a_reader_accepts(tmp_path, monkeypatch):
    monkeypatch.setattr(SyntheticSource, "iter_payloads", _crashing_after(30))
    with pytest.raises(RuntimeError, match="killed"):
        _ingest(SyntheticSource(count=80), tmp_path)
    (attempt,) = [path for path in (tmp_path / "datasets").iterdir() if path.name != LOCKS_DIR]
    assert not list(attempt.glob("*.json"))
    with pytest.raises(DatasetError, match="not a finished dataset"):
        open_dataset(attempt)
    monkeypatch.undo()
    dataset, cache_hit = _ingest(SyntheticSource(count=80), tmp_path)
    assert not cache_hit and dataset.rows == 80 and dataset.path == attempt


def _crashing_after(count: int):
    original = SyntheticSource.iter_payloads

    def crashing(self, records):
        for index, item in enumerate(original(self, records)):
            if index == count:
                raise RuntimeError("killed mid-ingest")
            yield item

    return crashing


def _crashing_at(source_id: str):
    original = SyntheticSource.iter_payloads

    def crashing(self, records):
        for record, payload in original(self, records):
            if record.source_id == source_id:
                raise RuntimeError("killed mid-ingest")
            yield record, payload

    return crashing


def test_pandas_and_pyarrow_read_a_datasets_rows_from_its_directory(tmp_path):
    import pandas as pd
    import pyarrow.dataset

    dataset, _ = _ingest(SyntheticSource(count=60), tmp_path)
    frame = pd.read_parquet(dataset.path)
    assert len(frame) == dataset.rows == 60
    assert sorted(frame["source_id"]) == sorted(
        pq.read_table(dataset.shard_paths)["source_id"].to_pylist()
    )
    assert pyarrow.dataset.dataset(dataset.path).count_rows() == 60


def test_a_dataset_written_with_the_former_manifest_name_opens_and_is_reused(tmp_path):
    dataset, _ = _ingest(SyntheticSource(count=40), tmp_path)
    (dataset.path / MANIFEST_NAME).rename(dataset.path / LEGACY_MANIFEST_NAME)
    assert open_dataset(dataset.path).manifest == dataset.manifest
    again, cache_hit = _ingest(SyntheticSource(count=40), tmp_path)
    assert cache_hit and again.path == dataset.path


def test_open_refuses_directories_without_a_finished_manifest(tmp_path):
    dataset, _ = _ingest(SyntheticSource(count=40), tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    (dataset.path / MANIFEST_NAME).rename(dataset.path / "manifest.partial")
    with pytest.raises(DatasetError, match=r"no _manifest\.json"):
        open_dataset(dataset.path)


def test_open_names_a_path_that_is_not_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    with pytest.raises(DatasetError, match=r"'.*file' is not a directory"):
        open_dataset(tmp_path / "file")
    with pytest.raises(DatasetError, match=r"'.*dangling' is a broken link"):
        open_dataset(tmp_path / "dangling")


def test_open_names_the_manifest_and_its_first_structural_fault(tmp_path):
    dataset, _ = _ingest(SyntheticSource(count=40), tmp_path)
    manifest_path = dataset.path / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    for broken, fault in [
        ({**manifest, "shards": None}, "'shards' is null, not a JSON array"),
        ({**manifest, "rows": True}, "'rows' is true, not a JSON integer"),
        ({**manifest, "shards": [{"file": "../x.parquet", "rows": 1}]}, "shard 0 is"),
    ]:
        manifest_path.write_text(json.dumps(broken))
        expected = f"manifest '{manifest_path}' is malformed: {fault}"
        with pytest.raises(DatasetError, match=re.escape(expected)):
            open_dataset(dataset.path)
    manifest_path.write_bytes(b"\xff")
    expected = f"manifest '{manifest_path}' is corrupt: 'utf-8'"
    with pytest.raises(DatasetError, match=re.escape(expected)):
        open_dataset(dataset.path)
    manifest_path.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(DatasetError, match="has format 99, expected 1; ingest it again"):
        open_dataset(dataset.path)


def test_open_refuses_a_truncated_shard(tmp_path):
    dataset, _ = _ingest(SyntheticSource(count=40), tmp_path)
    manifest = json.loads((dataset.path / MANIFEST_NAME).read_text())
    shard = dataset.path / manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DatasetError, match="missing or incomplete"):
        open_dataset(dataset.path)


def test_subset_is_balanced_and_seeded():
    records = [CellRecord(f"id{i}", label=int(i < 300), group="g") for i in range(400)]
    subset = select_subset(records, 100, seed=5)
    assert len(subset) == 100 and sum(r.label for r in subset) == 50
    assert subset == select_subset(records, 100, seed=5)
    assert subset != select_subset(records, 100, seed=6)


@pytest.mark.parametrize("spec", ["synthetic", "folder", "zip"])
def test_worker_processes_write_exactly_what_one_process_writes(spec, tmp_path):
    from cnn.sources.specs import open_source
    from tests.conftest import write_nih_folder, write_nih_zip

    if spec == "synthetic":
        source_spec = "synthetic"
    else:
        folder = write_nih_folder(tmp_path / "cells", per_class=150)
        zipped = write_nih_zip(tmp_path / "cells.zip", folder)
        source_spec = f"folder:{folder}" if spec == "folder" else f"zip:{zipped}"
    config = IngestConfig(source=source_spec, image_size=24, limit=300)
    tables = []
    for workers in (1, 2):
        source = open_source(source_spec, limit=300)
        dataset, _ = build_dataset(
            source, config, tmp_path / f"datasets-{workers}", workers=workers
        )
        assert dataset.rows == 300
        assert len(dataset.shard_paths) > 1
        tables.append(pq.read_table(dataset.shard_paths).sort_by("source_id"))
    assert tables[0].equals(tables[1])


def test_a_rerun_clears_a_dead_attempts_shards_so_the_folder_reads_exactly_the_dataset(
    tmp_path, monkeypatch
):
    import pandas as pd

    last = SyntheticSource(count=600).list_records()[-1].source_id
    monkeypatch.setattr(SyntheticSource, "iter_payloads", _crashing_at(last))
    config = IngestConfig(source="synthetic", image_size=32)
    with pytest.raises(RuntimeError, match="killed"):  # in this process: its shards in turn
        build_dataset(SyntheticSource(count=600), config, tmp_path / "datasets", workers=1)
    (attempt,) = [path for path in (tmp_path / "datasets").iterdir() if path.name != LOCKS_DIR]
    assert list(attempt.glob("*.parquet"))  # the shards finished before the crash
    monkeypatch.undo()
    dataset, _ = _ingest(SyntheticSource(count=600), tmp_path)
    attempts = {path.stem.rsplit("-", 1)[1] for path in dataset.path.glob("*.parquet")}
    assert len(attempts) == 1  # the dead attempt's shards are gone
    assert {shard.file for shard in dataset.manifest.shards} == {
        path.name for path in dataset.path.glob("*.parquet")
    }
    assert len(pd.read_parquet(dataset.path)) == 600


def test_manifest_summary_lists_counts_sizes_and_skips(nih_folder, tmp_path):

    (nih_folder / "Uninfected" / "C1P1_IMG_text_cell_1.png").write_text("not an image")
    config = IngestConfig(source=f"folder:{nih_folder}", image_size=32, split="random")
    dataset, _ = build_dataset(FolderSource(nih_folder), config, tmp_path / "datasets")
    summary = dataset.manifest.describe(dataset.path)
    counts = dataset.manifest.counts["train"]
    assert f"| train | {counts['parasitized']} | {counts['uninfected']} |" in summary
    assert "| width | " in summary
    assert "Skipped: 1" in summary and "C1P1_IMG_text_cell_1.png" in summary


def test_where_the_shards_are_written_is_not_part_of_the_dataset():
    source = {"kind": "synthetic", "images": 100}
    here = IngestConfig(source="synthetic")
    on_dask = IngestConfig(source="synthetic", dask_address="tcp://scheduler:8786")
    assert dataset_fingerprint(source, on_dask) == dataset_fingerprint(source, here)
    bigger = IngestConfig(source="synthetic", image_size=96)
    assert dataset_fingerprint(source, bigger) != dataset_fingerprint(source, here)
