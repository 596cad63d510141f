"""The real `tfds` source, on a TFDS malaria dataset that the test prepares from local files."""

import pytest

from cnn.config import IngestConfig
from cnn.ingest.build import build_dataset
from cnn.sources.tfds_source import TfdsSource
from tests.conftest import write_nih_folder


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory):
    """Prepare `malaria` with TFDS's own builder; only the download is swapped for a folder."""
    import tensorflow_datasets as tfds

    root = tmp_path_factory.mktemp("tfds")
    write_nih_folder(root / "download" / "cell_images", per_class=12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            tfds.download.DownloadManager,
            "download_and_extract",
            lambda self, url: str(root / "download"),
        )
        tfds.builder("malaria", data_dir=str(root / "data")).download_and_prepare()
    return str(root / "data")


def test_tfds_records_carry_labels_in_the_tfds_order(tfds_data_dir):
    records = TfdsSource(data_dir=tfds_data_dir).list_records()
    assert len(records) == 24
    assert sorted(record.label for record in records) == [0] * 12 + [1] * 12
    assert len({record.group for record in records}) == 24  # no patient ids in TFDS


def test_tfds_ingest_falls_back_to_a_stratified_random_split_and_says_so(tfds_data_dir, tmp_path):
    source = TfdsSource(data_dir=tfds_data_dir)
    config = IngestConfig(source="tfds", image_size=24, limit=20)
    dataset, _ = build_dataset(source, config, tmp_path / "datasets")
    assert dataset.rows == 20
    assert dataset.manifest.split_strategy == "random"
    assert "no patient ids" in dataset.manifest.split_note
    assert dataset.manifest.source["version"] == "1.0.0"
    counts = dataset.manifest.counts
    assert counts["test"]["parasitized"] == counts["test"]["uninfected"] == 2
