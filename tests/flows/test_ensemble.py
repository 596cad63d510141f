"""An ensemble of a run's best variants is one registered model, evaluated and promoted."""

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from cnn.config import IngestConfig, TrainConfig
from cnn.data.dataset import load_split
from cnn.evaluation.calibration import with_temperature
from cnn.ingest.build import build_dataset
from cnn.models.augmentation import model_temperature
from cnn.models.ensembles import ENSEMBLE
from cnn.sources.specs import SyntheticSource
from flows.train import train

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def tiny_dataset(tmp_path):
    config = IngestConfig(source="synthetic", image_size=32, limit=120)
    dataset, _ = build_dataset(SyntheticSource(count=120), config, tmp_path / "datasets")
    return dataset


@pytest.mark.slow
def test_an_ensemble_averages_its_members_and_is_tracked_like_a_variant(
    tiny_dataset, mlflow_uri, data_dir
):
    training = TrainConfig(epochs=1, batch_size=32, ensemble=2, checkpoints=False)
    runs = train(str(tiny_dataset.path), ["simple", "lenet5"], training)
    assert [run.variant for run in runs] == ["simple", "lenet5", ENSEMBLE]
    members, ensemble = runs[:2], runs[2]
    client = MlflowClient(mlflow_uri)
    tracked = client.get_run(ensemble.run_id)
    assert tracked.info.status == "FINISHED"
    assert set(tracked.data.params["member_runs"].split(",")) == {run.run_id for run in members}
    assert 0.0 <= tracked.data.metrics["test_accuracy"] <= 1.0
    assert ensemble.registered_version == max(run.registered_version for run in runs)
    assert ensemble.alias in ("champion", "challenger")
    mlflow.set_tracking_uri(mlflow_uri)
    images, _ = load_split(tiny_dataset, "test")
    models = [mlflow.keras.load_model(run.model_uri) for run in runs]
    outputs = [model.predict(images, verbose=0) for model in models]
    mean = (outputs[0] + outputs[1]) / 2  # then calibrated on validation, as every model is
    expected = with_temperature(mean, model_temperature(models[2]))
    np.testing.assert_allclose(outputs[2], expected, atol=1e-5)
    report = {item.path for item in client.list_artifacts(ensemble.run_id, "report")}
    assert "report/report.html" in report


def test_an_ensemble_larger_than_the_variants_fails_before_training(tiny_dataset, mlflow_uri):
    with pytest.raises(ValueError, match="ensemble=3 needs between 2 and the 2"):
        train(str(tiny_dataset.path), ["simple", "lenet5"], TrainConfig(epochs=1, ensemble=3))
    client = MlflowClient(mlflow_uri)
    assert [
        run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])
    ] == []
