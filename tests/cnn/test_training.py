import numpy as np
import pytest

from cnn.config import IngestConfig, TrainConfig
from cnn.dataset import build_dataset, load_split
from cnn.sources import SyntheticSource
from cnn.training import predict_uninfected_probability, train_on_dataset


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    config = IngestConfig(source="synthetic", image_size=32, limit=160)
    dataset, _ = build_dataset(SyntheticSource(count=160), config, tmp_path_factory.mktemp("ds"))
    return dataset


def test_training_reports_each_epoch_and_returns_probabilities(tiny_dataset):
    reported = []
    result = train_on_dataset(
        tiny_dataset,
        "simple",
        TrainConfig(epochs=3, batch_size=32, patience=10),
        on_epoch_end=lambda epoch, metrics: reported.append((epoch, metrics)),
    )
    assert [epoch for epoch, _ in reported] == [1, 2, 3] == list(range(1, result.epochs_run + 1))
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(reported[0][1])
    assert len(result.history["val_loss"]) == 3
    assert result.best_epoch == int(np.argmin(result.history["val_loss"])) + 1
    images, _ = load_split(tiny_dataset, "test")
    probabilities = predict_uninfected_probability(result.model, images)
    assert probabilities.shape == (len(images),)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_early_stopping_ends_training_before_the_epoch_budget(tiny_dataset):
    result = train_on_dataset(
        tiny_dataset, "simple", TrainConfig(epochs=40, batch_size=32, patience=0, learning_rate=0.5)
    )
    assert result.epochs_run < 40


def test_training_is_reproducible_with_a_seed(tiny_dataset):
    config = TrainConfig(epochs=1, batch_size=32, seed=3)
    first = train_on_dataset(tiny_dataset, "simple", config)
    again = train_on_dataset(tiny_dataset, "simple", config)
    assert first.history["loss"] == pytest.approx(again.history["loss"], rel=1e-4)
