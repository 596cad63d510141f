"""Every CNN variant trains for an epoch on synthetic data and is tracked in MLflow."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cnn.augmentation import without_test_time_augmentation
from cnn.config import AUGMENTATIONS, IngestConfig, TrainConfig
from cnn.dataset import build_dataset
from cnn.models import VARIANTS
from cnn.sources import SyntheticSource
from flows.train import train_variant

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> str:
    config = IngestConfig(source="synthetic", image_size=32, limit=120)
    dataset, _ = build_dataset(SyntheticSource(count=120), config, tmp_path_factory.mktemp("v"))
    return str(dataset.path)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_one_epoch_and_is_tracked(variant, small_dataset, mlflow_uri):
    training = TrainConfig(
        epochs=1,
        batch_size=32,
        augment="lecture",
        variant_options={"transfer": {"weights": None}},
    )
    run = train_variant(small_dataset, variant, training)
    client = MlflowClient(mlflow_uri)
    tracked = client.get_run(run.run_id)
    assert tracked.info.status == "FINISHED"
    assert tracked.data.params["variant"] == variant
    assert tracked.data.params["augment"] == "lecture"
    assert len(client.get_metric_history(run.run_id, "val_loss")) == 1
    assert 0.0 <= tracked.data.metrics["test_accuracy"] <= 1.0
    artifacts = {item.path for item in client.list_artifacts(run.run_id, "augmentation")}
    assert artifacts == {f"augmentation/{name}.png" for name in AUGMENTATIONS if name != "none"}
    model = mlflow.keras.load_model(run.model_uri)
    assert model.count_params() == run.parameters
    layers = [*model.layers, *without_test_time_augmentation(model).layers]
    assert not any(type(layer).__name__.startswith("Random") for layer in layers)
