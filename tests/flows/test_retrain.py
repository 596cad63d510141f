"""The scheduled retrain flow: summary artifact, promotion outcome and webhook notifications,
against the Prefect test harness, an MLflow SQLite store and a webhook receiver on 127.0.0.1."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client

from cnn.config import IngestConfig, TrainConfig
from flows.retrain import retrain
from tasks.summary import SUMMARY_KEY
from tests.conftest import write_easy_folder
from tracking.config import TrackingConfig

pytestmark = pytest.mark.usefixtures("prefect_harness")

TRACKING = TrackingConfig(experiment="retrain-test", registered_model="retrain-cells")


class WebhookReceiver:
    """A real HTTP endpoint on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [body["event"] for body in self.received]


@pytest.fixture(scope="module")
def retrains(tmp_path_factory, prefect_harness):
    """A good retrain (first champion), then a forced-worse one, with a webhook configured."""
    root = tmp_path_factory.mktemp("retrain")
    webhook = WebhookReceiver()
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.setenv("MALARIA_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("MALARIA_WEBHOOK_URL", webhook.url)
    data = IngestConfig(source=f"folder:{write_easy_folder(root / 'cells', 60)}", image_size=32)
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
