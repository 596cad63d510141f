"""One model on several devices (`cnn.training.devices`): here the two logical CPU devices that
`tests/conftest.py` makes, standing in for a host's GPUs; and under JAX, two host devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnn.config import IngestConfig, TrainConfig
from cnn.evaluation.metrics import predicted_labels
from cnn.evaluation.scoring import predict_split
from cnn.ingest.build import build_dataset
from cnn.io.storage import location
from cnn.sources.specs import open_source
from cnn.training.checkpoints import CheckpointStore
from cnn.training.devices import DevicesError, training_devices
from cnn.training.train import fit_variant
from tests.cnn.test_checkpoints import _interrupted, _resumed
from tests.conftest import write_easy_folder

PER_DEVICE_BATCH = 16
EPOCHS = 4
SAME_MODEL_TOLERANCE = 0.02
"""2 replicas vs 1 on the same global batch and rate: the same gradient up to the order of
float sums, so each epoch's validation loss, and test accuracy, differ by this much at most
(0.006 at most seen)."""


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """Purple and pink discs: a model learns them in a few epochs, so accuracy can differ."""
    cells = write_easy_folder(tmp_path_factory.mktemp("cells"), per_class=150)
    config = IngestConfig(source=f"folder:{cells}", image_size=32)
    source = open_source(config.source)
    dataset, _ = build_dataset(source, config, tmp_path_factory.mktemp("data"))
    return dataset


def test_devices_are_every_gpu_or_one_cpu_unless_asked():
    assert training_devices(None) == ["cpu:0"]  # no GPU here
    assert training_devices(2) == ["cpu:0", "cpu:1"]
    with pytest.raises(DevicesError, match=r"--devices 3: this host has 2 CPU devices"):
        training_devices(3)


def _config(devices: int, batch_size: int, learning_rate: float, **settings) -> TrainConfig:
    return TrainConfig(
        epochs=EPOCHS,
        batch_size=batch_size,
        learning_rate=learning_rate,
        devices=devices,
        augment="none",
        **settings,
    )


def test_two_replicas_train_the_model_one_device_trains_on_the_same_global_batch(small_dataset):
    two = fit_variant(small_dataset, "simple", _config(2, PER_DEVICE_BATCH, 1e-3))
    assert two.devices == 2 and two.batch_size == 2 * PER_DEVICE_BATCH
    assert two.history["loss"][-1] < two.history["loss"][0]  # it learns
    one = fit_variant(small_dataset, "simple", _config(1, 2 * PER_DEVICE_BATCH, 2e-3))
    assert one.devices == 1 and one.batch_size == two.batch_size
    assert two.history["val_loss"] == pytest.approx(
        one.history["val_loss"], abs=SAME_MODEL_TOLERANCE
    )
    accuracy = [_test_accuracy(result.model, small_dataset) for result in (one, two)]
    assert accuracy[0] > 0.9 and accuracy[1] == pytest.approx(accuracy[0], abs=SAME_MODEL_TOLERANCE)


def test_models_of_different_shapes_train_on_two_devices_one_after_another(small_dataset):
    for variant in ("simple", "lenet5"):  # as a train flow runs its variants in turn
        result = fit_variant(small_dataset, variant, _config(2, PER_DEVICE_BATCH, 1e-3))
        assert result.devices == 2 and len(result.history["loss"]) == EPOCHS


def _test_accuracy(model, dataset) -> float:
    scores = predict_split(model, dataset, "test")
    return float(np.mean(predicted_labels(scores.parasitized_probability) == scores.labels))


def test_a_training_on_two_devices_resumes_from_its_checkpoint(small_dataset, tmp_path):
    store = CheckpointStore(location(tmp_path / "checkpoints"))
    config = _config(2, PER_DEVICE_BATCH, 1e-3, patience=10)
    _interrupted(small_dataset, "simple", config, store, after_epoch=2)
    result, reported = _resumed(small_dataset, "simple", config, store)
    assert reported == [3, 4] and result.resumed_epochs == 2 and result.devices == 2
    uninterrupted = fit_variant(small_dataset, "simple", config)
    assert result.history["val_loss"][-1] == pytest.approx(
        uninterrupted.history["val_loss"][-1], abs=SAME_MODEL_TOLERANCE
    )


ON_JAX = """
import json, sys
from pathlib import Path
import keras
from cnn.config import IngestConfig, TrainConfig
from cnn.ingest.build import build_dataset
from cnn.sources.specs import open_source
from cnn.training.train import fit_variant
from tests.conftest import write_easy_folder

root = Path(sys.argv[1])
config = IngestConfig(source=f"folder:{write_easy_folder(root / 'cells', 150)}", image_size=32)
dataset, _ = build_dataset(open_source(config.source), config, root / "data")
runs = {}
for devices, batch, rate in ((2, 16, 1e-3), (1, 32, 2e-3)):
    training = TrainConfig(
        epochs=3, batch_size=batch, learning_rate=rate, devices=devices, augment="none"
    )
    result = fit_variant(dataset, "simple", training)
    runs[devices] = {"devices": result.devices, "val_loss": result.history["val_loss"]}
print(json.dumps({"backend": keras.backend.backend(), "runs": runs}))
"""


@pytest.mark.slow
def test_under_jax_two_host_devices_train_the_model_one_device_trains(tmp_path):
    """`KERAS_BACKEND=jax` (as on GPU hosts without TensorFlow): DataParallel over two host
    devices that XLA is told to make; a host without GPUs is not an error under JAX."""
    environment = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    }
    ran = subprocess.run(
        [sys.executable, "-c", ON_JAX, str(tmp_path)],
        env=environment,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    two, one = result["runs"]["2"], result["runs"]["1"]
    assert result["backend"] == "jax" and two["devices"] == 2 and one["devices"] == 1
    assert two["val_loss"][-1] < two["val_loss"][0]
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=SAME_MODEL_TOLERANCE)
