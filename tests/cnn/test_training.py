import keras
import numpy as np
import pytest

from cnn.config import IngestConfig, TrainConfig
from cnn.data.batches import SplitBatches
from cnn.data.dataset import load_split
from cnn.evaluation.scoring import in_batches, parasitized_probability
from cnn.ingest.build import build_dataset
from cnn.sources.specs import SyntheticSource
from cnn.training.train import (
    fit_inputs,
    fit_variant,
    training_batch_size,
)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    config = IngestConfig(source="synthetic", image_size=32, limit=160)
    dataset, _ = build_dataset(SyntheticSource(count=160), config, tmp_path_factory.mktemp("ds"))
    return dataset


@pytest.mark.parametrize("in_memory_limit_mb", [512, 0], ids=["in-memory", "streamed"])
def test_training_reports_each_epoch_and_returns_probabilities(tiny_dataset, in_memory_limit_mb):
    reported = []
    result = fit_variant(
        tiny_dataset,
        "simple",
        TrainConfig(epochs=3, batch_size=32, patience=10, in_memory_limit_mb=in_memory_limit_mb),
        on_epoch_end=lambda epoch, metrics: reported.append((epoch, metrics)),
    )
    assert [epoch for epoch, _ in reported] == [1, 2, 3] == list(range(1, result.epochs_run + 1))
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(reported[0][1])
    assert len(result.history["val_loss"]) == 3
    assert result.best_epoch == int(np.argmin(result.history["val_loss"])) + 1
    images, _ = load_split(tiny_dataset, "test")
    probabilities = parasitized_probability(result.model, in_batches(images))
    assert probabilities.shape == (len(images),)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_early_stopping_ends_training_before_the_epoch_budget(tiny_dataset):
    result = fit_variant(
        tiny_dataset, "simple", TrainConfig(epochs=40, batch_size=32, patience=0, learning_rate=0.5)
    )
    assert result.epochs_run < 40


def test_small_splits_train_from_memory_and_larger_ones_stream(tiny_dataset):
    counts = tiny_dataset.manifest.counts
    in_memory = fit_inputs(tiny_dataset, 32, TrainConfig())
    assert in_memory["x"].dtype == np.uint8
    assert len(in_memory["x"]) == len(in_memory["y"]) == sum(counts["train"].values())
    assert len(in_memory["validation_data"][0]) == sum(counts["validation"].values())
    streamed = fit_inputs(tiny_dataset, 32, TrainConfig(in_memory_limit_mb=0))
    assert isinstance(streamed["x"], SplitBatches) and streamed["x"].batch_size == 32
    assert isinstance(streamed["validation_data"], SplitBatches)


@pytest.mark.parametrize("in_memory_limit_mb", [512, 0], ids=["in-memory", "streamed"])
def test_training_is_reproducible_with_a_seed(tiny_dataset, in_memory_limit_mb):
    config = TrainConfig(epochs=1, batch_size=32, seed=3, in_memory_limit_mb=in_memory_limit_mb)
    first = fit_variant(tiny_dataset, "simple", config)
    again = fit_variant(tiny_dataset, "simple", config)
    assert first.history["loss"] == pytest.approx(again.history["loss"], rel=1e-4)


@pytest.mark.slow
def test_mixed_precision_computes_in_float16_and_outputs_float32(tiny_dataset):
    result = fit_variant(
        tiny_dataset, "simple", TrainConfig(epochs=1, batch_size=32, mixed_precision=True)
    )
    conv = result.model.get_layer("conv1")
    assert (conv.compute_dtype, conv.variable_dtype) == ("float16", "float32")
    assert result.model.get_layer("uninfected").compute_dtype == "float32"
    images, _ = load_split(tiny_dataset, "test")
    probabilities = parasitized_probability(result.model, in_batches(images))
    assert probabilities.dtype == np.float32 and np.all(np.isfinite(probabilities))
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def test_gpu_batch_size_applies_only_on_a_gpu():
    config = TrainConfig(batch_size=100, gpu_batch_size=512)
    assert (training_batch_size(config, False), training_batch_size(config, True)) == (100, 512)
    assert training_batch_size(TrainConfig(batch_size=64), True) == 64


@pytest.mark.slow
def test_transfer_fine_tunes_the_backbone_top_in_a_second_phase(tiny_dataset):
    config = TrainConfig(
        epochs=1,
        batch_size=32,
        fine_tune_layers=3,
        variant_options={"transfer": {"weights": None}},
    )
    reported = []
    result = fit_variant(
        tiny_dataset, "transfer", config, on_epoch_end=lambda epoch, _: reported.append(epoch)
    )
    assert reported == [1, 2]  # head, then fine-tuning, numbered on
    assert result.epochs_run == 2 and len(result.history["loss"]) == 2
    backbone = result.model.get_layer("resnet50")
    trainable = [layer.name for layer in backbone.layers if layer.trainable]
    assert trainable == [f"conv5_block3_{index}_conv" for index in (1, 2, 3)]
    assert result.fine_tuned_layers == 3


def test_fine_tuning_is_ignored_by_variants_without_a_backbone(tiny_dataset):
    result = fit_variant(
        tiny_dataset, "simple", TrainConfig(epochs=1, batch_size=32, fine_tune_layers=5)
    )
    assert (result.epochs_run, result.fine_tuned_layers) == (1, 0)
