"""Every CNN variant trains an epoch on synthetic data (in the library, as the train task
calls it); one goes through the `train-variant` flow and is tracked in MLflow whole."""

import math

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cnn.config import AUGMENTATIONS, IngestConfig, TrainConfig
from cnn.data.dataset import open_dataset
from cnn.ingest.build import build_dataset
from cnn.models.augmentation import inner_network
from cnn.models.variants import VARIANTS, count_parameters
from cnn.sources.specs import SyntheticSource
from cnn.training.train import fit_variant
from flows.train import train_variant

pytestmark = pytest.mark.slow

TRAINING = TrainConfig(
    epochs=1,
    batch_size=32,
    augment="lecture",
    checkpoints=False,
    variant_options={"transfer": {"weights": None}},
)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> str:
    config = IngestConfig(source="synthetic", image_size=32, limit=60)
    dataset, _ = build_dataset(SyntheticSource(count=60), config, tmp_path_factory.mktemp("v"))
    return str(dataset.path)


def _random_layers(model) -> list[str]:
    layers = [*model.layers, *inner_network(model).layers]
    return [layer.name for layer in layers if type(layer).__name__.startswith("Random")]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_trains_an_epoch_and_serves_without_augmentation(variant, small_dataset):
    result = fit_variant(open_dataset(small_dataset), variant, TRAINING)
    assert result.epochs_run == 1 and len(result.history["val_loss"]) == 1
    assert result.model.count_params() == count_parameters(variant, (32, 32, 3))
    assert _random_layers(result.operating_point.served) == []
    assert math.isfinite(result.history["val_loss"][0])  # it trained, not diverged


@pytest.mark.usefixtures("prefect_harness")
def test_a_variant_flow_run_is_tracked_whole(small_dataset, mlflow_uri):
    run = train_variant(small_dataset, "lenet5", TRAINING)
    client = MlflowClient(mlflow_uri)
    tracked = client.get_run(run.run_id)
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["variant"] == "lenet5"
    assert tracked.data.params["augment"] == "lecture"
    assert len(client.get_metric_history(run.run_id, "val_loss")) == 1
    assert 0.0 <= tracked.data.metrics["test_accuracy"] <= 1.0
    artifacts = {item.path for item in client.list_artifacts(run.run_id, "augmentation")}
    assert artifacts == {f"augmentation/{name}.png" for name in AUGMENTATIONS if name != "none"}
    model = mlflow.keras.load_model(run.model_uri)
    assert model.count_params() == run.parameters
    assert _random_layers(model) == []


@pytest.mark.usefixtures("prefect_harness")
def test_a_variant_trained_on_two_devices_is_tracked_served_and_scored(small_dataset, mlflow_uri):
    """The whole `train-variant` flow with one replica on each of the two logical CPU devices
    (`tests/conftest.py`): model logged and registered, evaluated with TTA, report rendered."""
    training = TRAINING.model_copy(update={"devices": 2, "augment": "dihedral+stain"})
    run = train_variant(small_dataset, "simple", training)
    tracked = MlflowClient(mlflow_uri).get_run(run.run_id)
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["devices_used"] == "2"
    assert tracked.data.params["batch_size_used"] == str(2 * TRAINING.batch_size)
    model = mlflow.keras.load_model(run.model_uri)  # saved from mirrored variables
    assert model.count_params() == run.parameters
    assert 0.0 <= run.test_accuracy <= 1.0
