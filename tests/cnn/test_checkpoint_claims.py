"""Where a training's checkpoints live, and that two identical trainings never share them."""

import logging
from contextlib import ExitStack
from types import SimpleNamespace

import pytest

from cnn.config import IngestConfig, TrainConfig
from cnn.ingest.build import build_dataset
from cnn.io.locks import folder_locks
from cnn.io.storage import location
from cnn.sources.specs import SyntheticSource
from cnn.training.checkpoints import checkpoint_dir, claim_checkpoints

LOGGER = logging.getLogger("test-train-checkpoints")


ROOT = location("/data/checkpoints")


@pytest.fixture
def locks(tmp_path):
    return folder_locks(location(tmp_path / "data"))


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = IngestConfig(source="synthetic", image_size=16, limit=40)
    built, _ = build_dataset(SyntheticSource(count=40), config, tmp_path / "data" / "datasets")
    return built


def test_checkpoints_are_kept_per_dataset_variant_and_settings(dataset):
    config = TrainConfig()
    folder = checkpoint_dir(ROOT, dataset, "simple", config)
    assert folder == ROOT / dataset.name / folder.name
    unchecked = config.model_copy(update={"checkpoints": False})
    assert checkpoint_dir(ROOT, dataset, "simple", unchecked) == folder
    assert checkpoint_dir(ROOT, dataset, "resnet", config) != folder
    longer = config.model_copy(update={"epochs": 3})
    assert checkpoint_dir(ROOT, dataset, "simple", longer) != folder


def test_an_identical_training_running_at_once_trains_without_checkpoints(dataset, caplog, locks):
    config = TrainConfig()
    with ExitStack() as first, ExitStack() as second:
        claimed = claim_checkpoints(ROOT, dataset, "simple", config, first, LOGGER, locks)
        assert claimed is not None
        with caplog.at_level(logging.WARNING):
            assert claim_checkpoints(ROOT, dataset, "simple", config, second, LOGGER, locks) is None
        assert "identical training is running" in caplog.text
        changed = config.model_copy(update={"learning_rate": 0.01})
        other = claim_checkpoints(ROOT, dataset, "simple", changed, second, LOGGER, locks)
        assert other is not None
    with ExitStack() as later:  # released when the first training ended
        again = claim_checkpoints(ROOT, dataset, "simple", config, later, LOGGER, locks)
        assert again.root == claimed.root
    off = config.model_copy(update={"checkpoints": False})
    with ExitStack() as unused:
        assert claim_checkpoints(ROOT, dataset, "simple", off, unused, LOGGER, locks) is None


def test_settings_used_after_training_do_not_change_the_checkpoint_directory():
    dataset = SimpleNamespace(name="cells-64px-abc")
    base = checkpoint_dir(ROOT, dataset, "resnet", TrainConfig())
    after = TrainConfig(target_sensitivity=0.9, test_time_augmentation=False, ensemble=2)
    assert checkpoint_dir(ROOT, dataset, "resnet", after) == base
    assert checkpoint_dir(ROOT, dataset, "resnet", TrainConfig(epochs=7)) != base


def test_another_number_of_devices_starts_a_new_training(dataset):
    one = checkpoint_dir(ROOT, dataset, "simple", TrainConfig())  # unset: the one CPU here
    assert checkpoint_dir(ROOT, dataset, "simple", TrainConfig(devices=1)) == one
    assert checkpoint_dir(ROOT, dataset, "simple", TrainConfig(devices=2)) != one
