"""Flow-run names and tags say what ran: variant, dataset, source."""

from flows.names import dataset_label, source_label, variant_tags


def test_a_dataset_is_named_by_its_directory_with_a_short_fingerprint():
    assert dataset_label("/data/datasets/folder-64px-ea59c0ffee") == "folder-64px-ea59"
    assert dataset_label("relative/plain") == "plain"


def test_a_source_is_named_by_its_kind_and_last_folder():
    assert source_label("folder:/shared/cell_images") == "folder:cell_images"
    assert source_label("zip:/shared/cell_images.zip") == "zip:cell_images.zip"
    assert source_label("synthetic") == "synthetic"


def test_a_variant_run_is_tagged_with_its_variant_and_dataset():
    assert variant_tags("resnet", "/d/folder-64px-ea59c0") == [
        "variant:resnet",
        "dataset:folder-64px-ea59",
    ]
