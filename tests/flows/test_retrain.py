"""Two retrains on a tiny dataset whose classes any network tells apart in a few steps (a good
one, then one forced worse), shared by every test here: the summary artifact, the webhook
notifications, champion/challenger promotion, re-evaluating and predicting with the champion.
Against the Prefect test harness, an MLflow SQLite store and a webhook receiver on 127.0.0.1."""

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from prefect.client.orchestration import get_client

from cnn.config import IngestConfig, PromotionConfig, TrainConfig
from flows.evaluate import evaluate
from flows.predict import predict
from flows.retrain import retrain
from flows.train import train
from tasks.summary import SUMMARY_KEY
from tests.conftest import write_easy_folder
from tests.integration.servers import WebhookReceiver
from tracking.config import TrackingConfig
from tracking.models import ModelNotFoundError, load_keras_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

TRACKING = TrackingConfig(experiment="retrain-test", registered_model="easy-cells")
REGISTERED = TRACKING.registered_model


@pytest.fixture(scope="module")
def retrains(tmp_path_factory, prefect_harness):
    """A good retrain (first champion), then a forced-worse one, with a webhook configured."""
    root = tmp_path_factory.mktemp("retrain")
    webhook = WebhookReceiver()
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("MALARIA_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("MALARIA_WEBHOOK_URL", webhook.url)
    folder = write_easy_folder(root / "cells", per_class=60)
    data = IngestConfig(source=f"folder:{folder}", image_size=32)
    good = retrain(
        data, ["simple"], TrainConfig(epochs=3, batch_size=16, learning_rate=3e-3), TRACKING
    )
    events_after_good = webhook.events()
    worse = retrain(  # a learning rate that cannot move the weights
        data, ["simple"], TrainConfig(epochs=1, batch_size=16, learning_rate=1e-12), TRACKING
    )
    yield good, worse, events_after_good, webhook, root
    monkeypatch.undo()
    webhook.server.shutdown()


@pytest.fixture
def two_runs(retrains):
    """The two retrains' results, the folder of cells and a client of their store."""
    good, worse, _, _, root = retrains
    return good, worse, root / "cells", MlflowClient()


def summaries() -> list[str]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    ordered = sorted(artifacts, key=lambda artifact: artifact.created)
    return [artifact.data for artifact in ordered if artifact.key == SUMMARY_KEY]


def test_a_first_retrain_promotes_and_posts_one_notification(retrains):
    good, _, events_after_good, webhook, _ = retrains
    assert good.champion.version == good.runs[0].registered_version
    assert events_after_good == ["promoted"]
    (posted,) = webhook.received[:1]
    assert posted["champion"]["version"] == good.champion.version
    assert "is the first champion" in posted["text"]


def test_a_worse_retrain_keeps_the_champion_and_posts_nothing(retrains):
    good, worse, _, webhook, _ = retrains
    assert worse.runs[0].alias == "challenger"
    assert worse.champion.version == good.champion.version
    assert webhook.events() == ["promoted"]


def test_each_retrain_leaves_a_summary_with_scores_and_the_decision(retrains):
    good, worse, *_ = retrains
    first, second = summaries()[-2:]
    assert good.dataset.name in first
    assert f"| simple | {good.runs[0].test_accuracy:.3f} |" in first
    assert f"version {good.champion.version} is the first champion" in first
    assert good.runs[0].run_id in first
    assert f"| simple | {worse.runs[0].test_accuracy:.3f} |" in second
    assert "| challenger | accuracy" in second
    assert f"champion stays version {good.champion.version}" in second


def test_a_failed_retrain_posts_a_failure_without_touching_the_champion(retrains):
    good, _, _, webhook, root = retrains
    missing = IngestConfig(source=f"folder:{root / 'no-such-folder'}", image_size=32)
    with pytest.raises(Exception, match="no-such-folder"):
        retrain(missing, ["simple"], TrainConfig(epochs=1), TRACKING)
    assert webhook.events() == ["promoted", "failed"]
    failure = webhook.received[-1]
    assert failure["flow"] == "retrain"
    assert "no-such-folder" in failure["text"]
    champion = MlflowClient().get_model_version_by_alias(TRACKING.registered_model, "champion")
    assert int(champion.version) == good.champion.version


def test_a_worse_model_does_not_move_the_champion(two_runs):
    good, worse, _, client = two_runs
    (first,), (second,) = good.runs, worse.runs
    assert first.test_accuracy > 0.9 > second.test_accuracy
    assert (first.alias, second.alias) == ("champion", "challenger")
    assert worse.champion.version == first.registered_version
    champion = client.get_model_version_by_alias(TRACKING.registered_model, "champion")
    assert int(champion.version) == first.registered_version
    tags = client.get_model_version(TRACKING.registered_model, str(second.registered_version)).tags
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
    champion = client.get_model_version_by_alias(TRACKING.registered_model, "champion")
    assert int(champion.version) == good.runs[0].registered_version


def test_evaluate_rescores_the_champion_as_a_run_under_its_own_parent(two_runs):
    good, _, _, client = two_runs
    result = evaluate(f"models:/{REGISTERED}@champion", good.dataset.path, TRACKING)
    assert result["accuracy"] == pytest.approx(good.runs[0].test_accuracy)
    run = client.get_run(result["run_id"])
    parent = client.get_run(result["parent_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.info.run_name.startswith(f"evaluate models:/{REGISTERED}@champion ")
    assert run.data.tags["evaluation_of"] == f"models:/{REGISTERED}@champion"
    for scored in (run, parent):
        assert scored.data.metrics["test_accuracy"] == pytest.approx(result["accuracy"])
        (test_split,) = scored.inputs.dataset_inputs
        assert test_split.dataset.name == f"{good.dataset.name}/test"
    assert result["report"].endswith("report/report.html")


def test_each_retrain_is_one_parent_run_named_by_its_day(two_runs):
    good, worse, _, client = two_runs
    parents = []
    for result in (good, worse):
        (child,) = result.runs
        parents.append(client.get_run(client.get_run(child.run_id).data.tags["mlflow.parentRunId"]))
    assert len({parent.info.run_id for parent in parents}) == 2
    for parent in parents:
        assert parent.info.run_name.startswith("retrain 20")  # retrain <UTC day> <source>@<size>
        assert parent.data.tags["prefect_flow_run_name"] == parent.info.run_name
    assert parents[1].data.tags["champion.outcome"].startswith("champion stays version")


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
    summary = predict(str(inputs), str(tmp_path / "out.parquet"), f"models:/{REGISTERED}@champion")
    table = pq.read_table(tmp_path / "out.parquet").to_pandas().set_index("source_id")
    assert summary.rows == len(table) == 7
    assert (summary.resized, summary.converted_to_rgb) == (7, 1)  # cells are 36 px, model 32
    for file in files:
        expected = "parasitized" if file.parent.name == "Parasitized" else "uninfected"
        assert table.loc[file.name, "predicted_name"] == expected
    assert set(table.columns) == {"parasitized_probability", "predicted_label", "predicted_name"}


def test_predict_with_an_unset_alias_names_it(two_runs, tmp_path):
    with pytest.raises(ModelNotFoundError, match="alias 'nightly' is not set"):
        predict(str(tmp_path), str(tmp_path / "out.parquet"), f"models:/{REGISTERED}@nightly")
    with pytest.raises(ModelNotFoundError, match="no registered model named 'nope'"):
        predict(str(tmp_path), str(tmp_path / "out.parquet"), "models:/nope@champion")
    assert not (tmp_path / "out.parquet").exists()


def test_fixed_model_uris_load_once_per_process_and_aliases_every_time(two_runs):
    good, *_ = two_runs
    version = f"models:/{REGISTERED}/{good.runs[0].registered_version}"
    assert load_keras_model(version) is load_keras_model(version)
    assert load_keras_model(good.runs[0].model_uri) is load_keras_model(good.runs[0].model_uri)
    alias = f"models:/{REGISTERED}@champion"
    assert load_keras_model(alias) is not load_keras_model(alias)
