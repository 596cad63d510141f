import numpy as np
import pytest

from cnn.config import IngestConfig
from cnn.data.batches import SplitBatches
from cnn.data.dataset import load_split
from cnn.ingest.build import build_dataset
from cnn.sources.specs import SyntheticSource


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = IngestConfig(source="synthetic", image_size=16, limit=1200, split="random")
    built, _ = build_dataset(SyntheticSource(count=1200), config, tmp_path_factory.mktemp("b"))
    return built


def _all(batches: SplitBatches) -> tuple[np.ndarray, np.ndarray]:
    parts = [batches[index] for index in range(len(batches))]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_unshuffled_batches_are_the_split_in_order(dataset):
    images, labels = load_split(dataset, "train")
    batches = SplitBatches(dataset, "train", batch_size=100)
    streamed_images, streamed_labels = _all(batches)
    assert streamed_images.dtype == np.uint8
    np.testing.assert_array_equal(streamed_images, images)
    np.testing.assert_array_equal(streamed_labels, labels)
    np.testing.assert_array_equal(batches.labels, labels)
    assert len(batches) == -(-len(labels) // 100)


def test_shuffled_epochs_cover_every_row_once_in_new_seeded_orders(dataset):
    images, _ = load_split(dataset, "train")
    key = {image.tobytes(): index for index, image in enumerate(images)}
    batches = SplitBatches(dataset, "train", batch_size=64, shuffle=True, seed=5)
    first = [key[image.tobytes()] for image in _all(batches)[0]]
    batches.on_epoch_end()
    second = [key[image.tobytes()] for image in _all(batches)[0]]
    assert sorted(first) == sorted(second) == list(range(len(images)))
    assert first != second and first != sorted(first)
    again = SplitBatches(dataset, "train", batch_size=64, shuffle=True, seed=5)
    assert [key[image.tobytes()] for image in _all(again)[0]] == first


def test_only_a_window_of_row_groups_is_held(dataset):
    from cnn.data.batches import SHUFFLE_WINDOW

    batches = SplitBatches(dataset, "train", batch_size=64, shuffle=True, seed=1)
    for index in range(len(batches)):
        batches[index]
        assert len(batches._cache) <= SHUFFLE_WINDOW + 1
