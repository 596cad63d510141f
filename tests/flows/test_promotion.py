"""Champion/challenger across pipeline runs, and re-evaluating and predicting with the champion,
on a tiny dataset whose classes any network tells apart in a few steps."""

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from cnn.config import IngestConfig, PromotionConfig, TrainConfig
from flows.evaluate import evaluate
from flows.pipeline import pipeline
from flows.predict import predict
from flows.train import train
from tests.conftest import write_easy_folder
from tracking.config import TrackingConfig
from tracking.models import ModelNotFoundError, load_keras_model

pytestmark = pytest.mark.usefixtures("prefect_harness")

TRACKING = TrackingConfig(experiment="promotion-test", registered_model="easy-cells")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, prefect_harness):
    root = tmp_path_factory.mktemp("promotion")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("MALARIA_DATA_DIR", str(root / "data"))
    folder = write_easy_folder(root / "cells", per_class=60)
    data = IngestConfig(source=f"folder:{folder}", image_size=32)
    good = pipeline(
        data, ["simple"], TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3), TRACKING
    )
    worse = pipeline(  # forced worse: a learning rate that cannot move the weights
        data, ["simple"], TrainConfig(epochs=1, batch_size=16, learning_rate=1e-12), TRACKING
    )
    yield good, worse, folder, MlflowClient()
    monkeypatch.undo()


def test_a_worse_model_does_not_move_the_champion(two_runs):
    good, worse, _, client = two_runs
    (first,), (second,) = good.runs, worse.runs
    assert first.test_accuracy > 0.9 > second.test_accuracy
    assert (first.alias, second.alias) == ("champion", "challenger")
    assert worse.champion.version == first.registered_version
    champion = client.get_model_version_by_alias("easy-cells", "champion")
    assert int(champion.version) == first.registered_version
    tags = client.get_model_version("easy-cells", str(second.registered_version)).tags
    assert float(tags["promotion.champion_score"]) == pytest.approx(first.test_accuracy)
    assert float(tags["promotion.candidate_score"]) == pytest.approx(second.test_accuracy)
    assert tags["promotion.champion_version"] == str(first.registered_version)
    assert "not better" in second.promotion_reason


def test_the_champion_moves_only_by_more_than_the_margin(two_runs):
    good, _, _, client = two_runs
    (again,) = train(
        good.dataset.path,
        ["simple"],
        TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3, seed=5),
        TRACKING,
        PromotionConfig(metric="f1", min_margin=0.5),
    )
    assert again.alias == "challenger"
    assert again.promotion_reason.startswith("f1 ")
    assert again.promotion_reason.endswith("not better by more than 0.5")
    champion = client.get_model_version_by_alias("easy-cells", "champion")
    assert int(champion.version) == good.runs[0].registered_version


def test_evaluate_rescores_the_champion_as_its_own_run(two_runs):
    good, _, _, client = two_runs
    result = evaluate("models:/easy-cells@champion", good.dataset.path, TRACKING)
    assert result["accuracy"] == pytest.approx(good.runs[0].test_accuracy)
    run = client.get_run(result["run_id"])
    assert run.data.tags["evaluation_of"] == "models:/easy-cells@champion"
    assert run.data.metrics["test_accuracy"] == pytest.approx(result["accuracy"])
    assert result["report"].endswith("report/report.html")


def test_predict_scores_a_folder_with_the_champion(two_runs, tmp_path):
    _, _, folder, _ = two_runs
    inputs = tmp_path / "new"
    inputs.mkdir()
    files = (
        sorted((folder / "Parasitized").iterdir())[:3]
        + sorted((folder / "Uninfected").iterdir())[:3]
    )
    for file in files:
        (inputs / file.name).write_bytes(file.read_bytes())
    Image.open(files[0]).convert("L").resize((50, 50)).save(inputs / "gray.png")
    summary = predict(str(inputs), str(tmp_path / "out.parquet"), "models:/easy-cells@champion")
    table = pq.read_table(tmp_path / "out.parquet").to_pandas().set_index("source_id")
    assert summary.rows == len(table) == 7
    assert (summary.resized, summary.converted_to_rgb) == (7, 1)  # cells are 36 px, model 32
    for file in files:
        expected = "parasitized" if file.parent.name == "Parasitized" else "uninfected"
        assert table.loc[file.name, "predicted_name"] == expected
    assert set(table.columns) == {"parasitized_probability", "predicted_label", "predicted_name"}


def test_predict_with_an_unset_alias_names_it(two_runs, tmp_path):
    with pytest.raises(ModelNotFoundError, match="alias 'nightly' is not set"):
        predict(str(tmp_path), str(tmp_path / "out.parquet"), "models:/easy-cells@nightly")
    with pytest.raises(ModelNotFoundError, match="no registered model named 'nope'"):
        predict(str(tmp_path), str(tmp_path / "out.parquet"), "models:/nope@champion")
    assert not (tmp_path / "out.parquet").exists()


def test_fixed_model_uris_load_once_per_process_and_aliases_every_time(two_runs):
    good, *_ = two_runs
    version = f"models:/easy-cells/{good.runs[0].registered_version}"
    assert load_keras_model(version) is load_keras_model(version)
    assert load_keras_model(good.runs[0].model_uri) is load_keras_model(good.runs[0].model_uri)
    alias = "models:/easy-cells@champion"
    assert load_keras_model(alias) is not load_keras_model(alias)
