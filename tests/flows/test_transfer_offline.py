"""With the default ImageNet weights and no network, a run with `transfer` fails at once."""

import pytest
from mlflow.tracking import MlflowClient

from cnn.config import IngestConfig, TrainConfig
from cnn.ingest.build import build_dataset
from cnn.models.variants import WeightsUnavailableError
from cnn.sources.specs import SyntheticSource
from flows.train import train

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No cached weights (an empty Keras home) and every download refused."""
    from keras.src.backend import config as keras_config

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras-home"))
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing answers
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")  # the Prefect and MLflow servers


def test_offline_imagenet_transfer_fails_before_any_variant_trains(
    offline, tmp_path, mlflow_uri, data_dir
):
    config = IngestConfig(source="synthetic", image_size=32, limit=60)
    dataset, _ = build_dataset(SyntheticSource(count=60), config, tmp_path / "datasets")
    with pytest.raises(WeightsUnavailableError, match="ImageNet weights of resnet50"):
        train(str(dataset.path), ["simple", "transfer"], TrainConfig(epochs=1))
    assert not (data_dir / "checkpoints").exists()  # `simple` never started training
    client = MlflowClient(mlflow_uri)
    assert [
        run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])
    ] == []
